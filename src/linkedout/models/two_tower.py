"""Content two-tower: a user tower over the watch history, an item tower over item content, scored by
inner product and trained with an in-batch softmax corrected by the items' log sampling probability.

- Item tower: any `ItemEncoder` (id, metadata text, caption, frames, audio, DFF/LinkedOut tokens). With
  a content encoder an item's vector needs nothing but its features, so the exported item matrix sits in
  the serving index and a new item is encoded on arrival, with no retraining.
- User tower: order-free, as in YouTube's candidate generator (Covington et al., RecSys 2016): the
  running mean of the history's item-tower vectors through a residual MLP. The running mean makes every
  position of a training window a (prefix -> next item) example, like the sequential models.
- Loss: softmax over the batch's distinct target items (the candidates every row shares), minus
  ``log q(item)`` for each candidate, q = its share of training events (Yi et al., RecSys 2019): popular
  items appear as negatives more often than uniform sampling would, the correction removes that bias.
  Items of a row's own window are not its negatives. This is `SequentialRecommender`'s ``inbatch``
  loss; the recipe turns it on with ``logq`` (``--loss ce`` still trains a two-tower by full softmax).

The model is a `SequentialRecommender` with this user tower: training, evaluation, export and serving
are the same code paths as SASRec's.
"""

from __future__ import annotations

import torch
from torch import nn

from linkedout.models.user_encoders import ByteDropout


class UserTower(nn.Module):
    """Running mean of the history's item vectors -> ``mean + MLP(mean)`` at every position."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), ByteDropout(dropout), nn.Linear(hidden, dim)
        )
        # start as the plain mean: the residual branch begins at zero and learns what the mean misses
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        v = valid[..., None].to(x.dtype)
        mean = (x * v).cumsum(1) / v.cumsum(1).clamp(min=1.0)
        return (mean + self.mlp(mean)) * v
