"""Sharded logs (linkedout/data/shards.py): the streamed split and windows equal the in-RAM ones, the
stream holds at most two shards, `linkedout shard` / `train --dataset DIR` end to end, bad input."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.data.batches import TrainWindows
from linkedout.data.formats import load_interactions
from linkedout.data.protocol import get_protocol, split
from linkedout.data.shards import ShardedLog, is_sharded_log, shard_log
from linkedout.synthetic import synthetic_log

RECBOLE = get_protocol("recbole", max_seq_len=6)


def write_log(path, n_events=3000, n_users=120, seed=0, string_users=False):
    """A log with ties in time (the item-id tie-break matters), sparse raw item ids, rows shuffled."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events) * 7 + 3
    items = rng.choice(np.arange(5, 5000, 13), n_events)
    times = rng.integers(0, 400, n_events)  # many ties inside a user
    users_col = pa.array([f"u{u:04d}" for u in users]) if string_users else pa.array(users)
    pq.write_table(pa.table({"user_id": users_col, "item_id": items, "timestamp": times}), path)
    return path


def raw_user_of_global_index(log: ShardedLog) -> np.ndarray:
    return np.concatenate([log.read_shard(k).user_ids for k in range(log.n_shards)])


@pytest.mark.parametrize("string_users", [False, True])
def test_sharded_split_gives_every_user_the_in_ram_split(tmp_path, string_users):
    path = write_log(tmp_path / "log.parquet", string_users=string_users)
    log = shard_log(path, tmp_path / "shards", 4)
    whole = split(load_interactions(path).interactions, RECBOLE)
    assert log.n_events == whole.data.n_events and log.n_users == whole.data.n_users
    np.testing.assert_array_equal(log.item_ids, whole.data.item_ids)  # same item indices
    np.testing.assert_array_equal(log.train_counts, whole.train_item_counts())  # logQ reads these

    row = whole.data.user_index()
    seen = 0
    for k in range(log.n_shards):
        part = log.split_shard(k, RECBOLE)
        assert part.data.n_users > 0
        for u, uid in enumerate(part.data.user_ids.tolist()):
            w = row[uid]
            np.testing.assert_array_equal(
                part.data.items[part.data.offsets[u] : part.train_end[u]],
                whole.data.items[whole.data.offsets[w] : whole.train_end[w]],
            )
        for which in ("valid", "test"):
            mine, theirs = getattr(part, which), getattr(whole, which)
            by_user = dict(
                zip(whole.data.user_ids[theirs.users].tolist(), theirs.targets.tolist(), strict=True)
            )
            assert dict(zip(part.data.user_ids[mine.users].tolist(), mine.targets.tolist(), strict=True)) == {
                u: by_user[u] for u in part.data.user_ids[mine.users].tolist()
            }
        seen += part.data.n_users
    assert seen == whole.data.n_users  # every user in exactly one shard


def test_a_csv_log_shards_like_its_in_ram_load(tmp_path):
    import pyarrow.csv as pcsv

    table = pq.read_table(write_log(tmp_path / "log.parquet", n_events=800))
    path = tmp_path / "log.csv"
    pcsv.write_csv(table.drop_columns(["timestamp"]), path)  # no time column: the row order is time
    log = shard_log(path, tmp_path / "shards", 3, batch_rows=100)  # several record batches
    whole = split(load_interactions(path).interactions, RECBOLE)
    np.testing.assert_array_equal(log.item_ids, whole.data.item_ids)
    np.testing.assert_array_equal(log.train_counts, whole.train_item_counts())
    assert log.n_events == 800 and log.manifest["source"] == {"log": str(path)}


def test_streamed_windows_are_the_in_ram_windows(tmp_path):
    path = write_log(tmp_path / "log.parquet", n_events=4000)
    log = shard_log(path, tmp_path / "shards", 3)
    whole = split(load_interactions(path).interactions, RECBOLE)
    items, starts, ends = whole.train_sequences()
    windows = TrainWindows(starts, ends, RECBOLE.max_seq_len)
    w_start, w_end = windows.sample(None)
    inputs, targets = windows.batch(items, w_start, w_end)
    users = whole.data.user_ids[np.searchsorted(starts, w_start, side="right") - 1]
    expected = Counter(
        zip(users.tolist(), map(tuple, inputs.tolist()), map(tuple, targets.tolist()), strict=True)
    )

    raw_user = raw_user_of_global_index(log)
    got: Counter = Counter()
    sizes = []
    for b_inputs, b_targets, b_users in log.stream(RECBOLE).epoch(None, 32, jitter=False):
        sizes.append(len(b_users))
        rows = zip(
            raw_user[b_users].tolist(),
            map(tuple, b_inputs.tolist()),
            map(tuple, b_targets.tolist()),
            strict=True,
        )
        got.update(rows)
    assert got == expected
    assert all(s == 32 for s in sizes[:-1])  # batches straddle shards: only the last is short


def test_shuffled_epochs_cover_every_window_once_and_differ(tmp_path):
    log = synthetic_log(tmp_path / "syn", 6000, n_items=300, events_per_shard=1000)
    stream = log.stream(RECBOLE)

    def epoch(seed):
        return [b for b in stream.epoch(np.random.default_rng(seed), 16, jitter=False)]

    first, again, other = epoch(0), epoch(0), epoch(1)
    key = lambda bs: Counter(  # noqa: E731
        (u, tuple(t)) for _, t_, us in bs for u, t in zip(us.tolist(), t_.tolist(), strict=True)
    )
    assert key(first) == key(other)  # the same windows...
    assert not np.array_equal(first[0][1], other[0][1])  # ...in another order
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))  # seeded


def test_stream_holds_at_most_two_shards(tmp_path):
    log = synthetic_log(tmp_path / "syn", 8000, n_items=200, events_per_shard=1000)
    assert log.n_shards == 8
    stream = log.stream(RECBOLE)
    steps = sum(1 for _ in stream.epoch(np.random.default_rng(0), 64))
    assert steps > 8 and stream.shards_loaded == 8
    assert 1 <= stream.peak_resident <= 2  # the shard training + the one prefetching
    assert stream.resident == 0
    # the accounting counts what is held: keeping every shard shows up in it
    held = list(log.stream(RECBOLE)._shards(list(range(8))))
    assert held[0] is not None and held[-1] is not None
    counting = log.stream(RECBOLE)
    kept = list(counting._shards(list(range(8))))
    assert counting.peak_resident == 8 and len(kept) == 8


def test_eval_split_is_a_seeded_sample_read_from_few_shards(tmp_path, monkeypatch):
    log = synthetic_log(tmp_path / "syn", 20_000, n_items=500, events_per_shard=2000)
    assert log.n_shards == 10 and log.n_users / log.n_shards > 75  # ~100 users a shard
    reads = []
    read_shard = ShardedLog.read_shard
    monkeypatch.setattr(ShardedLog, "read_shard", lambda self, k: reads.append(k) or read_shard(self, k))
    sample = log.eval_split(RECBOLE, 150, seed=3)
    assert len(sample.test) == len(sample.valid) == 150
    assert len(reads) == 2  # 150 users need two shards of ~100, not the log
    again = log.eval_split(RECBOLE, 150, seed=3)
    np.testing.assert_array_equal(sample.data.user_ids, again.data.user_ids)
    assert not np.array_equal(log.eval_split(RECBOLE, 150, seed=4).data.user_ids, sample.data.user_ids)
    everyone = log.eval_split(RECBOLE, None)
    lengths = np.concatenate([log.read_shard(k).lengths() for k in range(log.n_shards)])
    assert len(everyone.test) == int((lengths >= 3).sum())


def test_synthetic_log_is_labelled_skewed_and_sessioned(tmp_path):
    log = synthetic_log(tmp_path / "syn", 50_000, n_items=2000, events_per_shard=20_000, seed=1)
    assert log.n_events == 50_000 and log.n_shards == 3
    assert "SYNTHETIC" in log.manifest["source"]
    items = np.concatenate([log.read_shard(k).items for k in range(log.n_shards)])
    counts = np.sort(np.bincount(items, minlength=2000))[::-1]
    assert counts[:20].sum() > 0.1 * len(items)  # the top 1% of items: > 10% of events (Zipf)
    # sessions: most gaps are minutes (inside a session), the rest days (between sessions) ...
    shard = log.read_shard(0)
    same_user = np.diff(np.repeat(np.arange(shard.n_users), shard.lengths())) == 0
    gaps = np.diff(shard.timestamps)[same_user]
    assert 0.7 < (gaps < 3600).mean() < 0.9  # 1 - 1 / mean_session_events, and a tail of short gaps
    # ... and an event's successor is near it in popularity rank (the session's neighbourhood)
    rank = np.empty(2000, dtype=np.int64)
    rank[np.argsort(-np.bincount(items, minlength=2000), kind="stable")] = np.arange(2000)
    pairs = np.c_[shard.items[:-1], shard.items[1:]][same_user]
    shuffled = np.random.default_rng(0).permutation(pairs[:, 1])
    assert 2 * np.median(np.abs(rank[pairs[:, 0]] - rank[pairs[:, 1]])) < np.median(
        np.abs(rank[pairs[:, 0]] - rank[shuffled])
    )


def test_train_streams_a_sharded_log_end_to_end(tmp_path):
    path = write_log(tmp_path / "log.csv.parquet", n_events=3000)
    runner = CliRunner()
    shards = tmp_path / "shards"
    result = runner.invoke(app, ["shard", str(path), "--out", str(shards), "--shards", "3"])
    assert result.exit_code == 0, result.output
    assert is_sharded_log(shards) and json.loads(result.output)["shards"] == 3
    out = tmp_path / "r.json"
    args = ["train", "--dataset", str(shards), "--model", "sasrec", "--loss", "inbatch", "--logq"]
    args += ["--epochs", "1", "--eval-users", "50", "--dim", "16", "--precision", "fp32", "--max-len", "10"]
    args += ["--json", str(out), "--run-dir", str(tmp_path / "run"), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert row["data"]["n_events"] == 3000 and row["data"]["evaluated"]["test_users"] == 50
    assert row["dataset_spec"]["eval_users"] == 50
    epoch = row["history"][0]
    assert epoch["targets"] >= row["data"]["train_targets"]  # every training target, at least once
    assert 0 < epoch["train_seconds"] <= epoch["seconds"]
    assert 0.0 <= row["metrics"]["NDCG@10"] <= 1.0
    again = tmp_path / "again.json"
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "run"), "--json", str(again)])
    assert result.exit_code == 0, result.output
    # the same weights on the same evaluation sample: the same numbers
    assert json.loads(again.read_text())["metrics"] == pytest.approx(row["metrics"])


def test_bad_input_is_named(tmp_path):
    runner = CliRunner()
    path = write_log(tmp_path / "log.parquet", n_events=300)
    shards = tmp_path / "shards"
    shard_log(path, shards, 2)
    result = runner.invoke(app, ["shard", str(path), "--out", str(shards), "--shards", "2"])
    assert result.exit_code == 2 and "already holds a sharded log" in result.output
    result = runner.invoke(
        app, ["shard", str(path), "--out", str(tmp_path / "x"), "--shards", "2", "--user-col", "who"]
    )
    assert result.exit_code == 2 and "'who'" in result.output
    for args, message in [
        (["--protocol", "microlens"], "min_user_interactions=5"),
        (["--model", "bpr"], "cannot train from a sharded log"),
        (["--nproc", "2"], "one process"),
    ]:
        result = runner.invoke(app, ["train", "--dataset", str(shards), "--epochs", "1", "-q", *args])
        assert result.exit_code == 2 and message in result.output, result.output
    (shards / "manifest.json").unlink()  # an interrupted write
    with pytest.raises(FileNotFoundError, match="interrupted write"):
        ShardedLog.open(shards)
