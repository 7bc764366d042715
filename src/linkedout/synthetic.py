"""Small in-memory models and bundles for tests, benchmarks and trying the server without training.

Nothing here is a recommender anyone should deploy: weights are random. What is real is the plumbing:
the same `bundle_from_model` `linkedout export` uses, so a synthetic bundle exercises every serving path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from linkedout.export import bundle_from_model
from linkedout.serve.bundle import Bundle

KINDS = ("video", "video", "prompt", "new")


def synthetic_model(
    n_items: int = 40,
    *,
    item_encoder: str = "linkedout",
    user_encoder: str = "sasrec",
    dim: int = 16,
    n_layers: int = 4,
    token_kinds: tuple[str, ...] = KINDS,
    token_dim: int = 12,
    max_len: int = 20,
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    layer_names: tuple[str, ...] | None = None,
) -> torch.nn.Module:
    """A random `SequentialRecommender`; content encoders get random LayerTokens ``[N, L, S, D]``."""
    from linkedout.models import ModelConfig, build_model
    from linkedout.models.features import ItemFeatures

    torch.manual_seed(seed)
    features = None
    if item_encoder != "id":
        if tokens is None:
            g = torch.Generator().manual_seed(seed)
            tokens = torch.randn(n_items, n_layers, len(token_kinds), token_dim, generator=g).half()
        names = layer_names or tuple(f"layer{i}" for i in range(tokens.shape[1]))
        features = ItemFeatures(tokens, torch.ones(n_items, dtype=torch.bool), token_kinds, names)
    config = ModelConfig(name=user_encoder, item_encoder=item_encoder, dim=dim, dropout=0.0)
    model = build_model(config, n_items, max_len, np.ones(n_items), features)
    model.config = config  # type: ignore[attr-defined]  # bundle_from_model needs it; kept beside
    model.features = features  # type: ignore[attr-defined]  # the raw LayerTokens, for tests
    return model.eval()


def synthetic_bundle(
    n_items: int = 40,
    *,
    model: torch.nn.Module | None = None,
    max_len: int = 20,
    titles: list[str | None] | None = None,
    store_meta: dict[str, Any] | None = None,
    thumbnails: dict[int, bytes] | None = None,
    **model_kw: Any,
) -> tuple[Bundle, torch.nn.Module]:
    """(bundle, the model it came from) with item ids ``i0 .. i{N-1}``."""
    model = model if model is not None else synthetic_model(n_items, max_len=max_len, **model_kw)
    ids = [f"i{i}" for i in range(model.n_items)]
    bundle = bundle_from_model(
        model,
        ids,
        max_len=max_len,
        model_config=model.config.to_dict(),
        protocol={"name": "synthetic", "max_seq_len": max_len},
        card={"dataset": "synthetic", "metrics": {}, "protocol_line": "synthetic (random weights)"},
        titles=titles if titles is not None else [f"item {i}" for i in range(model.n_items)],
        store_meta=store_meta,
        thumbnails=thumbnails,
    )
    return bundle, model


def random_vector_bundle(n_items: int, dim: int = 64, max_len: int = 50, seed: int = 0) -> Bundle:
    """An id-only SASRec bundle whose item matrix is random unit-scale vectors: for scale tests."""
    bundle, _ = synthetic_bundle(
        n_items, item_encoder="id", dim=dim, max_len=max_len, seed=seed, titles=[None] * n_items
    )
    return bundle
