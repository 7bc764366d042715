"""Distributed (DDP, gloo) training: sharding, equivalence with one process, the CLI run, a killed worker.

Slow-ish: every multi-process test starts python + torch in two workers (~10-30 s on a busy machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.config import ModelConfig, TrainConfig
from linkedout.data.batches import TrainWindows
from linkedout.data.protocol import Split, get_protocol, split
from linkedout.train.distributed import World, join_world, shard_epoch
from linkedout.train.run import DatasetSpec, build_for_split
from linkedout.train.trainer import seed_everything, train

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LEN = 4


def write_log(path: Path, n_users: int = 24, n_items: int = 30, seed: int = 0) -> Path:
    """A tiny atomic log: users of different lengths (so ranks hold different numbers of targets)
    walking mostly forward through the items (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(int(rng.integers(5, 14))):
            item = (start + t + int(rng.integers(0, 2))) % n_items
            lines.append(f"u{u}\ti{item}\t{t}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_split(path: Path) -> Split:
    return split(DatasetSpec(str(path)).load().interactions, get_protocol("recbole", max_seq_len=MAX_LEN))


def tiny_model(data: Split):
    seed_everything(0)
    config = ModelConfig(name="sasrec", dim=16, blocks=1, heads=1, dropout=0.0)
    return build_for_split(config, data)[0]


# one epoch of global steps of 8 windows, no jitter: the window count is fixed, see the test
STEP_CONFIG = TrainConfig(lr=1e-2, batch_size=8, epochs=1, jitter=False, precision="fp32", seed=3)


def test_shard_epoch_gives_every_rank_the_same_steps_and_the_union_is_the_global_batch():
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 50, 23)
    ends = starts + rng.integers(2, 12, 23)
    shards = [shard_epoch(starts, ends, 5, 6, World(r, 3, r, "cpu")) for r in range(3)]
    assert {s.steps for s in shards} == {4} and {len(s.w_end) for s in shards} == {8}  # 23 -> 24 padded
    padded = np.arange(24) % 23  # the first window repeats to fill the last rank's slot
    for step in range(4):
        union = np.sort(np.concatenate([s.w_end[step * 2 : step * 2 + 2] for s in shards]))
        assert np.array_equal(union, np.sort(ends[padded[step * 6 : step * 6 + 6]]))
        weights = [s.step_weights[step] for s in shards]
        # the ranks' weights average to 1 (DDP divides by N) and follow their target counts
        assert sum(weights) == pytest.approx(3.0)
        counts = [np.minimum(s.w_end - s.w_start, 6)[step * 2 : step * 2 + 2].sum() - 2 for s in shards]
        assert weights == pytest.approx([3 * c / sum(counts) for c in counts])
    with pytest.raises(ValueError, match="multiple of 3"):
        shard_epoch(starts, ends, 5, 8, World(0, 3, 0, "cpu"))


def _train_rank(rank: int, world_size: int, port: int, log: Path, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    world = join_world("cpu", timeout=120)
    try:
        data = tiny_split(log)
        model = tiny_model(data)
        train(model, data, STEP_CONFIG, progress=False, world=world)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_with_half_batches_take_the_same_steps_as_one_process_on_the_union(tmp_path):
    from torch.multiprocessing import spawn

    from linkedout.train.distributed import free_port

    log = write_log(tmp_path / "tiny.inter")
    data = tiny_split(log)
    _, starts, ends = data.train_sequences()
    w_start, w_end = TrainWindows(starts, ends, MAX_LEN).sample(None)
    assert len(w_end) == 52  # 7 global steps of 8 (the last of 4); even: no padding, so equality is due
    # the ranks hold different numbers of targets at some step: the loss weighting is exercised
    shard = shard_epoch(w_start, w_end, MAX_LEN, 8, World(0, 2, 0, "cpu"))
    assert not np.allclose(shard.step_weights, 1.0)

    reference = tiny_model(data)
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    train(reference, data, STEP_CONFIG, progress=False)

    out = tmp_path / "ddp.pt"
    spawn(_train_rank, args=(2, free_port(), log, out), nprocs=2)
    distributed = torch.load(out)
    moved = 0
    for name, value in reference.state_dict().items():
        got = distributed[name]
        if name.endswith("attn.qkv.bias"):
            # The key bias has a true gradient of exactly zero (a query's softmax ignores a constant
            # added to all its logits), so its gradient is rounding noise, and AdamW's g / sqrt(v)
            # turns noise of either sign into steps of up to lr: only that bound holds there.
            dim = value.shape[0] // 3
            key = slice(dim, 2 * dim)
            assert (got[key] - value[key]).abs().max() <= STEP_CONFIG.lr * 7
            got, value = got.clone(), value.clone()
            got[key] = value[key] = 0
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(reference.state_dict()[name], initial[name])
    assert moved >= 5  # the step did change the weights: equality is not two untouched models


@pytest.mark.slow
def test_train_nproc_2_writes_a_run_that_evaluate_rescores(tmp_path):
    log = write_log(tmp_path / "tiny.inter")
    run_dir, out = tmp_path / "run", tmp_path / "r.json"
    args = ["train", "--dataset", str(log), "--model", "sasrec", "--nproc", "2", "--epochs", "3"]
    args += ["--dim", "16", "--batch-size", "8", "--run-dir", str(run_dir), "--json", str(out), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert row["world_size"] == 2 and row["train_config"]["batch_size"] == 8
    assert 1 <= row["best_epoch"] <= 3 and len(row["history"]) >= 1
    assert json.loads((run_dir / "run.json").read_text())["metrics"] == row["metrics"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.safetensors", "run.json"]  # written once

    again = tmp_path / "again.json"
    result = CliRunner().invoke(app, ["evaluate", "--run", str(run_dir), "--json", str(again)])
    assert result.exit_code == 0, result.output
    assert json.loads(again.read_text())["metrics"] == pytest.approx(row["metrics"])


def test_nproc_must_split_the_global_batch(tmp_path):
    log = write_log(tmp_path / "tiny.inter")
    args = ["train", "--dataset", str(log), "--nproc", "3", "--batch-size", "8", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "multiple of 3" in result.output


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers through /proc")
def test_a_killed_worker_fails_the_run_with_a_clear_error(tmp_path):
    log = write_log(tmp_path / "tiny.inter")
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "linkedout.train", "--dataset", str(log), "--nproc", "2", "-q"]
    args += ["--dim", "16", "--batch-size", "8", "--epochs", "100000", "--patience", "100000"]
    args += ["--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    launcher = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        # rank 0 checkpoints after its first epoch: from then on both workers are inside training
        while not (run_dir / "model.safetensors").exists():
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        workers = sorted(p for p in _children(launcher.pid) if "spawn_main" in _cmdline(p))
        assert len(workers) == 2, [_cmdline(p) for p in _children(launcher.pid)]
        os.kill(workers[-1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, stderr
    assert "error: training worker rank" in stderr and "killed by signal SIGKILL" in stderr, stderr
    assert time.monotonic() - killed_at < 60  # stopped promptly, not after a collective's timeout
    assert not any(Path(f"/proc/{p}").exists() and "spawn_main" in _cmdline(p) for p in workers)
