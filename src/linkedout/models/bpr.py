"""BPR-MF and its content variant (VBPR-style): a learned vector per user, any item vectors, dot product.

    score(u, i) = <p_u, q_i> + b_i

- ``p_u``: the user's row of a table ``[n_users, dim]`` (rows are the split's user indices, what
  `TrainBatch.users` and ``score_all_items(..., users)`` hold).
- ``q_i``: any item-vector source `build_item_encoder` gives. ``--item-encoder id`` is plain BPR-MF
  (Rendle et al., 2009); a content encoder (caption, linkedout, ...) gives projected content, and with
  ``--id-fusion`` an id factor gated with it (DFF's gate): VBPR's "id factors + projected content"
  (He & McAuley, 2016), with a learned gate in place of VBPR's concatenation of the two.
- ``b_i``: a learned item bias.

Training (`loss`): every valid target position of the trainer's next-item windows is one (user,
positive item) pair - the windows tile each training sequence, so every training event except a
user's first is a positive once per epoch, and this family shares the trainer, sampler and DDP path
with the sequential ones. Each positive gets ``negatives`` items drawn uniformly from the items with
training events (a drawn item the user did watch is kept, as in the paper: at ml-100k's density that is
~6% of draws). Loss: ``-log sigmoid(s_pos - s_neg)``, mean over (positive, negative) pairs. L2 is the
optimiser's weight decay (``--weight-decay``: AdamW's decoupled decay of every weight, where the paper
penalises the batch's rows).

Scoring (`score_all_items(history, users)`):

- a user the model trained on (a row that had at least one pair): ``p_u``;
- an anonymous history (``users`` None or -1, or a user with no training pairs): **fold-in**, the
  user vector is the mean of the history's item vectors ``q_i``. No optimisation at request time, so
  serving does exactly the same; an empty history folds in to zero, i.e. the item biases alone
  (a popularity-like list). This is the path every new user takes.
- items with no training events (cold items): ``q_i`` from content when the encoder has it (a fused
  encoder sends such items through content alone, see item_encoders.py); an id-only encoder has only
  an untrained vector for them. Their own bias is untrained, so they get the mean bias of the trained
  items - an average item, neither favoured nor buried.

LightGCN (lightgcn.py) is the same recommender with propagated embeddings: it subclasses `BPRMF` and
replaces how the final user and item vectors are computed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linkedout.data.batches import PAD
from linkedout.models.base import ItemEncoder, Recommender, TrainBatch


class Embeddings(NamedTuple):
    """What the scores are computed from: user rows, item rows, item biases, and the aux loss."""

    users: torch.Tensor  # [n_users, dim]
    items: torch.Tensor  # [n_items, dim]
    bias: torch.Tensor | None  # [n_items]; None for families without a bias
    aux_loss: torch.Tensor | None = None


def target_pairs(batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, positive item) of every valid target position of the windows ``batch``."""
    if batch.users is None:
        raise ValueError("a pairwise model needs TrainBatch.users (the user of every window)")
    valid = (batch.inputs != PAD) & (batch.targets != PAD)
    users = batch.users[:, None].expand_as(batch.targets)[valid]
    return users, batch.targets[valid]


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(pos - neg)`` averaged over pairs: positive ``[P]``, negative ``[P, n]``."""
    return -F.logsigmoid(positive[:, None] - negative).mean()


def fold_in(history: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
    """Mean of the item vectors of each LEFT-padded history ``[B, L]`` -> ``[B, dim]`` (zero if empty)."""
    valid = (history != PAD)[..., None].to(item_vectors.dtype)
    total = (item_vectors[history.clamp(min=0)] * valid).sum(1)
    return total / valid.sum(1).clamp(min=1.0)


class BPRMF(Recommender):
    """User table + item encoder + item bias, trained with BPR (see the module docstring)."""

    has_bias = True

    def __init__(
        self,
        item_encoder: ItemEncoder,
        n_users: int,
        *,
        negatives: int = 1,
        trained_items: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if n_users < 1:
            raise ValueError(f"{type(self).__name__} needs the number of users (n_users), got {n_users}")
        if negatives < 1:
            raise ValueError(f"negatives per positive must be >= 1, got {negatives}")
        self.item_encoder = item_encoder
        self.n_items = item_encoder.n_items
        self.n_users = n_users
        self.dim = item_encoder.dim
        self.negatives = negatives
        self.user_embedding = nn.Embedding(n_users, self.dim)
        nn.init.normal_(self.user_embedding.weight, std=self.dim**-0.5)
        self.item_bias = nn.Parameter(torch.zeros(self.n_items)) if self.has_bias else None
        known = trained_items if trained_items is not None else torch.ones(self.n_items, dtype=torch.bool)
        if known.shape != (self.n_items,):
            raise ValueError(f"trained_items has shape {tuple(known.shape)}, expected ({self.n_items},)")
        if not known.any():
            raise ValueError("no item has training events: nothing to draw negatives from")
        self.register_buffer("trained_items", known.bool().clone(), persistent=False)
        self.register_buffer("negative_pool", torch.nonzero(known).flatten(), persistent=False)
        # users that had pairs to train on; `fit` narrows this from the split (others are folded in)
        self.register_buffer("trained_users", torch.ones(n_users, dtype=torch.bool), persistent=False)
        self._cache: Embeddings | None = None

    # ------------------------------------------------------------------ what LightGCN replaces
    def embeddings(self) -> Embeddings:
        """The final user and item vectors and biases (the whole catalogue)."""
        items, aux = self.item_encoder.encode_all()
        return Embeddings(self.user_embedding.weight, items, self.item_bias, aux)

    def pair_scores(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores of ``users`` ``[P]`` against ``items`` ``[P, n]`` and the aux loss. Encodes only the
        items the step touches (a content encoder's cost is the batch's items, not the catalogue)."""
        vectors, aux = self.item_encoder.encode(items)
        scores = torch.einsum("pd,pnd->pn", self.user_embedding(users), vectors)
        if self.item_bias is not None:
            scores = scores + self.item_bias[items]
        return scores, aux

    # ------------------------------------------------------------------ training
    def fit(self, split) -> None:
        """Record which users have pairs to train on: a training sequence of >= 2 events (the
        trainer's windows need an input and a target, see `TrainWindows`). Everyone else is folded in."""
        _, starts, ends = split.train_sequences()
        users = split.train_users()[(ends - starts) >= 2]
        trained = torch.zeros(self.n_users, dtype=torch.bool, device=self.trained_users.device)
        trained[torch.as_tensor(users, dtype=torch.long, device=trained.device)] = True
        self.trained_users = trained
        self._cache = None

    def sample_negatives(self, n: int) -> torch.Tensor:
        """``[n, negatives]`` items drawn uniformly from the items with training events."""
        pool = self.negative_pool
        draw = torch.randint(len(pool), (n, self.negatives), device=pool.device)
        return pool[draw]

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        users, positives = target_pairs(batch)
        items = torch.cat([positives[:, None], self.sample_negatives(len(positives))], dim=1)
        scores, aux = self.pair_scores(users, items)
        loss = bpr_loss(scores[:, 0], scores[:, 1:])
        return loss if aux is None else loss + aux

    # ------------------------------------------------------------------ scoring
    def final(self) -> Embeddings:
        """`embeddings` as scoring uses them: cold items' biases set to the trained items' mean; kept
        while the model is in eval mode (computed once per evaluation or export), dropped by train()."""
        if self._cache is not None and not self.training:
            return self._cache
        users, items, bias, aux = self.embeddings()
        if bias is not None:
            known = self.trained_items
            bias = torch.where(known, bias, bias[known].mean())
        out = Embeddings(users, items, bias, aux)
        if not self.training:
            self._cache = Embeddings(*(t.detach() if t is not None else None for t in out))
            return self._cache
        return out

    def train(self, mode: bool = True) -> BPRMF:
        self._cache = None  # weights may change: drop the cached embeddings
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def known_users(self, users: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """bool ``[B]``: which rows name a user the model trained on (the rest are folded in)."""
        if users is None:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        if users.shape != (batch,):
            raise ValueError(f"users must have shape ({batch},), got {tuple(users.shape)}")
        if users.numel() and int(users.max()) >= self.n_users:
            raise ValueError(f"user index {int(users.max())} is out of range: the model knows {self.n_users}")
        return (users >= 0) & self.trained_users[users.clamp(min=0)]

    def user_vectors(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, dim]``: a known user's row, else the fold-in of its history (module docstring)."""
        emb = self.final()
        known = self.known_users(users, history.shape[0], history.device)
        folded = fold_in(history, emb.items)
        if not known.any():
            return folded
        rows = emb.users[users.clamp(min=0)]
        return torch.where(known[:, None], rows, folded)

    def score_all_items(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.final()
        scores = self.user_vectors(history, users) @ emb.items.T
        return scores if emb.bias is None else scores + emb.bias[None, :]

    @property
    def new_item_scale(self) -> float:
        """What an item with no training events keeps of its item encoder's vector (1: all of it)."""
        return 1.0

    @torch.no_grad()
    def serving_vectors(self) -> ServingVectors:
        """The final vectors as a bundle serves them (see `ServingVectors`)."""
        self.eval()
        emb = self.final()
        users, items = emb.users.float(), emb.items.float()
        trained, scale = self.trained_users.clone(), self.new_item_scale
        if emb.bias is None:
            return ServingVectors(items.clone(), users.clone(), trained, False, 0.0, scale)
        cold_bias = float(emb.bias[self.trained_items].mean())
        items = torch.cat([items, emb.bias.float()[:, None]], dim=1)
        users = torch.cat([users, torch.ones(len(users), 1, device=users.device)], dim=1)
        return ServingVectors(items, users, trained, True, cold_bias, scale)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.item_encoder.layer_names

    def layer_weights(self, items: torch.Tensor) -> torch.Tensor | None:
        return self.item_encoder.layer_weights(items)


class ServingVectors(NamedTuple):
    """What a bundle serves a pairwise model from: the bias folded into one inner product.

    ``items = [q_i, b_i]`` and a user ``[p_u, 1]`` score ``<p_u, q_i> + b_i`` by a plain inner product,
    so every top-k index (exact, FAISS) serves the model unchanged; without a bias the vectors are
    ``q_i`` and ``p_u`` as they are."""

    items: torch.Tensor  # [n_items, dim (+1)]
    users: torch.Tensor  # [n_users, dim (+1)]: every user row, trained or not
    trained_users: torch.Tensor  # bool [n_users]: rows to serve as they are (the rest are folded in)
    bias_column: bool
    cold_bias: float  # the bias column of an item with no training events (a new item)
    new_item_scale: float  # a new item's vector = its content vector times this (see LightGCN)


class FoldInUsers(nn.Module):
    """A pairwise bundle's user side for histories, in the user encoders' shape ``(x, valid) -> [B, L, D]``:
    position t holds the fold-in (mean) of the history's item rows up to t; with a bias column the
    user's last coordinate is 1, as in `ServingVectors`. Parameter-free."""

    def __init__(self, bias_column: bool) -> None:
        super().__init__()
        self.bias_column = bias_column

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        v = valid[..., None].to(x.dtype)
        running = (x * v).cumsum(1) / v.cumsum(1).clamp(min=1.0)
        if self.bias_column:
            running = torch.cat([running[..., :-1], torch.ones_like(running[..., -1:])], dim=-1)
        return running


def trained_mask(train_counts: np.ndarray | None, n_items: int) -> torch.Tensor | None:
    """bool ``[n_items]`` of items with training events (None when the counts are not known)."""
    if train_counts is None:
        return None
    if len(train_counts) != n_items:
        raise ValueError(f"train_counts has {len(train_counts)} entries for {n_items} items")
    return torch.as_tensor(np.asarray(train_counts) > 0)


__all__ = [
    "BPRMF",
    "Embeddings",
    "FoldInUsers",
    "ServingVectors",
    "bpr_loss",
    "fold_in",
    "target_pairs",
    "trained_mask",
]
