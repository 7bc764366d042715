"""Content two-tower: a user tower over the watch history, an item tower over item content, scored by
inner product and trained with an in-batch softmax corrected by the items' log sampling probability.

- Item tower: any `ItemEncoder` (id, metadata text, caption, frames, audio, DFF/LinkedOut tokens). With
  a content encoder an item's vector needs nothing but its features, so the exported item matrix sits in
  the serving index and a new item is encoded on arrival, with no retraining.
- User tower: a bag of watched items, as in YouTube's candidate generator (Covington et al., RecSys
  2016): a mean of the history's item-tower vectors through a residual MLP, each item weighted by a
  learned function of how long ago it was watched (`UserTower`). Pooling every prefix makes every
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
    """A recency-weighted mean of the history's item vectors -> ``pooled + MLP(pooled)``, at every
    position t (causal: only items up to t).

    Item s counts at position t with weight ``exp(recency[t - s])``, normalised over the prefix: one
    learned number per distance, starting at 0 (the plain running mean of YouTube's tower). What a bag
    of items cannot say - that the last watch matters more than the tenth-to-last - the tower learns
    as a decay curve, without becoming a sequence model (no attention between items, no order beyond
    distance).
    """

    def __init__(self, dim: int, max_len: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.recency = nn.Parameter(torch.zeros(max_len))
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), ByteDropout(dropout), nn.Linear(hidden, dim)
        )
        # start as the plain mean: the residual branch begins at zero and learns what the mean misses
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def pooling_weights(self, valid: torch.Tensor) -> torch.Tensor:
        """``[B, L, L]``: row t holds the weights of items s <= t (valid ones), summing to 1."""
        length = valid.shape[1]
        pos = torch.arange(length, device=valid.device)
        distance = pos[:, None] - pos[None, :]  # t - s
        logits = self.recency[distance.clamp(0, len(self.recency) - 1)]
        allowed = (distance >= 0)[None] & valid[:, None, :]
        w = torch.where(allowed, logits[None], float("-inf")).softmax(-1)
        return torch.nan_to_num(w)  # a row with no valid item (padding) is all zero

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling_weights(valid).to(x.dtype) @ x
        return (pooled + self.mlp(pooled)) * valid[..., None].to(x.dtype)
