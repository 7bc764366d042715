"""LinkedOut's online half: Layer Token Compressor Experts + a Cross-Layer Knowledge MoE Fuser.

A RECONSTRUCTION. The paper (arXiv 2512.16891) describes the design in prose; it does not publish the
equations. What follows is our reading of it, and docs/linkedout.md says where we had to choose.

Input per item: stored LayerTokens ``X [L, S, D]`` (S summary tokens per layer: "old" prefill tokens
- pooled video groups, prompt/text - and "new" tokens from a short generation).

1. Compressor expert, one per layer l (no weights shared across depths, because each depth speaks
   its own "language"): condenses that layer's S tokens into one vector ``z_l`` of width ``dim``.
   - ``attn``: attention pooling with a learned query per layer over the projected tokens.
   - ``mlp``:  old mean ``o`` and new mean ``n`` projected, then an MLP on ``[o, n, |o-n|, o*n]``
     (the new tokens carry what the model chose to say about the video; the comparison features let
     the expert weigh agreement between what it saw and what it said).
2. Cross-layer MoE fuser: data-dependent weights over layers,
   ``w = softmax(gate([z_1 .. z_L]) / temperature)``, optionally kept to the top-k layers (renormalised),
   and ``item = sum_l w_l z_l``. An optional load-balancing term (importance loss: L * sum_l mean(w_l)^2,
   1 when balanced) keeps the gate from collapsing onto one layer early.
3. Optional ID fusion with DFF's sigmoid gate (see item_encoders.py), so warm items keep their
   collaborative signal while cold items are scored from content alone.

The gate weights ``w`` are the explanation: which depth of knowledge each item leaned on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linkedout.models.base import Encoded
from linkedout.models.features import ItemFeatures
from linkedout.models.item_encoders import FeatureItemEncoder


class AttentionCompressor(nn.Module):
    """One layer's S tokens -> one vector, attention-pooled by a learned query."""

    def __init__(self, d_in: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.key = nn.Linear(d_in, dim)
        self.value = nn.Linear(d_in, dim)
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))

    def _attention(self, xhat: torch.Tensor) -> torch.Tensor:  # standardised [N, S, D] -> [N, S]
        # The keys only ever meet the single query, and LayerNorm's affine is linear too:
        # key(g*xhat + b) @ q = xhat @ (g * W_k^T q) + (b @ W_k^T q + b_k @ q) - one D-vector per expert.
        k = self.key.weight.T @ self.query
        gamma, beta = self.norm.weight, self.norm.bias
        scores = (xhat @ (gamma * k) + beta @ k + self.key.bias @ self.query) / self.query.shape[0] ** 0.5
        return torch.softmax(scores, dim=-1)

    def forward_normalised(self, xhat: torch.Tensor) -> torch.Tensor:
        """The same function as `reference_forward`, on tokens already standardised per token (LayerNorm
        without its affine, which the caller computed once). The attention weights sum to 1, so pooling
        moves before the affine and the value map: sum_s a_s value(g*xhat_s + b) = value(g * sum_s a_s
        xhat_s + b). Per token that is ~2*D multiply-adds instead of LayerNorm + 2*D*dim, and no
        backward through the tokens."""
        pooled = torch.einsum("ns,nsd->nd", self._attention(xhat), xhat) * self.norm.weight + self.norm.bias
        return self.out(self.value(pooled))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [N, S, D] -> [N, dim]
        return self.forward_normalised(standardise(tokens, self.norm.eps))

    def reference_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Textbook attention pooling (LayerNorm, a key and a value per token); tests check that
        `forward` equals it."""
        x = self.norm(tokens)
        attn = torch.softmax(self.key(x) @ self.query / self.query.shape[0] ** 0.5, dim=-1)
        return self.out((attn[..., None] * self.value(x)).sum(1))

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """The expert's weights over the S tokens ``[N, S]``: which token kinds it read."""
        return self._attention(standardise(tokens, self.norm.eps))


def standardise(tokens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis without the affine: parameter-free, so computed once per item."""
    return F.layer_norm(tokens, tokens.shape[-1:], eps=eps)


class MLPCompressor(nn.Module):
    """One layer's old and new tokens -> MLP on [o, n, |o-n|, o*n]."""

    def __init__(self, d_in: int, dim: int, dropout: float, old: torch.Tensor, new: torch.Tensor) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.proj = nn.Linear(d_in, dim)
        self.mlp = nn.Sequential(nn.Linear(4 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.register_buffer("old", old.float() / old.sum().clamp(min=1), persistent=False)
        # without generated tokens the "new" view falls back to the old one (comparison terms vanish)
        self.register_buffer(
            "new", (new if new.any() else old).float() / (new if new.any() else old).sum(), persistent=False
        )

    def forward_normalised(self, xhat: torch.Tensor) -> torch.Tensor:
        """`reference_forward` on standardised tokens: the old/new means are weighted sums with weights
        summing to 1, so they commute with the affine and the projection (mean first, then project)."""
        gamma, beta = self.norm.weight, self.norm.bias
        o = self.proj(torch.einsum("nsd,s->nd", xhat, self.old) * gamma + beta)
        n = self.proj(torch.einsum("nsd,s->nd", xhat, self.new) * gamma + beta)
        return self.mlp(torch.cat([o, n, (o - n).abs(), o * n], dim=-1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [N, S, D] -> [N, dim]
        return self.forward_normalised(standardise(tokens, self.norm.eps))

    def reference_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Project every token, then average the old and the new ones (the textbook order)."""
        x = self.proj(self.norm(tokens))  # [N, S, dim]
        o = torch.einsum("nsd,s->nd", x, self.old)
        n = torch.einsum("nsd,s->nd", x, self.new)
        return self.mlp(torch.cat([o, n, (o - n).abs(), o * n], dim=-1))


class CrossLayerMoEFuser(nn.Module):
    """Softmax gate over the layers' vectors, conditioned on all of them (data-dependent)."""

    def __init__(self, n_layers: int, dim: int, temperature: float = 1.0, top_k: int | None = None) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.LayerNorm(n_layers * dim), nn.Linear(n_layers * dim, dim), nn.GELU(), nn.Linear(dim, n_layers)
        )
        self.temperature = temperature
        self.top_k = top_k if top_k and top_k < n_layers else None

    def weights(self, z: torch.Tensor) -> torch.Tensor:  # [N, L, dim] -> [N, L]
        w = torch.softmax(self.gate(z.flatten(1)) / self.temperature, dim=-1)
        if self.top_k:
            kth = w.topk(self.top_k, dim=-1).values[:, -1:]
            w = w * (w >= kth)
            w = w / w.sum(-1, keepdim=True)
        return w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights(z)
        return (w[..., None] * z).sum(1), w


class LinkedOutEncoder(FeatureItemEncoder):
    def __init__(
        self,
        features: ItemFeatures,
        dim: int,
        *,
        compressor: str = "attn",
        temperature: float = 1.0,
        top_k: int | None = None,
        balance: float = 0.0,
        dropout: float = 0.1,
        **kw,
    ) -> None:
        super().__init__(features, dim, **kw)
        n_layers, _, d_in = features.shape
        old, new = features.old_new_masks()
        if compressor == "attn":
            experts = [AttentionCompressor(d_in, dim, dropout) for _ in range(n_layers)]
        elif compressor == "mlp":
            experts = [MLPCompressor(d_in, dim, dropout, old, new) for _ in range(n_layers)]
        else:
            raise ValueError(f"unknown compressor {compressor!r} (attn, mlp)")
        self.experts = nn.ModuleList(experts)
        self.fuser = CrossLayerMoEFuser(n_layers, dim, temperature, top_k)
        self.balance = balance

    def prepare(self, tokens: torch.Tensor) -> torch.Tensor:
        return standardise(tokens)  # every expert starts with a LayerNorm: its parameter-free half, once

    def layer_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens ``[N, L, S, D]`` -> one vector per layer ``[N, L, dim]``."""
        return self._layer_vectors(self.prepare(tokens))

    def _layer_vectors(self, xhat: torch.Tensor) -> torch.Tensor:
        return torch.stack([e.forward_normalised(xhat[:, i]) for i, e in enumerate(self.experts)], dim=1)

    def content_aux(self, xhat: torch.Tensor) -> Encoded:
        fused, w = self.fuser(self._layer_vectors(xhat))
        aux = None
        if self.training and self.balance > 0:
            importance = w.mean(0)
            aux = self.balance * len(importance) * (importance**2).sum()
        return Encoded(fused, aux)

    @torch.no_grad()
    def layer_weights(self, items: torch.Tensor) -> torch.Tensor:
        """Per item, the fuser's weights over layers ``[N, L]``: which depth it leaned on."""
        return self.fuser.weights(self._layer_vectors(self.gather(items)))

    @torch.no_grad()
    def content_layer_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """The gate of items given by raw LayerTokens (a new item at serving time)."""
        return self.fuser.weights(self.layer_vectors(tokens))
