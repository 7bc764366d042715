"""Full-ranking evaluation, batched: one ``score_all_items`` call per batch of users, history masking
by scatter from the ragged arrays, ranks on the device. No per-user Python loop."""

from __future__ import annotations

import numpy as np
import torch

from linkedout.data.batches import padded_windows, ragged_positions
from linkedout.data.protocol import EvalSet, Split
from linkedout.models.base import Recommender
from linkedout.train.metrics import NEG_INF, metrics_from_ranks, sampled_ranks, target_ranks, warn_sampled


@torch.no_grad()
def rank_targets(
    model: Recommender,
    split: Split,
    eval_set: EvalSet,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    seed: int = 0,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """0-based rank of every held-out target under ``split.protocol``; with ``candidates`` (item
    indices) only those items are ranked, every other item is masked."""
    protocol = split.protocol
    data = split.data
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    if protocol.sampled_negatives:
        warn_sampled(protocol.sampled_negatives)
    ranks = []
    for lo in range(0, len(eval_set), batch_size):
        users = eval_set.users[lo : lo + batch_size]
        ends = eval_set.history_end[lo : lo + batch_size]
        starts = data.offsets[users]
        history = torch.from_numpy(padded_windows(data.items, starts, ends, protocol.max_seq_len)).to(device)
        targets = torch.from_numpy(eval_set.targets[lo : lo + batch_size]).to(device)
        scores = model.score_all_items(history, torch.from_numpy(users).to(device)).float()
        if protocol.mask_history:
            rows, index = ragged_positions(starts, ends)
            seen = torch.from_numpy(data.items[index].astype(np.int64)).to(device)
            scores[torch.from_numpy(rows).to(device), seen] = NEG_INF
        if len(split.excluded_items):
            scores[:, torch.from_numpy(split.excluded_items).to(device)] = NEG_INF
        if candidates is not None:
            keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=device)
            keep[torch.from_numpy(candidates).to(device)] = True
            scores.masked_fill_(~keep, NEG_INF)
        if protocol.sampled_negatives:
            batch_ranks = sampled_ranks(scores, targets, protocol.sampled_negatives, generator)
        else:
            batch_ranks = target_ranks(scores, targets)
        ranks.append(batch_ranks.cpu().numpy())
    model.train(was_training)
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def evaluate(
    model: Recommender,
    split: Split,
    which: str = "test",
    *,
    subset: str = "all",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Metrics named ``"NDCG@10"`` etc. over ``split``'s valid or test events (``subset``: all, warm,
    cold; warm/cold differ from all only under a cold-start protocol). ``cold-among-cold``: the cold
    subset's targets ranked among that split's cold items only - how well content tells new items
    apart, without the warm catalogue's popularity in the way."""
    candidates = None
    if subset == "cold-among-cold":
        subset = "cold"
        candidates = split.cold_valid_items if which == "valid" else split.cold_test_items
    eval_set = split.eval_set(which, subset)
    ranks = rank_targets(model, split, eval_set, batch_size=batch_size, device=device, candidates=candidates)
    return metrics_from_ranks(ranks, split.protocol.ks, split.protocol.metrics)
