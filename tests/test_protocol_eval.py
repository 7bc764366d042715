"""Protocols (filter, truncate, leave-one-out) and full-ranking evaluation with history masking."""

import numpy as np
import pytest
import torch

from linkedout.data.batches import PAD, TrainWindows, padded_windows, ragged_positions
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, get_protocol, split
from linkedout.models.base import Recommender
from linkedout.train.evaluate import evaluate, rank_targets
from linkedout.train.metrics import target_ranks


def log(rows):
    users, items, ts = zip(*rows, strict=True)
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(ts))


class FixedScores(Recommender):
    """Scores every item by a fixed vector, whatever the history."""

    trainable = False

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.n_items = len(scores)

    def score_all_items(self, history, users=None):
        return self.scores[None].expand(history.shape[0], -1).clone()


def test_order_is_time_then_item_id_whatever_the_row_order():
    a = log([(1, 30, 5), (1, 10, 5), (1, 20, 1), (2, 10, 0)])
    b = log([(2, 10, 0), (1, 20, 1), (1, 10, 5), (1, 30, 5)])
    for data in (a, b):
        assert data.item_ids[data.sequence(0)].tolist() == [20, 10, 30]
        assert data.item_ids[data.sequence(1)].tolist() == [10]


def test_leave_one_out_split_positions():
    data = log([(1, i, t) for t, i in enumerate([5, 6, 7, 8])] + [(2, 9, 0), (2, 5, 1)])
    s = split(data, Protocol("t"))
    items = s.data.item_ids[s.data.items]
    u1 = 0
    assert items[s.data.offsets[u1] : s.train_end[u1]].tolist() == [5, 6]
    assert s.valid.users.tolist() == [0]  # user 2 has 2 events: training only
    assert s.data.item_ids[s.valid.targets].tolist() == [7]
    assert s.data.item_ids[s.test.targets].tolist() == [8]
    assert items[s.data.offsets[u1] : s.test.history_end[0]].tolist() == [5, 6, 7]
    assert s.train_end[1] == s.data.offsets[2]  # the short user keeps everything for training


def test_microlens_preset_filters_then_keeps_last_13():
    rows = [(1, i, i) for i in range(20)] + [(2, i, i) for i in range(4)] + [(3, i, i) for i in range(5)]
    s = split(log(rows), get_protocol("microlens"))
    assert s.data.user_ids.tolist() == [1, 3]  # user 2 has < 5 interactions
    assert s.data.lengths().tolist() == [13, 5]
    assert s.data.item_ids[s.data.sequence(0)].tolist() == list(range(7, 20))
    p = get_protocol("microlens")
    assert p.mask_history and p.max_seq_len == 10 and p.ks == (10, 20)
    assert not get_protocol("recbole").mask_history and get_protocol("recbole").max_seq_len == 50


def test_k_core_reaches_a_fixed_point():
    # item 99 is rare; removing it drops user 3 below the threshold, which must then go too
    rows = [(u, i, i) for u in (1, 2) for i in range(3)] + [(3, 0, 0), (3, 1, 1), (3, 99, 2)]
    once = split(log(rows), Protocol("x", min_user_interactions=3, min_item_interactions=2))
    assert 3 in once.data.user_ids.tolist()
    core = split(log(rows), Protocol("x", min_user_interactions=3, min_item_interactions=2, k_core=True))
    assert core.data.user_ids.tolist() == [1, 2]
    assert (core.data.lengths() >= 3).all() and (core.data.item_counts() >= 2).all()


def test_protocol_override_is_named():
    p = get_protocol("recbole", max_seq_len=20)
    assert p.name == "recbole[max_seq_len=20]" and p.max_seq_len == 20
    assert "history NOT masked" in p.describe()
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("nope")


def test_masking_hand_computed():
    # user sequence: items 0, 1, 2, 3 -> test target = 3, history = 0, 1, 2
    data = log([(1, i, i) for i in range(4)] + [(2, 4, 0), (2, 5, 1), (2, 0, 2)])
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]  # item 3 is 4th best
    model = FixedScores(scores)
    unmasked = split(data, Protocol("u", mask_history=False))
    masked = split(data, Protocol("m", mask_history=True))
    ranks_u = rank_targets(model, unmasked, unmasked.test)
    ranks_m = rank_targets(model, masked, masked.test)
    assert ranks_u.tolist() == [3, 0]  # user 2's target is item 0, the top item
    assert ranks_m.tolist() == [0, 0]  # items 0, 1, 2 seen by user 1 are removed
    m = evaluate(model, masked, "test")
    assert m["HR@10"] == 1.0 and m["NDCG@10"] == 1.0


def test_batched_evaluation_equals_a_per_user_loop():
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(40) for t, i in enumerate(rng.choice(30, size=rng.integers(3, 12)))]
    s = split(log(rows), Protocol("m", mask_history=True, max_seq_len=5))

    class LastItem(Recommender):
        trainable = False
        n_items = s.n_items

        def score_all_items(self, history, users=None):
            w = torch.arange(s.n_items, dtype=torch.float32)
            return torch.cos(w[None] * (history[:, -1:].float() + 1))

    model = LastItem()
    fast = rank_targets(model, s, s.test, batch_size=7)
    slow = []
    for u, end, target in zip(s.test.users, s.test.history_end, s.test.targets, strict=True):
        seq = s.data.items[s.data.offsets[u] : end]
        h = torch.tensor([[PAD] * max(0, 5 - len(seq)) + seq[-5:].tolist()])
        scores = model.score_all_items(h)
        scores[0, torch.as_tensor(seq, dtype=torch.long)] = float("-inf")
        slow.append(target_ranks(scores, torch.tensor([target])).item())
    assert fast.tolist() == slow


def test_sampled_metrics_warn():
    data = log([(1, i, i) for i in range(6)])
    s = split(data, Protocol("s", sampled_negatives=3))
    with pytest.warns(UserWarning, match="NOT comparable"):
        evaluate(FixedScores([0.0] * 6), s, "test")


def test_padded_windows_and_ragged_positions():
    items = np.arange(10)
    out = padded_windows(items, np.array([0, 5, 8]), np.array([3, 10, 8]), 4)
    assert out.tolist() == [[PAD, 0, 1, 2], [6, 7, 8, 9], [PAD] * 4]
    rows, index = ragged_positions(np.array([2, 7]), np.array([4, 10]))
    assert rows.tolist() == [0, 0, 1, 1, 1] and index.tolist() == [2, 3, 7, 8, 9]


@pytest.mark.parametrize("jitter", [False, True])
def test_training_windows_cover_every_target(jitter):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 40, size=50)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    tw = TrainWindows(starts, ends, 6)
    w_start, w_end = tw.sample(rng if jitter else None)
    covered = np.zeros(ends[-1], dtype=int)
    for s, e in zip(w_start, w_end, strict=True):
        inputs, targets = tw.batch(np.arange(ends[-1]), np.array([s]), np.array([e]))
        valid = (inputs[0] != PAD) & (targets[0] != PAD)
        covered[targets[0][valid]] += 1
        assert (targets[0][valid] > s).all()  # a target never precedes its own history
    expected = np.ones(ends[-1], dtype=int)
    expected[starts] = 0  # a user's first event has no history to predict it from
    assert ((covered >= 1) == (expected == 1)).all()
    if not jitter:
        assert (covered == expected).all()  # without jitter, exactly once


def test_training_windows_and_evaluation_name_the_same_users():
    """Every family reads users from the same two places: `TrainBatch.users` (from `Split.train_users`)
    and the ``users`` argument of `score_all_items`; both are indices into ``split.data``'s users, also
    under a cold-start protocol that drops users with no training events."""
    from linkedout.config import TrainConfig
    from linkedout.models.base import TrainBatch
    from linkedout.train.trainer import train

    rng = np.random.default_rng(1)
    rows = [(u, int(i), t) for u in range(30) for t, i in enumerate(rng.choice(40, size=rng.integers(3, 9)))]
    rows += [(99, 39, 0), (99, 38, 1), (99, 37, 2), (99, 36, 3), (99, 35, 4)]
    base = split(log(rows), Protocol("m", max_seq_len=4))
    # a cold-start split where some user has no training event left (its sequence disappears)
    s = next(
        c
        for seed in range(200)
        if len((c := base.with_cold_items(0.3, seed=seed)).train_users()) < base.data.n_users
    )
    items, starts, ends = s.train_sequences()
    users = s.train_users()
    assert len(users) == len(starts) < s.data.n_users
    for u, a, b in zip(users, starts, ends, strict=True):
        full = s.data.items[s.data.offsets[u] : s.train_end[u]]
        assert set(items[a:b].tolist()) <= set(full.tolist())  # a user's training events are its own

    seen: list[tuple[int, list[int]]] = []

    class Recorder(Recommender):
        n_items = s.n_items

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, batch: TrainBatch):
            for u, row in zip(batch.users.tolist(), batch.targets.tolist(), strict=True):
                seen.append((u, [x for x in row if x != PAD]))
            return self.w.sum() * 0 + self.w.square().sum()

        def score_all_items(self, history, users=None):
            assert users is not None and len(users) == len(history)
            return torch.zeros(len(history), s.n_items)

    train(Recorder(), s, TrainConfig(epochs=1, patience=1, batch_size=5), progress=False)
    assert seen
    for u, targets in seen:
        train_part = s.data.items[s.data.offsets[u] : s.train_end[u]].tolist()
        assert set(targets) <= set(train_part), (u, targets)
