"""User encoders: a history of item vectors -> one state per position (causal), the last one being
the user vector. SASRec (default), GRU4Rec and mean pooling.

All take ``x [B, L, D]`` item vectors of a LEFT-padded history and ``valid [B, L]`` (False on PAD)
and return ``[B, L, D]``; position t only sees positions <= t, so training can use every position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    """Pre-norm transformer block (as in SASRec's reference code: LayerNorm before attention/FFN)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

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
        self.drop = nn.Dropout(dropout)
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


def build_user_encoder(name: str, dim: int, max_len: int, **kw) -> nn.Module:
    if name == "sasrec":
        return SASRec(
            dim, max_len, blocks=kw.get("blocks", 2), heads=kw.get("heads", 2), dropout=kw.get("dropout", 0.2)
        )
    if name == "gru4rec":
        return GRU4Rec(dim, layers=kw.get("blocks", 1), dropout=kw.get("dropout", 0.2))
    if name == "mean":
        return MeanPooling(dim)
    raise ValueError(f"unknown user encoder {name!r} (sasrec, gru4rec, mean)")
