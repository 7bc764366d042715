"""Models: closed-form baselines, sequential and pairwise (BPR-MF, LightGCN) recommenders, and the
registry that builds them by name."""

from __future__ import annotations

import numpy as np
import torch

from linkedout.config import ModelConfig
from linkedout.models.base import ItemEncoder, Recommender, TrainBatch

MODELS = ("pop", "itemknn", "sasrec", "gru4rec", "mean", "twotower", "bpr", "lightgcn", "tiger")
ITEM_ENCODERS = ("id", "last", "mean", "dff", "linkedout", "caption")


def build_item_encoder(
    config: ModelConfig, n_items: int, features=None, train_counts=None, *, content_only: bool = False
) -> ItemEncoder:
    """The item side named by ``config.item_encoder``; content encoders need ``features`` (ItemFeatures).
    ``content_only`` leaves out the ID fusion (DFF's included): what encodes a new item at serving time."""
    from linkedout.models.item_encoders import (
        CaptionEncoder,
        DFFEncoder,
        IdItemEncoder,
        LastLayerEncoder,
        MeanLayersEncoder,
    )
    from linkedout.models.linkedout import LinkedOutEncoder

    name = config.item_encoder
    if name == "id":
        return IdItemEncoder(n_items, config.dim)
    if name not in ITEM_ENCODERS:
        raise ValueError(f"unknown item encoder {name!r}; choose one of {ITEM_ENCODERS}")
    if features is None:
        raise ValueError(f"item encoder {name!r} needs features: pass --features STORE")
    if features.tokens.shape[0] != n_items:
        raise ValueError(f"features cover {features.tokens.shape[0]} items, the dataset has {n_items}")
    known = torch.as_tensor(train_counts > 0) if train_counts is not None else None
    fuse = (config.id_fusion or name == "dff") and not content_only  # DFF always fuses when trained
    kw = {"id_fusion": fuse, "known": known, "id_dropout": config.id_dropout}
    if name == "last":
        return LastLayerEncoder(features, config.dim, **kw)
    if name == "mean":
        return MeanLayersEncoder(features, config.dim, **kw)
    if name == "dff":
        return DFFEncoder(features, config.dim, **kw)
    if name == "caption":
        return CaptionEncoder(features, config.dim, **kw)
    return LinkedOutEncoder(
        features,
        config.dim,
        compressor=config.compressor,
        temperature=config.temperature,
        top_k=config.top_k,
        balance=config.balance,
        dropout=config.dropout,
        **kw,
    )


def build_model(
    config: ModelConfig,
    n_items: int,
    max_len: int,
    train_counts: np.ndarray | None = None,
    features=None,
    n_users: int | None = None,
) -> Recommender:
    """A fresh (unfitted, untrained) model named by ``config.name``; content item encoders take
    ``features`` (an `ItemFeatures` aligned to the dataset's items); families with per-user parameters
    (BPR-MF, LightGCN) take ``n_users`` (the split's users: what `TrainBatch.users` indexes)."""
    from linkedout.models.baselines import ItemKNN, Popularity
    from linkedout.models.sequential import SequentialRecommender
    from linkedout.models.user_encoders import build_user_encoder

    if config.name == "pop":
        return Popularity(n_items)
    if config.name == "itemknn":
        return ItemKNN(n_items, neighbours=config.knn_neighbours, history_window=config.knn_history)
    if config.name in ("sasrec", "gru4rec", "mean", "twotower"):
        logq = None
        if config.logq:
            if train_counts is None:
                raise ValueError("logq correction needs the training item counts")
            p = (train_counts + 1.0) / (train_counts + 1.0).sum()
            logq = torch.as_tensor(np.log(p), dtype=torch.float32)
        user = build_user_encoder(config, max_len)
        items = build_item_encoder(config, n_items, features, train_counts)
        trained = torch.as_tensor(train_counts > 0) if train_counts is not None else None
        negatives = config.negatives if config.loss == "sampled" else 0
        return SequentialRecommender(
            items,
            user,
            loss=config.loss,
            logq=logq,
            trained_items=trained,
            negatives=negatives,
            mask_window=config.mask_window,
        )
    if config.name in ("bpr", "lightgcn"):
        from linkedout.models.bpr import BPRMF, trained_mask

        if n_users is None:
            raise ValueError(f"model {config.name!r} has a vector per user: build_model needs n_users")
        items = build_item_encoder(config, n_items, features, train_counts)
        kw = {"negatives": config.negatives, "trained_items": trained_mask(train_counts, n_items)}
        if config.name == "bpr":
            return BPRMF(items, n_users, **kw)
        from linkedout.models.lightgcn import LightGCN

        return LightGCN(
            items,
            n_users,
            layers=config.layers,
            isolated_scale=config.isolated_scale,
            isolate_items=config.isolate_items,
            **kw,
        )
    if config.name == "tiger":
        from linkedout.models.tiger import build_tiger

        return build_tiger(config, n_items, max_len, train_counts, features)
    raise ValueError(f"unknown model {config.name!r}; choose one of {MODELS}")


def build_content_encoder(
    config: ModelConfig, feature_shape: tuple[int, int, int], token_kinds: tuple[str, ...], layer_names
) -> ItemEncoder:
    """An untrained content-only encoder for LayerTokens of ``feature_shape`` ``(L, S, D)``, to load a
    bundle's content weights into (no catalogue: it encodes tokens it is given)."""
    from linkedout.models.features import ItemFeatures

    placeholder = ItemFeatures.placeholder(feature_shape, token_kinds, layer_names)
    return build_item_encoder(config, 1, placeholder, None, content_only=True)


__all__ = [
    "ITEM_ENCODERS",
    "MODELS",
    "ItemEncoder",
    "ModelConfig",
    "Recommender",
    "TrainBatch",
    "build_content_encoder",
    "build_item_encoder",
    "build_model",
]
