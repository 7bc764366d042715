"""Item encoders: item index -> vector. One interface (`linkedout.models.base.ItemEncoder`) so every
user encoder works with every item encoder, and explanations, export and serving ask nothing else.

- ``id``: a learned embedding per item (the classic table).
- ``last`` / ``mean``: the last layer's, or the mean of all layers', stored tokens through a projection.
- ``dff``: DFF (arXiv 2512.21863): one global softmax weight per layer, ``v = ReLU(W h)``, and a sigmoid
  gate with the ID embedding ``e``: ``item = g * e + (1 - g) * v``, ``g = sigmoid(W_g [e; v])``.
- ``caption``: one text-encoder vector per item (Describe What You See) through a projection.
- ``linkedout``: compressor experts + cross-layer MoE fuser, in linkedout.py.

Content encoders compute vectors only for the unique items a step touches; ``all_items`` runs the
catalogue in chunks. ID fusion (optional for content encoders, built into DFF) knows which items were
trained: an item with no training events gets ``e = 0`` so a cold item is scored from content alone
instead of from an untrained random vector; ``id_dropout`` zeroes ``e`` for random items during
training so the content path learns to stand alone.
"""

from __future__ import annotations

import torch
from torch import nn

from linkedout.models.base import Encoded, ItemEncoder, add_aux
from linkedout.models.features import ItemFeatures

PREPARED_FP32_BYTES = 1 << 30  # above this, prepared tokens stay float16 (half the memory)


class IdItemEncoder(ItemEncoder):
    """One learned vector per item: the classic ID-only embedding table."""

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.dim = dim
        self.embedding = nn.Embedding(n_items, dim)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)

    def encode(self, items: torch.Tensor) -> Encoded:
        return Encoded(self.embedding(items))

    def encode_all(self) -> Encoded:
        return Encoded(self.embedding.weight)


class IdFusionGate(nn.Module):
    """DFF's gate: ``g = sigmoid(W_g [e; v])``, ``out = g * e + (1 - g) * v`` (element-wise)."""

    def __init__(self, n_items: int, dim: int, known: torch.Tensor, id_dropout: float = 0.1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_items, dim)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        self.gate = nn.Linear(2 * dim, dim)
        self.register_buffer("known", known.float())
        self.id_dropout = id_dropout

    def forward(self, items: torch.Tensor, content: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = self.known[items]
        if self.training and self.id_dropout > 0:
            keep = keep * (torch.rand_like(keep) >= self.id_dropout)
        e = self.embedding(items) * keep[:, None]
        g = torch.sigmoid(self.gate(torch.cat([e, content], dim=-1)))
        # an unknown item has no ID to lean on: force the gate to content
        g = g * keep[:, None]
        return g * e + (1 - g) * content, g.mean(-1)


class FeatureItemEncoder(ItemEncoder):
    """Base of the content encoders: gathers stored tokens, encodes them, optionally fuses the ID.

    Subclasses implement `content_prepared`, or `content_aux` when they add a training loss term (each
    defaults to the other), and `prepare` when part of their first step has no parameters."""

    encodes_content = True

    def __init__(
        self,
        features: ItemFeatures,
        dim: int,
        *,
        id_fusion: bool = False,
        known: torch.Tensor | None = None,
        id_dropout: float = 0.1,
        chunk: int = 4096,
    ) -> None:
        super().__init__()
        self.n_items = features.tokens.shape[0]
        self.dim = dim
        self._layer_names = tuple(features.layer_names)
        self._token_kinds = tuple(features.token_kinds)
        self._feature_shape = features.shape
        self.register_buffer("present", features.present, persistent=False)
        self.chunk = chunk
        # What `content_prepared` reads: `prepare`'s parameter-free work done once for the catalogue
        # instead of at every step; float32 while that costs <= 1 GiB (no per-step conversion), else
        # kept at float16 and converted per gathered chunk.
        self._prepared_fp32 = features.tokens.numel() * 4 <= PREPARED_FP32_BYTES
        self.register_buffer("prepared", self._prepare_all(features.tokens), persistent=False)
        self.fusion = None
        if id_fusion:
            known = known if known is not None else torch.ones(self.n_items, dtype=torch.bool)
            self.fusion = IdFusionGate(self.n_items, dim, known, id_dropout)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self._layer_names

    @property
    def token_kinds(self) -> tuple[str, ...]:
        return self._token_kinds

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return self._feature_shape

    def prepare(self, tokens: torch.Tensor) -> torch.Tensor:
        """Parameter-free preprocessing of raw tokens ``[N, L, S, D]`` float32 (identity here)."""
        return tokens

    def content_prepared(self, prepared: torch.Tensor) -> torch.Tensor:
        """``prepare``'d tokens ``[N, L, S, D]`` float32 -> ``[N, dim]``."""
        return self.content_aux(prepared).vectors

    def content_aux(self, prepared: torch.Tensor) -> Encoded:
        """`content_prepared` plus the auxiliary loss of computing it (none by default)."""
        return Encoded(self.content_prepared(prepared))

    def content_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw LayerTokens ``[N, L, S, D]`` float32 -> ``[N, dim]`` (e.g. a new item at serving time)."""
        return self.content_prepared(self.prepare(tokens))

    def content_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("fusion.")}

    def _prepare_all(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if self._prepared_fp32 else torch.float16
        step = self.chunk
        chunks = [self.prepare(tokens[i : i + step].float()).to(dtype) for i in range(0, len(tokens), step)]
        return torch.cat(chunks) if chunks else tokens.to(dtype)

    def gather(self, items: torch.Tensor) -> torch.Tensor:
        """The prepared tokens of ``items``, float32."""
        return self.prepared[items].float()

    def encode_items(self, items: torch.Tensor) -> Encoded:
        """Vectors of distinct ``items`` (1-D)."""
        v, aux = self.content_aux(self.gather(items))
        if self.fusion is not None:
            v, _ = self.fusion(items, v)
        return Encoded(v, aux)

    def encode(self, items: torch.Tensor) -> Encoded:
        unique, inverse = torch.unique(items, return_inverse=True)
        v, aux = self.encode_items(unique)
        return Encoded(v[inverse], aux)

    def encode_all(self) -> Encoded:
        idx = torch.arange(self.n_items, device=self.prepared.device)
        vectors, aux = [], None
        for i in range(0, self.n_items, self.chunk):
            v, a = self.encode_items(idx[i : i + self.chunk])
            vectors.append(v)
            aux = add_aux(aux, a)
        return Encoded(torch.cat(vectors), aux)

    def id_gate(self, items: torch.Tensor) -> torch.Tensor | None:
        """Mean ID-gate value per item (1 = leans on the ID, 0 = on content); None without fusion."""
        if self.fusion is None:
            return None
        v = self.content_prepared(self.gather(items))
        return self.fusion(items, v)[1]


class Projection(nn.Sequential):
    def __init__(self, d_in: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__(nn.LayerNorm(d_in), nn.Dropout(dropout), nn.Linear(d_in, dim))


class LastLayerEncoder(FeatureItemEncoder):
    """The last selected layer's summary tokens, averaged, projected."""

    def __init__(self, features: ItemFeatures, dim: int, **kw) -> None:
        super().__init__(features, dim, **kw)
        self.proj = Projection(features.shape[2], dim)

    def content_prepared(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens[:, -1].mean(1))


class MeanLayersEncoder(FeatureItemEncoder):
    """All layers' summary tokens averaged (each layer normalised first: depths differ in scale)."""

    def __init__(self, features: ItemFeatures, dim: int, **kw) -> None:
        super().__init__(features, dim, **kw)
        d = features.shape[2]
        self.layer_norm = nn.LayerNorm(d)
        self.proj = Projection(d, dim)

    def content_prepared(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layer_norm(tokens.mean(2)).mean(1))


class DFFEncoder(FeatureItemEncoder):
    """DFF: softmax layer weights (global, not per item), ReLU projection, sigmoid ID gate."""

    def __init__(self, features: ItemFeatures, dim: int, **kw) -> None:
        kw.setdefault("id_fusion", True)
        super().__init__(features, dim, **kw)
        n_layers, _, d = features.shape
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.proj = nn.Sequential(nn.Linear(d, dim), nn.ReLU())

    def global_layer_weights(self) -> torch.Tensor:
        """The one softmax over layers every item shares ``[L]``."""
        return torch.softmax(self.layer_logits, 0)

    @torch.no_grad()
    def layer_weights(self, items: torch.Tensor) -> torch.Tensor:
        return self.global_layer_weights()[None].expand(len(items), -1)

    @torch.no_grad()
    def content_layer_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.global_layer_weights()[None].expand(len(tokens), -1)

    def content_prepared(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(tokens.mean(2))  # [N, L, D]
        return self.proj((h * self.global_layer_weights()[None, :, None]).sum(1))


class CaptionEncoder(FeatureItemEncoder):
    """Describe What You See: a sentence vector of the item's caption (features ``[N, 1, 1, D]``)."""

    def __init__(self, features: ItemFeatures, dim: int, **kw) -> None:
        super().__init__(features, dim, **kw)
        self.proj = Projection(features.shape[2], dim)

    def content_prepared(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens.mean((1, 2)))
