"""Models: closed-form baselines, sequential recommenders, and the registry that builds them by name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from linkedout.models.base import Recommender, TrainBatch

MODELS = ("pop", "itemknn", "sasrec", "gru4rec", "mean")


@dataclass
class ModelConfig:
    """Everything that defines a model's architecture and loss (saved beside every checkpoint)."""

    name: str = "sasrec"
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2
    loss: str = "ce"  # ce | inbatch
    logq: bool = False  # log-popularity correction for the in-batch loss
    knn_neighbours: int = 200
    knn_history: int = 1


def build_model(
    config: ModelConfig, n_items: int, max_len: int, train_counts: np.ndarray | None = None
) -> Recommender:
    """A fresh (unfitted, untrained) model named by ``config.name``."""
    from linkedout.models.baselines import ItemKNN, Popularity
    from linkedout.models.sequential import IdItemEncoder, SequentialRecommender
    from linkedout.models.user_encoders import build_user_encoder

    if config.name == "pop":
        return Popularity(n_items)
    if config.name == "itemknn":
        return ItemKNN(n_items, neighbours=config.knn_neighbours, history_window=config.knn_history)
    if config.name in ("sasrec", "gru4rec", "mean"):
        logq = None
        if config.logq:
            if train_counts is None:
                raise ValueError("logq correction needs the training item counts")
            p = (train_counts + 1.0) / (train_counts + 1.0).sum()
            logq = torch.as_tensor(np.log(p), dtype=torch.float32)
        user = build_user_encoder(
            config.name, config.dim, max_len, blocks=config.blocks, heads=config.heads, dropout=config.dropout
        )
        return SequentialRecommender(IdItemEncoder(n_items, config.dim), user, loss=config.loss, logq=logq)
    raise ValueError(f"unknown model {config.name!r}; choose one of {MODELS}")


__all__ = ["MODELS", "ModelConfig", "Recommender", "TrainBatch", "build_model"]
