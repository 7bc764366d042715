"""The `Recommender` contract every model follows.

- ``score_all_items(history)`` -> ``[B, n_items]`` scores for LEFT-padded histories ``[B, L]``
  (item indices, PAD = -1, most recent last). Higher is better. Evaluation and serving call only this.
- ``loss(batch)`` -> scalar for a `TrainBatch` of next-item windows (gradient-trained models).
- ``fit(split)`` closed-form models (popularity, item-kNN) compute themselves from the training events;
  gradient-trained models return without doing anything there and learn through ``loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TrainBatch:
    inputs: torch.Tensor  # long [B, L], PAD = -1, left-padded
    targets: torch.Tensor  # long [B, L], next item of each input position, PAD = -1

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(self.inputs.to(device), self.targets.to(device))


class Recommender(nn.Module):
    trainable: bool = True
    n_items: int

    def fit(self, split) -> None:
        """Closed-form fitting on the split's training events (no-op for gradient-trained models)."""

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not trained by gradient")

    def score_all_items(self, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
