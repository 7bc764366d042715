"""Ranking metrics from the 0-based rank of each held-out target.

With one held-out item per user (leave-one-out), Recall@K equals HR@K; both are reported because
papers name either. Ties are broken by item index (a stable sort), so tied scores (popularity) do
not flatter a model the way an optimistic "count strictly greater" rank would.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

NEG_INF = float("-inf")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``targets[b]`` in ``scores[b]`` sorted descending, ties broken by item index."""
    target_scores = scores.gather(1, targets[:, None])
    greater = (scores > target_scores).sum(1)
    idx = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == target_scores) & (idx < targets[:, None])).sum(1)
    return greater + tied_before


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, n_negatives: int, generator: torch.Generator
) -> torch.Tensor:
    """Rank of the target among ``n_negatives`` uniformly sampled items (seen items, already set to
    -inf by the caller when masking, simply never win). Inflates numbers: use only on request."""
    b, n_items = scores.shape
    negatives = torch.randint(0, n_items, (b, n_negatives), generator=generator, device=scores.device)
    # a negative that is the target itself is not a negative: push it out of the way
    negative_scores = scores.gather(1, negatives).masked_fill(negatives == targets[:, None], NEG_INF)
    return (negative_scores > scores.gather(1, targets[:, None])).sum(1)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...], names: tuple[str, ...]) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for name in names:
        for k in ks:
            hit = ranks < k
            if name in ("HR", "Recall"):
                value = hit.mean()
            elif name == "NDCG":
                value = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()
            elif name == "MRR":
                value = np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()
            else:
                raise ValueError(f"unknown metric {name!r} (HR, NDCG, Recall, MRR)")
            out[f"{name}@{k}"] = float(value) if len(ranks) else float("nan")
    return out


def warn_sampled(n_negatives: int) -> None:
    warnings.warn(
        f"sampled-negative metrics (target vs {n_negatives} random items) are NOT comparable with "
        "full-ranking numbers: they inflate HR/NDCG several-fold. Report them only with this caveat.",
        stacklevel=3,
    )
