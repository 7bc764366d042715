"""FeatureStore: what is written is what is read, one row per item after crashes, clear refusals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from linkedout.backbones.base import ItemTokens, fingerprint
from linkedout.store import FeatureStore, FingerprintMismatchError

SHAPE = (3, 2, 16)
FIELDS = {"backbone": "test", "layers": [1, 2, 3], "prompt": "p"}


def tokens_for(item_id: str, shape: tuple[int, ...] = SHAPE, salt: int = 0) -> np.ndarray:
    seed = int(item_id.lstrip("v")) * 7919 + salt
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


def new_store(path: Path) -> FeatureStore:
    return FeatureStore.create(path, FIELDS, layers=[1, 2, 3], token_kinds=["video", "new"], dim=SHAPE[2])


def fill(store: FeatureStore, ids: list[str], batch: int = 25) -> None:
    for start in range(0, len(ids), batch):
        store.append([ItemTokens(i, tokens_for(i), caption=f"cap {i}") for i in ids[start : start + batch]])


def test_random_reads_return_exactly_what_was_written(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    ids = [f"v{i}" for i in range(200)]
    fill(store, ids)
    rng = random.Random(0)
    for _ in range(5):
        pick = rng.choices(ids, k=37)  # unsorted, with repeats
        got = store.read(pick)
        assert got.shape == (37, *SHAPE) and got.dtype == np.float16
        np.testing.assert_array_equal(got, np.stack([tokens_for(i) for i in pick]))
    assert store.captions(["v3", "v1"]) == ["cap v3", "cap v1"]
    # A fresh handle (another process, later) sees the same thing.
    again = FeatureStore.open(tmp_path / "s", expected_fingerprint=FIELDS)
    np.testing.assert_array_equal(
        again.read(["v199", "v0"]), np.stack([tokens_for("v199"), tokens_for("v0")])
    )
    assert store.read([]).shape == (0, *SHAPE)


def test_read_all_gives_every_item_once_in_one_array(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    ids = [f"v{i}" for i in range(120)]
    fill(store, ids, batch=17)
    got_ids, arr = store.read_all(batch_size=10)  # several scan batches across fragments
    assert got_ids == ids
    np.testing.assert_array_equal(arr, np.stack([tokens_for(i) for i in ids]))
    sub_ids, sub = store.read_all(layers=[2, 0])
    assert sub_ids == ids
    np.testing.assert_array_equal(sub, arr[:, [2, 0]])


def test_last_write_wins_and_compact_drops_shadowed_rows(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    fill(store, [f"v{i}" for i in range(10)])
    store.append([ItemTokens("v3", tokens_for("v3", salt=1), caption="re-extracted")])
    assert store.info()["duplicate_rows"] == 1
    np.testing.assert_array_equal(store.read(["v3"])[0], tokens_for("v3", salt=1))
    ids, arr = store.read_all()
    assert len(ids) == 10 and len(set(ids)) == 10
    np.testing.assert_array_equal(arr[ids.index("v3")], tokens_for("v3", salt=1))
    store.compact()
    info = store.info()
    assert (info["rows"], info["items"], info["duplicate_rows"], info["fragments"]) == (10, 10, 0, 1)
    np.testing.assert_array_equal(store.read(["v3"])[0], tokens_for("v3", salt=1))
    assert store.captions(["v3"]) == ["re-extracted"]


def test_fingerprint_mismatch_is_refused_with_the_differing_field(tmp_path: Path) -> None:
    new_store(tmp_path / "s")
    other = {**FIELDS, "prompt": "another prompt"}
    with pytest.raises(FingerprintMismatchError, match="prompt"):
        FeatureStore.open_or_create(tmp_path / "s", other, [1, 2, 3], ["video", "new"], SHAPE[2])
    with pytest.raises(FingerprintMismatchError):
        FeatureStore.open(tmp_path / "s", expected_fingerprint=fingerprint(other))
    with pytest.raises(FileExistsError):
        new_store(tmp_path / "s")
    # Same settings: resumes the store instead.
    same = FeatureStore.open_or_create(tmp_path / "s", dict(FIELDS), (1, 2, 3), ("video", "new"), SHAPE[2])
    assert same.fingerprint == fingerprint(FIELDS)


def test_failures_are_logged_and_a_later_success_clears_them(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    store.record_failures({"v1": "decode error: moov atom not found", "v2": "no frames"})
    store.record_failures([("v1", "retry failed too")])
    assert store.failed_ids() == {"v1", "v2"}
    fill(store, ["v2"])
    assert store.failed_ids() == {"v1"}
    table = store.failures()
    assert table.num_rows == 3 and set(table.column("fingerprint").to_pylist()) == {store.fingerprint}
    info = store.info()
    assert (info["items"], info["failures"], info["failed_items"]) == (1, 3, 1)
    assert store.done_ids() == {"v2"}


def test_info_reports_counts_shape_and_size(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    assert store.info()["items"] == 0 and store.done_ids() == set()
    assert store.read_all()[1].shape == (0, *SHAPE)
    fill(store, [f"v{i}" for i in range(30)], batch=10)
    info = store.info()
    assert info["shape"] == list(SHAPE) and info["dtype"] == "float16"
    assert (info["items"], info["rows"], info["fragments"]) == (30, 30, 3)
    assert info["fingerprint"] == fingerprint(FIELDS) and info["fingerprint_fields"] == FIELDS
    assert info["bytes_on_disk"] > 30 * np.prod(SHAPE) * 2
    assert info["layer_names"] == ["1", "2", "3"] and info["token_kinds"] == ["video", "new"]


def test_bad_input_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    good = ItemTokens("v1", tokens_for("v1"))
    with pytest.raises(ValueError, match="shape"):
        store.append([good, ItemTokens("v2", np.zeros((3, 2, 8), np.float16))])
    assert store.done_ids() == set()
    fill(store, ["v1"])
    with pytest.raises(KeyError, match="v9"):
        store.read(["v1", "v9"])
    # float32 input is accepted and stored as float16
    store.append([ItemTokens("v5", tokens_for("v5").astype(np.float32))])
    np.testing.assert_array_equal(store.read(["v5"])[0], tokens_for("v5"))


def test_a_second_handle_sees_new_commits_after_refresh(tmp_path: Path) -> None:
    writer = new_store(tmp_path / "s")
    fill(writer, ["v1"])
    reader = FeatureStore.open(tmp_path / "s")
    assert reader.done_ids() == {"v1"}
    fill(writer, ["v2"])
    reader.refresh()
    assert reader.done_ids() == {"v1", "v2"}


# --------------------------------------------------------------------------- crash safety
WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from linkedout.backbones.base import ItemTokens
    from linkedout.store import FeatureStore

    path, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    shape = (4, 4, 256)
    store = FeatureStore.open_or_create(path, {"kill": "test"}, [0, 1, 2, 3], ["a", "b", "c", "d"], 256)
    done = store.done_ids()
    todo = [f"v{i}" for i in range(n) if f"v{i}" not in done]
    for start in range(0, len(todo), batch):
        ids = todo[start : start + batch]
        items = [ItemTokens(i, np.random.default_rng(int(i[1:])).standard_normal(shape).astype(np.float16))
                 for i in ids]
        print("begin", flush=True)
        store.append(items)
        print("committed", flush=True)
    print("finished", flush=True)
    """
)


def test_kill_9_at_random_moments_then_resume_leaves_exactly_one_row_per_item(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path, n, batch = tmp_path / "store", 400, 40
    cmd = [sys.executable, str(script), str(path), str(n), str(batch)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    rng = random.Random(int(time.time()))  # a different moment each run; failures print the seed below
    kills = 0
    for _cycle in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        # Kill shortly after the writer announces a write: lands inside write_dataset most of the time.
        target, seen = rng.randint(1, 3), 0
        for line in proc.stdout:
            seen += line.strip() == "begin"
            if seen >= target or line.strip() == "finished":
                break
        time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert kills >= 1

    store = FeatureStore.open(path)
    info = store.info()
    assert (info["items"], info["rows"], info["duplicate_rows"]) == (n, n, 0), info
    ids, arr = store.read_all()
    assert sorted(ids) == sorted(f"v{i}" for i in range(n))
    expected = {
        i: np.random.default_rng(int(i[1:])).standard_normal((4, 4, 256)).astype(np.float16) for i in ids
    }
    np.testing.assert_array_equal(arr, np.stack([expected[i] for i in ids]))
    # Files orphaned by the kills are removed by cleanup, and the data survive it.
    store.compact(cleanup=True)
    np.testing.assert_array_equal(store.read(ids[:5]), arr[:5])
