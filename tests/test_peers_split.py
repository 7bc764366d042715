"""benchmarks/peers.py: a file in linkedout's order gives RecBole's ordering rule linkedout's split, the
per-user split comparison catches every kind of difference, and `linkedout train --mask-history`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.data.formats import load_interactions, write_atomic
from linkedout.data.interactions import Interactions

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import peers  # noqa: E402  (benchmarks/ is not a package)


def recbole_order(users: np.ndarray, items: np.ndarray, seconds: np.ndarray) -> dict[int, list[int]]:
    """RecBole 1.2.1's rule, written out: min-max normalise the timestamps (float64), store them as
    float32, stable-sort all rows by that value, then read each user's rows in the sorted order."""
    t = seconds.astype(np.float64)
    key = ((t - t.min()) / (t.max() - t.min())).astype(np.float32)
    order = np.argsort(key, kind="stable")
    out: dict[int, list[int]] = {}
    for row in order.tolist():
        out.setdefault(int(users[row]), []).append(int(items[row]))
    return out


def tied_log(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MovieLens-like seconds (~8.9e8, a span of ~2e7 s): many exact ties inside a user, and
    neighbours 1 s apart that float32 normalisation merges."""
    rng = np.random.default_rng(seed)
    users, items, seconds = [], [], []
    for user in range(40):
        base = 874_724_710 + int(rng.integers(0, 18_000_000))
        picked = rng.choice(500, size=30, replace=False)
        offsets = np.sort(rng.choice([0, 0, 0, 1, 2, 3600], size=30).cumsum())
        users += [user] * 30
        items += picked.tolist()
        seconds += (base + offsets).tolist()
    # the span that fixes the normalisation: the first and last second of the log
    users += [99, 99]
    items += [0, 1]
    seconds += [874_724_710, 893_286_638]
    return np.array(users), np.array(items), np.array(seconds, dtype=np.int64)


def test_the_file_in_linkedouts_order_gives_recboles_rule_linkedouts_order(tmp_path):
    users, items, seconds = tied_log()
    shuffled = np.random.default_rng(1).permutation(len(users))
    data = Interactions.from_arrays(users[shuffled], items[shuffled], seconds[shuffled])
    merges = peers.float32_merges(data)
    # the log has both hazards, or this test shows nothing
    assert merges["same_user_equal_timestamps"] > 50
    assert merges["normalised"]["distinct_seconds_merged"] > 5

    path = write_atomic(data, tmp_path / "lo", "lo")
    back = load_interactions(path, format="atomic").interactions
    text = np.loadtxt(path, skiprows=1, dtype=np.int64)
    theirs = recbole_order(text[:, 0], text[:, 1], text[:, 2])
    ours = {int(back.user_ids[u]): back.item_ids[back.sequence(u)].tolist() for u in range(back.n_users)}
    assert theirs == ours

    # the same rule on the shuffled row order does not give linkedout's order (ties keep file order)
    raw = recbole_order(users[shuffled], items[shuffled], seconds[shuffled])
    assert sum(raw[u] != ours[u] for u in ours) > 10


def test_compare_splits_catches_each_difference():
    ours = {"1": {"train": ["a", "b", "c"], "valid": "d", "test": "e"}}

    def peer(kind: str, **user) -> dict:
        return {
            "train_kind": kind,
            "users": {"1": {"train": ["a", "b", "c"], "valid": "d", "test": "e", **user}},
        }

    assert peers.compare_splits(ours, peer("sequence"))["identical"]
    swapped = peers.compare_splits(ours, peer("sequence", train=["b", "a", "c"]))
    assert swapped["train_differs"] == 1 and not swapped["identical"]
    # a peer that keeps no order (a CSR matrix) is compared as a multiset
    assert peers.compare_splits(ours, peer("set", train=["c", "a", "b"]))["identical"]
    assert peers.compare_splits(ours, peer("sequence", valid="e", test="d"))["valid_differs"] == 1
    assert peers.compare_splits(ours, peer("sequence", test="x"))["test_differs"] == 1
    missing = peers.compare_splits(ours, {"train_kind": "sequence", "users": {}})
    assert missing["missing_on_peer"] == 1 and not missing["identical"]

    # RecBole's sequential rows: targets are train[1:], histories cut to the last `history_len` items
    seq = {
        "train": ["b", "c"],
        "valid": "d",
        "test": "e",
        "valid_history": ["b", "c"],
        "test_history": ["c", "d"],
    }
    theirs = {"train_kind": "targets", "history_len": 2, "users": {"1": seq}}
    assert peers.compare_splits(ours, theirs)["identical"]
    theirs["users"]["1"] = {**seq, "test_history": ["b", "c"]}  # history before the valid item: wrong
    assert peers.compare_splits(ours, theirs)["history_differs"] == 1


@pytest.fixture
def popular_history_log(tmp_path) -> Path:
    """12 users who watched the 10 popular items, then an unseen item (valid), then item 21 (test);
    one more user (50) trained on item 21. Unmasked, item 21 ranks 11th by popularity; with the
    user's history masked it ranks first."""
    rows = []
    for user in range(1, 13):
        rows += [(user, item, item) for item in range(1, 11)]
        rows += [(user, 100 + user, 20), (user, 21, 21)]
    rows += [(50, 21, 0), (50, 1, 1), (50, 2, 2), (50, 3, 3), (50, 4, 4)]
    path = tmp_path / "pop.inter"
    path.write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows)
    )
    return path


def test_train_mask_history_flag_masks_the_users_history(popular_history_log, tmp_path):
    runner = CliRunner()
    rows = {}
    for flag in ("--no-mask-history", "--mask-history"):
        out = tmp_path / f"{flag}.json"
        args = [
            "train",
            "--dataset",
            str(popular_history_log),
            "--model",
            "pop",
            "--json",
            str(out),
            "-q",
            flag,
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        rows[flag] = json.loads(out.read_text())
    assert rows["--mask-history"]["protocol"]["mask_history"] is True
    assert rows["--mask-history"]["protocol"]["name"] == "recbole[mask_history=True]"
    assert rows["--no-mask-history"]["protocol"]["mask_history"] is False
    # user 50's test item (4) is popular either way; the 12 others hit only once their history is masked
    assert rows["--no-mask-history"]["metrics"]["HR@10"] == pytest.approx(1 / 13)
    assert rows["--mask-history"]["metrics"]["HR@10"] == pytest.approx(1.0)
