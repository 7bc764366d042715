"""The contracts every model follows: `ItemEncoder` (item -> vector) and `Recommender` (history -> scores).

`Recommender`:
- ``score_all_items(history, users=None)`` -> ``[B, n_items]`` scores for LEFT-padded histories
  ``[B, L]`` (item indices, PAD = -1, most recent last). Higher is better. Evaluation and serving call
  only this. ``users`` (long ``[B]``, the split's user indices; -1 or None: a user the model was not
  trained on) reaches families with per-user parameters (BPR-MF, LightGCN); history-only families
  (sequential, two-tower, generative) ignore it, and user-table families score a user they do not
  know from the history alone (folding-in), so every family answers an anonymous history.
- ``loss(batch)`` -> scalar for a `TrainBatch` of next-item windows (gradient-trained models). Every
  family trains from the same windows: a pairwise model reads (user, target) pairs out of them, a
  sequential one the whole window; one trainer, one sampler, one DDP path for all of them.
- ``fit(split)`` closed-form models (popularity, item-kNN) compute themselves from the training events;
  gradient-trained models return without doing anything there and learn through ``loss``.
- ``layer_weights(items)`` / ``layer_names``: which depth of knowledge each item leaned on (None / ()
  for models without layers), what explanations and the bundle read.
- ``score_items(history, items)`` (exact scores of given items; what occlusion explanations read),
  ``generation_path`` (a generative model's code path to an item) and ``unscorable_items`` (items the
  model can never rank, excluded by runs) have defaults every scoring family keeps.

`ItemEncoder` is what every user encoder, the trainer, the explainer, the export and the server see of
the item side; nothing outside an encoder probes it for attributes. Content encoders (those that can
encode an item from its stored `LayerTokens` alone, i.e. serve a cold item) say so with
``encodes_content`` and implement the ``content_*`` methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


@dataclass
class TrainBatch:
    inputs: torch.Tensor  # long [B, L], PAD = -1, left-padded
    targets: torch.Tensor  # long [B, L], next item of each input position, PAD = -1
    users: torch.Tensor | None = None  # long [B]: the split's user index of each window

    def to(self, device: torch.device | str) -> TrainBatch:
        users = self.users.to(device) if self.users is not None else None
        return TrainBatch(self.inputs.to(device), self.targets.to(device), users)


class Encoded(NamedTuple):
    """Item vectors plus the encoder's auxiliary training loss for computing them (e.g. LinkedOut's
    MoE load balancing), None when it has none. Returned, not stashed on the module, so a loss term
    can only reach the loss of the step that computed it."""

    vectors: torch.Tensor  # [N, dim]
    aux_loss: torch.Tensor | None = None


def add_aux(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of two optional auxiliary losses."""
    if a is None:
        return b
    return a if b is None else a + b


class ItemEncoder(nn.Module):
    """Item indices -> vectors ``[..., dim]``. Subclasses implement `encode` (and `encode_all` when the
    whole catalogue has a cheaper path than encoding every index)."""

    n_items: int
    dim: int
    #: True when `content_vectors` can encode an item from its LayerTokens alone (no ID needed)
    encodes_content: bool = False

    # ------------------------------------------------------------------ every encoder
    def encode(self, items: torch.Tensor) -> Encoded:
        """Vectors of ``items`` (any shape of indices -> that shape + ``[dim]``) and the aux loss."""
        raise NotImplementedError

    def encode_all(self) -> Encoded:
        """The whole catalogue ``[n_items, dim]`` and the aux loss of computing it."""
        return self.encode(torch.arange(self.n_items))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.encode(items).vectors

    def all_items(self) -> torch.Tensor:
        return self.encode_all().vectors

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the backbone layers the encoder reads (empty: no layers, e.g. ID-only)."""
        return ()

    @property
    def token_kinds(self) -> tuple[str, ...]:
        return ()

    def layer_weights(self, items: torch.Tensor) -> torch.Tensor | None:
        """``[N, L]`` weights over layers for ``items`` (rows sum to 1), None without layers."""
        return None

    # ------------------------------------------------------------------ content encoders (cold start)
    @property
    def feature_shape(self) -> tuple[int, int, int] | None:
        """``(L, S, D)`` of the LayerTokens `content_vectors` takes; None for ID-only encoders."""
        return None

    def content_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw LayerTokens ``[N, L, S, D]`` float32 -> ``[N, dim]`` from content alone."""
        raise TypeError(f"{type(self).__name__} cannot encode items from content (ID-only)")

    def content_layer_weights(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """``[N, L]`` layer weights of items given by raw LayerTokens (None without layers)."""
        return None

    def content_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights `content_vectors` needs (no ID table): what a bundle keeps to encode new items."""
        raise TypeError(f"{type(self).__name__} cannot encode items from content (ID-only)")


class Recommender(nn.Module):
    trainable: bool = True
    n_items: int

    def fit(self, split) -> None:
        """Closed-form fitting on the split's training events (no-op for gradient-trained models)."""

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not trained by gradient")

    def score_all_items(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def layer_names(self) -> tuple[str, ...]:
        return ()

    def layer_weights(self, items: torch.Tensor) -> torch.Tensor | None:
        """``[N, L]`` layer weights of ``items`` for explanations, None when the model has no layers."""
        return None

    def score_items(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` scores of ``items [B, M]`` after each history: the matching entries of
        `score_all_items`. A family whose full ranking is approximate (TIGER's beam) overrides this
        with exact scores, so occlusion explanations compare finite numbers."""
        return self.score_all_items(history).gather(1, items)

    def generation_path(self, history: torch.Tensor, items: torch.Tensor) -> list[list[dict]] | None:
        """How a generative model produced each of ``items`` for one history ``[L]`` (TIGER: per
        level, the code followed, its log-probability, the items sharing that prefix); None for
        models that score items rather than generate them."""
        return None

    def unscorable_items(self) -> torch.Tensor:
        """Item indices the model can never score, known once built (e.g. TIGER over ID vectors: an
        item without training events has no semantic ID); runs exclude them from ranking and count them."""
        return torch.zeros(0, dtype=torch.long)
