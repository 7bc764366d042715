"""Explanations: which depth of knowledge an item leaned on, and which history videos a
recommendation came from.

- Item: the layer weights of its item encoder - LinkedOut's per-item MoE gate, DFF's global layer
  softmax (the same for every item). ID-only and single-layer encoders have none.
- Recommendation: each history item's contribution is the drop in the recommended item's score when
  that item is removed from the history (occlusion: exact for any user encoder, one batched forward of
  L histories). Layers that mattered for the recommendation = the recommended item's own gate, and the
  contribution-weighted gate of the history items that pushed it up.
- Generative models (TIGER): the semantic-ID path the model followed to each recommended item, per
  level the code, its log-probability and how many catalogue items share the prefix so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from linkedout.data.batches import PAD, left_pad, padded_windows
from linkedout.data.protocol import Split
from linkedout.models.base import Recommender


@dataclass
class Recommendation:
    item: int  # item index
    score: float
    contributions: list[tuple[int, float]]  # (history item index, score drop when removed), largest first
    layer_weights: list[float] | None = None
    generation_path: list[dict] | None = None  # generative models: the code path to the item, per level


@dataclass
class Explanation:
    user: Any  # raw user id (-1 for an anonymous history)
    history: list[int]  # item indices, oldest first (as the model saw them)
    recommendations: list[Recommendation]
    layer_names: tuple[str, ...] = ()
    user_layer_weights: list[float] | None = None  # contribution-weighted over the history
    history_layer_weights: list[list[float]] = field(default_factory=list)


def occlusions(history: np.ndarray, first: int = 0) -> list[np.ndarray]:
    """The history without its t-th item, for t = first .. len - 1: the occlusion variants whose
    scores give each history item's contribution (left-padded by the caller, so positions stay
    anchored to the most recent item)."""
    return [np.delete(history, t) for t in range(first, len(history))]


@torch.no_grad()
def explain_history(
    model: Recommender,
    history: np.ndarray,
    *,
    k: int = 10,
    exclude: np.ndarray | None = None,
    layer_names: tuple[str, ...] = (),
    user: Any = -1,
) -> Explanation:
    """Top-``k`` for one history (item indices, oldest first) with occlusion contributions."""
    model.eval()
    length = len(history)
    full = torch.as_tensor(history, dtype=torch.long)[None]
    variants = left_pad(occlusions(history), length)
    scores = model.score_all_items(full)[0]
    if exclude is not None and len(exclude):
        scores[torch.as_tensor(exclude, dtype=torch.long)] = float("-inf")
    top = torch.topk(scores, min(k, len(scores))).indices
    occluded = model.score_items(torch.as_tensor(variants), top[None].expand(length, -1))  # [L, k]
    paths = model.generation_path(full[0], top)
    drops = (scores[top][None, :] - occluded).numpy()  # [L, k]
    weights = model.layer_weights(torch.as_tensor(np.concatenate([top.numpy(), history]), dtype=torch.long))
    recs = []
    for j, item in enumerate(top.tolist()):
        order = np.argsort(-drops[:, j])
        contributions = [(int(history[t]), float(drops[t, j])) for t in order]
        lw = weights[j].tolist() if weights is not None else None
        path = paths[j] if paths is not None else None
        recs.append(Recommendation(item, float(scores[item]), contributions, lw, path))
    explanation = Explanation(user, history.tolist(), recs, layer_names)
    if weights is not None:
        hist_w = weights[len(top) :].numpy()
        positive = np.clip(drops.mean(1), 0, None)
        mix = positive / positive.sum() if positive.sum() > 0 else np.full(length, 1 / length)
        explanation.user_layer_weights = (mix @ hist_w).tolist()
        explanation.history_layer_weights = hist_w.tolist()
    return explanation


def explain_user(
    model: Recommender, split: Split, user_id, *, k: int = 10, which: str = "test"
) -> Explanation:
    """Explain the recommendations for a dataset user (raw id) from the history the protocol gives it
    at ``which`` time (test: everything but the last event)."""
    data = split.data
    index = data.user_index()
    if user_id not in index:
        for cast in (int, str):
            try:
                if cast(user_id) in index:
                    user_id = cast(user_id)
                    break
            except ValueError:
                continue
        else:
            raise KeyError(
                f"unknown user {user_id!r} ({data.n_users} users, e.g. {data.user_ids[:3].tolist()})"
            )
    u = index[user_id]
    eval_set = split.eval_set(which)
    rows = np.flatnonzero(eval_set.users == u)
    end = int(eval_set.history_end[rows[0]]) if len(rows) else int(data.offsets[u + 1])
    start = int(data.offsets[u])
    history = padded_windows(data.items, np.array([start]), np.array([end]), split.protocol.max_seq_len)[0]
    history = history[history != PAD]
    exclude = data.items[start:end] if split.protocol.mask_history else None
    if len(split.excluded_items):
        exclude = split.excluded_items if exclude is None else np.union1d(exclude, split.excluded_items)
    return explain_history(model, history, k=k, exclude=exclude, layer_names=model.layer_names, user=user_id)


def store_captions(store_path: str | None, item_ids: list[str]) -> dict[str, str]:
    """Caption per item id (a Video-LLM's generated text, or what a caption store encoded) from the
    run's feature store, for the items that have one; empty when the run has no store or the store no
    captions. Explanations show it beside the title: what the model "saw" in the video."""
    if not store_path:
        return {}
    from linkedout.store import FeatureStore

    store = FeatureStore.open(store_path)
    known = [i for i in item_ids if i in store]
    return {i: c for i, c in zip(known, store.captions(known), strict=True) if c and c.strip()}


def plot_layer_weights(
    model: Recommender, explanation: Explanation, path, *, n_items: int = 60, seed: int = 0
):
    """PNG: layer weights across a sample of items (heatmap) and for one user's recommendations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_total = model.n_items
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_total, size=min(n_items, n_total), replace=False))
    weights = model.layer_weights(torch.as_tensor(sample))
    if weights is None:
        raise ValueError("this model's item encoder has no layer weights to plot (use dff or linkedout)")
    w = weights.numpy()
    w = w[np.lexsort((-w.max(1), w.argmax(1)))]
    names = explanation.layer_names or tuple(f"L{i}" for i in range(w.shape[1]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    im = axes[0].imshow(w.T, aspect="auto", cmap="viridis", vmin=0)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].set_xlabel(f"{len(sample)} random items (sorted by dominant layer)")
    axes[0].set_title("Layer weights per item")
    fig.colorbar(im, ax=axes[0])
    rec = np.array([r.layer_weights for r in explanation.recommendations])
    x = np.arange(len(names))
    axes[1].bar(x - 0.2, rec.mean(0), width=0.4, label="recommended items")
    if explanation.user_layer_weights is not None:
        axes[1].bar(
            x + 0.2, explanation.user_layer_weights, width=0.4, label="history (contribution-weighted)"
        )
    axes[1].set_xticks(x, names, rotation=45, ha="right")
    axes[1].set_title(f"User {explanation.user}: layers that mattered")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
