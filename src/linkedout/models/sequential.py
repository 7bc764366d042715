"""`SequentialRecommender` = item encoder + user encoder, scored by inner product over the catalogue.

Losses:
- ``ce``: softmax cross-entropy over all items at every valid position (the strongest choice for
  SASRec in recent reproductions; cheap while the catalogue fits a [positions, items] logit matrix).
- ``inbatch``: softmax over the batch's target items only, optionally with the log-popularity
  ("logQ") correction, and with items of the row's own history masked out of the negatives (DFF /
  MicroLens style; scales to catalogues where full softmax does not). Each distinct item of the batch
  (history and targets, PAD left out) goes through the item encoder once per step, so a content
  encoder's cost follows the batch, not the catalogue.
- ``sampled``: mixed negative sampling (Yang et al., WWW 2020): the in-batch candidates plus
  ``negatives`` items drawn uniformly from the training catalogue once per step and shared by every
  row, the same window masking; with logQ each candidate's logit is corrected by the log of its
  expected count under that mixture, ``log(n_targets * p(i) + negatives / n_trained)``. A step costs
  ``positions x (distinct targets + negatives)``, still not the catalogue, and rare items, which the
  batch's targets almost never bring, get pushed down as negatives too.
Both candidate losses drop a row's own items from its negatives unless ``mask_window`` is off; off,
they stay negatives as in ``ce``, which matters where ranking does not mask the history (recbole; on
ml-100k docs/benchmarks.md "The loss, on ml-100k" measures every variant against ``ce``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from linkedout.data.batches import PAD
from linkedout.models.base import ItemEncoder, Recommender, TrainBatch, add_aux

NEG_INF = float("-inf")
IGNORE = -100  # a target column cross_entropy skips
ROW_BUCKET = 128  # training softmax rows are padded to a multiple of this


class SequentialRecommender(Recommender):
    def __init__(
        self,
        item_encoder: ItemEncoder,
        user_encoder: nn.Module,
        loss: str = "ce",
        logq: torch.Tensor | None = None,
        trained_items: torch.Tensor | None = None,
        negatives: int = 0,
        mask_window: bool = True,
    ) -> None:
        super().__init__()
        if loss not in ("ce", "inbatch", "sampled"):
            raise ValueError(f"unknown loss {loss!r} (ce, inbatch, sampled)")
        if loss == "sampled" and negatives < 1:
            raise ValueError(
                f"loss 'sampled' needs negatives >= 1 shared negatives per step, got {negatives}"
            )
        self.item_encoder = item_encoder
        self.user_encoder = user_encoder
        self.loss_name = loss
        self.negatives = negatives
        self.mask_window = mask_window
        self.corrected = logq is not None
        self.n_items = item_encoder.n_items
        # log sampling probability of each item as an in-batch negative (its training frequency)
        self.register_buffer("logq", logq if logq is not None else torch.zeros(self.n_items))
        self._item_matrix: torch.Tensor | None = None
        # The catalogue as training knows it: items with at least one training event. Items that only
        # appear later (cold-start items, items first seen in valid/test) are left out of the training
        # softmax, or the loss would teach the model to rank them last before it has ever seen them.
        known = trained_items if trained_items is not None else torch.ones(self.n_items, dtype=torch.bool)
        softmax_items = torch.nonzero(known.bool()).flatten()
        # None when every item is known: the softmax then runs over the item matrix as it is
        everything = len(softmax_items) == self.n_items
        self.register_buffer("_softmax_items", None if everything else softmax_items, persistent=False)
        # an item's column in the training softmax (-1: not in it)
        column = torch.full((self.n_items,), -1, dtype=torch.long)
        column[softmax_items] = torch.arange(len(softmax_items))
        self.register_buffer("softmax_column", column, persistent=False)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.item_encoder.layer_names

    def layer_weights(self, items: torch.Tensor) -> torch.Tensor | None:
        return self.item_encoder.layer_weights(items)

    def encode_history(self, history: torch.Tensor, item_matrix: torch.Tensor | None = None) -> torch.Tensor:
        """User states at every position; with ``item_matrix`` (all item vectors, already computed for
        the scores) the history's vectors are gathered from it instead of encoded a second time."""
        return self._encode_history(history, item_matrix)[0]

    def _encode_history(
        self, history: torch.Tensor, item_matrix: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        valid = history != PAD
        if item_matrix is not None:
            x, aux = item_matrix[history.clamp(min=0)] * valid[..., None], None
        else:
            items, inverse = torch.unique(history[valid], return_inverse=True)
            vectors, aux = self.item_encoder.encode(items)
            x = gather_rows(vectors, inverse, valid)
        return self.user_encoder(x, valid), aux

    def item_matrix(self) -> torch.Tensor:
        """All item vectors ``[n_items, D]``; computed once per evaluation (cached while not training)."""
        if self.training:
            return self.item_encoder.all_items()
        if self._item_matrix is None:
            self._item_matrix = self.item_encoder.all_items()
        return self._item_matrix

    def train(self, mode: bool = True) -> SequentialRecommender:
        self._item_matrix = None  # weights may change: drop the cached item matrix
        return super().train(mode)

    def score_all_items(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        matrix = self.item_matrix()
        user = self.encode_history(history, matrix)[:, -1]
        return user @ matrix.T

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        valid = (batch.inputs != PAD) & (batch.targets != PAD)
        targets = batch.targets[valid]
        if self.loss_name == "ce":
            # full softmax needs every item vector anyway: encode the catalogue once per step and
            # gather the history from it (a content encoder's cost is the catalogue, not the batch)
            matrix, aux = self.item_encoder.encode_all()
            states = self.encode_history(batch.inputs, matrix)[valid]
            # Round the row count up with ignored rows: the number of valid positions changes every
            # step, and under bf16 autocast oneDNN keeps a compiled matmul per shape (its primitive
            # cache grew the process by ~85 MB per epoch); a few shapes keep it small.
            pad = -len(states) % ROW_BUCKET
            states = F.pad(states, (0, 0, 0, pad))
            columns = F.pad(self.softmax_column[targets], (0, pad), value=IGNORE)
            loss = F.cross_entropy(self.softmax_logits(states, matrix), columns, ignore_index=IGNORE)
        else:
            negatives = self.sample_negatives(batch.inputs.device) if self.loss_name == "sampled" else None
            loss, aux = self.in_batch_loss(batch, valid, negatives)
        return loss if aux is None else loss + aux

    def sample_negatives(self, device: torch.device) -> torch.Tensor:
        """The step's shared negatives: ``self.negatives`` items drawn uniformly, with replacement,
        from the items with training events (the catalogue the ``ce`` softmax covers). With
        replacement so a draw costs ``negatives``, not the catalogue (a permutation would)."""
        pool = self.n_items if self._softmax_items is None else len(self._softmax_items)
        draw = torch.randint(pool, (self.negatives,), device=device)
        return draw if self._softmax_items is None else self._softmax_items[draw]

    def correction(self, candidates: torch.Tensor, n_targets: int, n_negatives: int) -> torch.Tensor:
        """What each candidate's logit loses: the log of its expected count among the step's
        candidate draws. In-batch only: ``log p(i)`` (a constant ``log n_targets`` apart, which the
        softmax ignores). With ``n_negatives`` uniform draws over the ``n_trained`` items the two
        proposals add up, ``log(n_targets * p(i) + n_negatives / n_trained)``, and the constant no
        longer cancels. Zero without logQ."""
        logq = self.logq[candidates]
        if not self.corrected or n_negatives == 0:
            return logq
        n_trained = self.n_items if self._softmax_items is None else len(self._softmax_items)
        uniform = torch.full_like(logq, math.log(n_negatives / n_trained))
        return torch.logaddexp(logq + math.log(n_targets), uniform)

    def softmax_logits(self, states: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Logits of the training softmax: one column per item that has training events. Gathering
        those rows is cheaper than computing every item's logit and masking the rest to -inf (the
        same loss; ``reference_softmax_logits`` is that version, kept for the equivalence test)."""
        if self._softmax_items is not None:
            matrix = matrix[self._softmax_items]
        return states @ matrix.T

    def reference_softmax_logits(self, states: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Every item's logit, untrained items masked to -inf: columns are item indices."""
        return (states @ matrix.T).masked_fill(self.softmax_column < 0, NEG_INF)

    def in_batch_loss(
        self, batch: TrainBatch, valid: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``inbatch`` loss (``sampled`` with the step's shared ``negatives``) and the item
        encoder's aux loss. One encode of the batch's distinct items - its history, its targets and
        the shared negatives, PAD left out - and both the history and the candidates are gathered
        from it: with a content encoder the step costs what the batch touches, once.
        ``reference_in_batch_loss`` (history and candidates encoded apart, PAD as item 0) gives the
        same loss and gradients when nothing random runs (tests). Two differences by design: the
        aux loss is computed once over the distinct items instead of once per encode, and an item
        both in a history and among the candidates gets one ID-dropout draw per step, not two."""
        seen = batch.inputs != PAD
        history = batch.inputs[seen]
        targets = batch.targets[valid]
        shared = negatives if negatives is not None else targets.new_empty(0)
        items, inverse = torch.unique(torch.cat([history, targets, shared]), return_inverse=True)
        vectors, aux = self.item_encoder.encode(items)
        states = self.user_encoder(gather_rows(vectors, inverse[: len(history)], seen), seen)[valid]
        # the candidates are the distinct targets and shared negatives, in item order like
        # torch.unique(targets) would give; a negative that is also a target is one candidate
        rows, columns = torch.unique(inverse[len(history) :], return_inverse=True)
        candidates = items[rows]
        correction = self.correction(candidates, len(targets), len(shared))
        target_col = columns[: len(targets)]
        loss = self._candidate_softmax(
            states, candidates, vectors[rows], target_col, batch, valid, correction
        )
        return loss, aux

    def reference_in_batch_loss(
        self, batch: TrainBatch, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`in_batch_loss` as first written: the history ``[B, L]`` encoded with PAD clamped to item
        0, then the candidates encoded a second time (kept for the equivalence test and the benchmark)."""
        x, aux = self.item_encoder.encode(batch.inputs.clamp(min=0))
        seen = batch.inputs != PAD
        states = self.user_encoder(x * seen[..., None], seen)[valid]
        candidates, target_col = torch.unique(batch.targets[valid], return_inverse=True)
        vectors, aux_candidates = self.item_encoder.encode(candidates)
        correction = self.logq[candidates]
        loss = self._candidate_softmax(states, candidates, vectors, target_col, batch, valid, correction)
        return loss, add_aux(aux, aux_candidates)

    def _candidate_softmax(
        self,
        states: torch.Tensor,
        candidates: torch.Tensor,
        vectors: torch.Tensor,
        target_col: torch.Tensor,
        batch: TrainBatch,
        valid: torch.Tensor,
        correction: torch.Tensor,
    ) -> torch.Tensor:
        """Cross-entropy of ``states`` over the sorted ``candidates`` (their ``vectors``), each logit
        minus its ``correction`` (logQ), with each row's own window masked out of its negatives."""
        logits = states @ vectors.T - correction[None, :]
        if not self.mask_window:
            # the row's own items stay negatives, as in the full softmax: under a protocol that does
            # not mask the history at ranking time the model must learn to rank them low
            return F.cross_entropy(logits, target_col)
        # items in the row user's own window are not negatives for that user (only its target counts)
        window = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1)
        col = torch.searchsorted(candidates, window.clamp(min=0)).clamp(max=len(candidates) - 1)
        hit = (candidates[col] == window) & (window != PAD)
        seen = torch.zeros(window.shape[0], len(candidates), dtype=torch.bool, device=window.device)
        seen[torch.arange(window.shape[0], device=window.device)[:, None].expand_as(col)[hit], col[hit]] = (
            True
        )
        row = torch.arange(window.shape[0], device=window.device)[:, None].expand_as(batch.inputs)[valid]
        mask = seen[row]
        mask[torch.arange(len(states), device=mask.device), target_col] = False
        return F.cross_entropy(logits.masked_fill(mask, NEG_INF), target_col)


def gather_rows(vectors: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[*valid.shape, D]``: ``vectors[rows]`` at the True places of ``valid`` (in order), zeros at
    the others (PAD positions), by one gather from the rows plus a zero row."""
    table = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[-1])])
    index = torch.full(valid.shape, len(vectors), dtype=torch.long, device=valid.device)
    index[valid] = rows
    return table[index]
