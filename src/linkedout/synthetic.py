"""Small in-memory models and bundles for tests, benchmarks and trying the server without training;
SYNTHETIC interaction logs for scale measurements (`synthetic_log`).

Nothing here is a recommender anyone should deploy: weights are random. What is real is the plumbing:
the same `bundle_from_model` `linkedout export` uses, so a synthetic bundle exercises every serving path,
and a synthetic log is written by the same `ShardSetWriter` as `linkedout shard`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from linkedout.export import bundle_from_model
from linkedout.serve.bundle import Bundle

if TYPE_CHECKING:
    from linkedout.data.shards import ShardedLog

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


def random_vector_bundle(
    n_items: int, dim: int = 64, max_len: int = 50, seed: int = 0, clusters: int = 0, spread: float = 1.0
) -> Bundle:
    """An id-only SASRec bundle whose item matrix is random unit-scale vectors: for scale tests.

    ``clusters`` = 0: isotropic Gaussian rows (the model's own initialisation), the hardest case for
    ANN indexes (no structure to exploit). ``clusters`` = C > 0: SYNTHETIC clustered rows, each a
    random centre (one of C, chosen uniformly) plus ``spread`` times Gaussian noise of the centres'
    scale, rescaled to the Gaussian rows' mean norm - a stand-in for trained item embeddings, which
    cluster (by genre, topic, creator); how much is the data's question, so C and spread are stated
    with every number measured on them."""
    bundle, _ = synthetic_bundle(
        n_items, item_encoder="id", dim=dim, max_len=max_len, seed=seed, titles=[None] * n_items
    )
    if clusters > 0:
        g = torch.Generator().manual_seed(seed + 1)
        centres = torch.randn(clusters, dim, generator=g)
        which = torch.randint(clusters, (n_items,), generator=g)
        rows = centres[which] + spread * torch.randn(n_items, dim, generator=g)
        scale = bundle.item_matrix.norm(dim=1).mean() / rows.norm(dim=1).mean()
        bundle.item_matrix = (rows * scale).contiguous()
    return bundle


def synthetic_log(
    root: str | Path,
    n_events: int,
    *,
    n_items: int = 100_000,
    events_per_shard: int = 500_000,
    mean_user_events: float = 20.0,
    mean_session_events: float = 5.0,
    zipf: float = 1.0,
    topic_share: float = 0.7,
    topic_width: float = 20.0,
    seed: int = 0,
) -> ShardedLog:
    """Write a SYNTHETIC sharded log of exactly ``n_events`` events, one shard at a time (memory: one
    shard), labelled synthetic in its manifest with every parameter below.

    - Popularity: item of popularity rank r drawn with p ~ 1 / (r + 10) ** ``zipf`` (a Zipf law with a
      flattened head), ranks shuffled against the ids.
    - Users: lengths 3 + geometric (mean ``mean_user_events``), so every user has a test event.
    - Sessions: a new session starts with probability 1 / ``mean_session_events`` per event; a session
      has an anchor item drawn by popularity, and each of its events is, with probability
      ``topic_share``, an item near the anchor in popularity rank (offset ~ N(0, ``topic_width``),
      reflected at the head: neighbours of a hit are near-hits, so the skew survives), else a
      popularity draw. Minutes between events of a session, days between sessions. So next items are
      predictable from recent ones, as in real sessions; the neighbourhoods are a stand-in for topics.
    """
    from linkedout.data.shards import ShardSetWriter

    if n_events < 3 or n_items < 2:
        raise ValueError(f"a synthetic log needs >= 3 events and >= 2 items, got {n_events}, {n_items}")
    params = {
        "n_events": n_events,
        "n_items": n_items,
        "events_per_shard": events_per_shard,
        "mean_user_events": mean_user_events,
        "mean_session_events": mean_session_events,
        "zipf": zipf,
        "topic_share": topic_share,
        "topic_width": topic_width,
        "seed": seed,
    }
    source = {"SYNTHETIC": "linkedout.synthetic.synthetic_log (Zipf popularity, sessions)", **params}
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(n_items) + 10.0) ** zipf
    cdf = np.cumsum(weights / weights.sum())
    by_rank = rng.permutation(n_items)  # item index of each popularity rank
    writer = ShardSetWriter(root, np.arange(n_items, dtype=np.int64), source)
    n_shards = max(1, math.ceil(n_events / events_per_shard))
    first_user = 0
    for k in range(n_shards):
        shard_rng = np.random.default_rng([seed, k])  # a shard depends on (seed, k) alone
        events = n_events // n_shards + (k < n_events % n_shards)
        lengths = 3 + shard_rng.geometric(1.0 / max(mean_user_events - 2.0, 1.0), size=events // 3 + 1) - 1
        n_users = int(np.searchsorted(np.cumsum(lengths), events)) + 1
        lengths = lengths[:n_users]
        lengths[-1] -= int(lengths.sum()) - events  # exact total; the last user may fall below 3
        user_of = np.repeat(np.arange(n_users), lengths)
        first_event = np.r_[True, user_of[1:] != user_of[:-1]]
        new_session = first_event | (shard_rng.random(events) < 1.0 / mean_session_events)
        session = np.cumsum(new_session) - 1
        anchor = np.minimum(np.searchsorted(cdf, shard_rng.random(session[-1] + 1)), n_items - 1)  # a rank
        offset = np.rint(shard_rng.normal(0, topic_width, events)).astype(np.int64)
        near = np.minimum(np.abs(anchor[session] + offset), n_items - 1)
        popular = np.minimum(np.searchsorted(cdf, shard_rng.random(events)), n_items - 1)
        items = by_rank[np.where(shard_rng.random(events) < topic_share, near, popular)]
        gaps = np.where(
            new_session, shard_rng.exponential(2 * 86_400, events), shard_rng.exponential(120, events)
        )
        start = shard_rng.integers(1_600_000_000, 1_600_000_000 + 365 * 86_400, n_users)
        clock = np.cumsum(gaps)
        clock -= np.repeat(clock[np.r_[0, np.cumsum(lengths)[:-1]]], lengths)  # restart per user
        timestamps = start[user_of] + clock.astype(np.int64)
        writer.add(first_user + user_of, items, timestamps)
        first_user += n_users
    return writer.close()
