"""Metrics and ranking, checked against numbers computed by hand."""

import math

import numpy as np
import pytest
import torch

from linkedout.train.metrics import metrics_from_ranks, sampled_ranks, target_ranks


def test_metrics_match_hand_computed_values():
    # ranks 0, 1, 4, 12 (0-based) for four users
    m = metrics_from_ranks(np.array([0, 1, 4, 12]), ks=(1, 5, 10), names=("HR", "NDCG", "MRR", "Recall"))
    assert m["HR@1"] == pytest.approx(1 / 4)
    assert m["HR@5"] == pytest.approx(3 / 4)
    assert m["HR@10"] == pytest.approx(3 / 4)
    assert m["Recall@5"] == m["HR@5"]  # one held-out item per user
    assert m["NDCG@1"] == pytest.approx(1 / 4)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics_from_ranks(np.array([0]), ks=(10,), names=("AUC",))


def test_target_rank_counts_better_items():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0]])
    ranks = target_ranks(scores, torch.tensor([2, 0]))
    assert ranks.tolist() == [2, 0]


def test_ties_break_by_item_index_not_in_the_targets_favour():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    # a constant model must not get rank 0 for every target
    assert target_ranks(scores, torch.tensor([0])).item() == 0
    assert target_ranks(scores, torch.tensor([3])).item() == 3


def test_target_ranks_equal_a_sort_based_reference():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (64, 50), generator=g).float()  # many ties on purpose
    targets = torch.randint(0, 50, (64,), generator=g)
    fast = target_ranks(scores, targets)
    for b in range(64):
        # stable descending sort: ties keep index order
        order = sorted(range(50), key=lambda j, row=scores[b]: (-row[j].item(), j))
        assert fast[b].item() == order.index(targets[b].item())


def test_sampled_rank_is_rank_among_negatives_only():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    r = sampled_ranks(scores, torch.tensor([4]), 200, g)
    # every sampled negative (other than the target itself) beats the target
    assert 150 < r.item() <= 200
    r0 = sampled_ranks(scores, torch.tensor([0]), 50, g)
    assert r0.item() == 0
