"""User encoders: a history of item vectors -> one state per position (causal), the last one being
the user vector. SASRec (default), GRU4Rec and mean pooling.

All take ``x [B, L, D]`` item vectors of a LEFT-padded history and ``valid [B, L]`` (False on PAD)
and return ``[B, L, D]``; position t only sees positions <= t, so training can use every position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from linkedout.models import ModelConfig


class ByteDropout(nn.Module):
    """Inverted dropout whose masks come from numpy's PCG64 as random bytes (on CPU).

    Why: CPU torch draws dropout masks one element at a time on one thread (``bernoulli_``); in a
    SASRec training step on 2 cores that was the largest single cost (a quarter of the step). Random
    bytes from PCG64 cost ~5x less per element. The drop probability is rounded to a multiple of
    1/256 (0.2 -> 51/256). The generator is seeded from torch's global one on first use, so
    ``seed_everything`` makes runs repeatable. Other devices use ``F.dropout``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1)")
        self.p = p
        self.threshold = round(p * 256)  # a byte below this drops its element
        self._rng: np.random.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if self._rng is None:
            self._rng = np.random.default_rng(int(torch.randint(2**62, ()).item()))
        noise = torch.from_numpy(self._rng.integers(0, 256, x.shape, dtype=np.uint8))
        return x * (noise >= self.threshold) * (256.0 / (256 - self.threshold))


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = ByteDropout(dropout)  # on the attention weights, as in SASRec

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.training and self.drop.p > 0:
            y = self.drop(attention_weights(q, k, allowed)) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        return self.out(y.transpose(1, 2).reshape(b, length, d))


def attention_weights(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights ``[B, H, L, L]`` (what scaled_dot_product_attention computes
    inside), written out so that training can apply ByteDropout to them."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)


class Block(nn.Module):
    """Pre-norm transformer block (as in SASRec's reference code: LayerNorm before attention/FFN)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), ByteDropout(dropout), nn.Linear(dim, dim))
        self.drop = ByteDropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), allowed))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), with learned absolute positions
    counted from the right so the most recent item always has the same position embedding."""

    def __init__(self, dim: int, max_len: int, blocks: int = 2, heads: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.max_len = max_len
        self.positions = nn.Embedding(max_len, dim)
        self.drop = ByteDropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        _, length, d = x.shape
        if length > self.max_len:
            raise ValueError(f"history of length {length} exceeds max_len {self.max_len}")
        pos = torch.arange(self.max_len - length, self.max_len, device=x.device)
        x = self.drop((x * d**0.5 + self.positions(pos)[None]) * valid[..., None])
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # a query attends to earlier valid keys; a PAD query attends to itself only, which keeps the
        # softmax defined (its output is masked out below and never used)
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        allowed = causal[None] & (valid[:, None, :] | eye[None])
        for block in self.blocks:
            x = block(x, allowed) * valid[..., None]
        return self.norm(x)


class GRU4Rec(nn.Module):
    """GRU over the history (Hidasi et al. 2016, with the cross-entropy loss of later work). Left
    padding is converted to a packed sequence so PAD steps never touch the recurrent state."""

    def __init__(self, dim: int, hidden: int | None = None, layers: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        hidden = hidden or dim
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        _, length, d = x.shape
        lengths = valid.sum(1)
        # left-padded -> right-padded: row b's valid items start at column length - lengths[b]
        shift = (length - lengths)[:, None]
        cols = (torch.arange(length, device=x.device)[None, :] + shift) % length
        right = x.gather(1, cols[..., None].expand(-1, -1, d))
        packed = nn.utils.rnn.pack_padded_sequence(
            self.drop(right), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=length)
        # back to left padding
        back = (torch.arange(length, device=x.device)[None, :] - shift) % length
        out = out.gather(1, back[..., None].expand(-1, -1, out.shape[-1]))
        return self.proj(self.drop(out)) * valid[..., None]


class MeanPooling(nn.Module):
    """Running mean of the history's item vectors: the no-order baseline."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        v = valid[..., None].to(x.dtype)
        running = (x * v).cumsum(1) / v.cumsum(1).clamp(min=1.0)
        return self.proj(running) * v


def build_user_encoder(config: ModelConfig, max_len: int) -> nn.Module:
    """The user encoder ``config.name`` names, sized by the config (the one place that reads it)."""
    name = config.name
    if name == "sasrec":
        return SASRec(config.dim, max_len, blocks=config.blocks, heads=config.heads, dropout=config.dropout)
    if name == "gru4rec":
        return GRU4Rec(config.dim, layers=config.blocks, dropout=config.dropout)
    if name == "mean":
        return MeanPooling(config.dim)
    if name == "twotower":
        from linkedout.models.two_tower import UserTower

        return UserTower(config.dim, max_len, dropout=config.dropout)
    raise ValueError(f"unknown user encoder {name!r} (sasrec, gru4rec, mean, twotower)")
