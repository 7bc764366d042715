"""Ray Train as the launcher of a distributed run (`linkedout train --nproc 2 --launcher ray`): the same
two-rank DDP run as `--launcher local` (same weights after training, same metrics), on a local Ray
instance started by the test; bad launcher options and an unreachable cluster are clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import running_ray
from linkedout.cli import app
from test_distributed import write_log

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.train", reason="Ray Train is not installed (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    with running_ray() as address:
        yield address


def _train(tmp_path: Path, log: Path, name: str, *extra: str) -> dict:
    run_dir, out = tmp_path / f"run-{name}", tmp_path / f"{name}.json"
    args = ["train", "--dataset", str(log), "--model", "sasrec", "--nproc", "2", "--epochs", "3"]
    args += ["--dim", "16", "--batch-size", "8", "--dropout", "0", "--precision", "fp32", "--seed", "5"]
    args += ["--run-dir", str(run_dir), "--json", str(out), "-q", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    row["weights"] = (run_dir / "model.safetensors").read_bytes()
    return row


def test_ray_train_launcher_runs_the_same_two_rank_training_as_the_local_launcher(tmp_path, local_ray):
    from safetensors.torch import load

    log = write_log(tmp_path / "tiny.inter")
    local = _train(tmp_path, log, "local")
    on_ray = _train(tmp_path, log, "ray", "--launcher", "ray")
    assert on_ray["world_size"] == local["world_size"] == 2
    assert on_ray["best_epoch"] == local["best_epoch"]
    assert on_ray["metrics"] == pytest.approx(local["metrics"], rel=1e-4, abs=1e-6)
    losses = [h["loss"] for h in on_ray["history"]]
    assert losses == pytest.approx([h["loss"] for h in local["history"]], rel=1e-4)
    a, b = load(on_ray["weights"]), load(local["weights"])
    assert a.keys() == b.keys()
    for name in a:  # rank 0 wrote the run dir from inside its Ray worker
        assert (a[name] - b[name]).abs().max() <= 1e-4, name


def test_ray_launcher_options_are_checked(tmp_path):
    log = write_log(tmp_path / "tiny.inter")
    base = ["train", "--dataset", str(log), "--nproc", "2", "--batch-size", "8", "-q"]
    bad = CliRunner().invoke(app, [*base, "--launcher", "slurm"])
    assert bad.exit_code == 2 and "--launcher must be local or ray" in bad.output
    stray = CliRunner().invoke(app, [*base, "--ray-address", "auto"])
    assert stray.exit_code == 2 and "--ray-address goes with --launcher ray" in stray.output
    gone = CliRunner().invoke(app, [*base, "--launcher", "ray", "--ray-address", "127.0.0.1:1"])
    assert gone.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in gone.output
