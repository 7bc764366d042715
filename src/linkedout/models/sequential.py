"""`SequentialRecommender` = item encoder + user encoder, scored by inner product over the catalogue.

Losses:
- ``ce``: softmax cross-entropy over all items at every valid position (the strongest choice for
  SASRec in recent reproductions; cheap while the catalogue fits a [positions, items] logit matrix).
- ``inbatch``: softmax over the batch's target items only, optionally with the log-popularity
  ("logQ") correction, and with items of the row's own history masked out of the negatives (DFF /
  MicroLens style; scales to catalogues where full softmax does not).
"""

from __future__ import annotations

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
    ) -> None:
        super().__init__()
        if loss not in ("ce", "inbatch"):
            raise ValueError(f"unknown loss {loss!r} (ce, inbatch)")
        self.item_encoder = item_encoder
        self.user_encoder = user_encoder
        self.loss_name = loss
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
        items = history.clamp(min=0)
        if item_matrix is not None:
            x, aux = item_matrix[items], None
        else:
            x, aux = self.item_encoder.encode(items)
        return self.user_encoder(x * valid[..., None], valid), aux

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
            states, aux = self._encode_history(batch.inputs)
            loss, aux_candidates = self._in_batch_loss(states[valid], targets, batch, valid)
            aux = add_aux(aux, aux_candidates)
        return loss if aux is None else loss + aux

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

    def _in_batch_loss(
        self, states: torch.Tensor, targets: torch.Tensor, batch: TrainBatch, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        candidates, target_col = torch.unique(targets, return_inverse=True)
        vectors, aux = self.item_encoder.encode(candidates)
        logits = states @ vectors.T - self.logq[candidates][None, :]
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
        mask[torch.arange(len(targets), device=mask.device), target_col] = False
        return F.cross_entropy(logits.masked_fill(mask, NEG_INF), target_col), aux
