"""Ray Train as the launcher of a distributed run: ``linkedout train ... --nproc N --launcher ray
[--ray-address ADDR]``.

Ray Train's `TorchTrainer` places N workers where the cluster has room (one GPU each with
``--device cuda``), forms their torch process group (gloo on CPU, nccl on CUDA) and runs `_worker` on
each. A worker runs the same `run_experiment` as a ``--nproc`` or torchrun rank (one training path; see
linkedout.train.distributed for what a rank does), given a `World` that describes the group Ray
formed instead of forming one itself. Rank 0's `RunResult` comes back as the checkpoint of its
``ray.train.report`` (every rank reports once, as Ray requires).

``--run-dir`` is written by rank 0 wherever Ray placed it: on a multi-node cluster it must be a
directory every node sees (a shared file system), as must the dataset path. The log is loaded by
every worker itself (deterministic split, nothing shipped through Ray's object store).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linkedout.train.distributed import (
    DistributedRunError,
    World,
    last_line,
    per_rank_batch,
    timeout_seconds,
)

if TYPE_CHECKING:
    from linkedout.config import ModelConfig, TrainConfig
    from linkedout.data.protocol import Protocol
    from linkedout.train.run import DatasetSpec, RunResult

RAY_TRAIN_HINT = "pip install -e '.[ray]'"
RESULT = "run_result.json"
STORAGE_ENV = "LINKEDOUT_RAY_STORAGE"


def launch_ray(
    nproc: int,
    spec: DatasetSpec,
    protocol: Protocol,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    address: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> RunResult:
    """Train with ``nproc`` Ray Train workers on the cluster at ``address`` (None: a local Ray started
    for this run, or the one this process is already connected to); returns rank 0's `RunResult`.
    Raises ValueError when the cluster cannot be reached or lacks the resources, `DistributedRunError`
    when a worker fails."""
    from linkedout.raycluster import connected
    from linkedout.train.run import RunResult

    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as e:
        raise DistributedRunError(
            f"--launcher ray needs Ray Train ({e}); install it with: {RAY_TRAIN_HINT}"
        ) from None
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    per_rank_batch(train_config.batch_size, nproc)  # fail here, not in N workers
    use_gpu = train_config.device.startswith("cuda")
    with connected(ray, address, runtime_env, ValueError):  # a bad address is the user's input: exit 2
        resources = ray.cluster_resources()
        kind = "GPU" if use_gpu else "CPU"
        have = resources.get(kind, 0.0)
        if have < nproc:  # Ray would wait for them for ever
            raise ValueError(f"--nproc {nproc} needs {nproc} {kind}(s) on the Ray cluster, it has {have:g}")
        config = {
            "spec": spec,
            "protocol": protocol,
            "model_config": model_config,
            "train_config": train_config,
            "run_dir": None if run_dir is None else str(Path(run_dir).resolve()),
            "progress": progress,
        }
        # Ray keeps the run (rank 0's result checkpoint) here; a multi-node cluster needs a path
        # every node can write: LINKEDOUT_RAY_STORAGE (a shared directory or a cloud URI)
        with tempfile.TemporaryDirectory(prefix="linkedout-ray-train-") as tmp_storage:
            storage = os.environ.get(STORAGE_ENV) or tmp_storage
            trainer = TorchTrainer(
                _worker,
                train_loop_config=config,
                scaling_config=ScalingConfig(num_workers=nproc, use_gpu=use_gpu),
                torch_config=TorchConfig(
                    backend="nccl" if use_gpu else "gloo", timeout_s=int(timeout_seconds())
                ),
                run_config=RunConfig(storage_path=storage, name="linkedout-train"),
            )
            try:
                result = trainer.fit()
            except Exception as e:  # Ray wraps a worker's exception (TrainingFailedError and kin)
                raise DistributedRunError(f"Ray Train run failed: {_cause(e)}") from None
            if getattr(result, "error", None) is not None:
                raise DistributedRunError(f"Ray Train run failed: {_cause(result.error)}")
            if result.checkpoint is None:
                raise DistributedRunError("Ray Train run ended without rank 0's result")
            with result.checkpoint.as_directory() as done:
                return RunResult(**json.loads((Path(done) / RESULT).read_text()))


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: a rank of the group Ray formed, running the ordinary training path."""
    import ray.train
    import torch

    from linkedout.train.run import run_experiment

    ctx = ray.train.get_context()
    train_config = config["train_config"]
    device = "cpu"
    if train_config.device.startswith("cuda"):
        device = str(ray.train.torch.get_device())  # the GPU Ray gave this worker
        torch.cuda.set_device(device)
    world = World(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), device)
    run_dir = None if config["run_dir"] is None else Path(config["run_dir"])
    result = run_experiment(
        config["spec"],
        config["protocol"],
        config["model_config"],
        replace(train_config, device=device),
        run_dir=run_dir,
        progress=config["progress"] and world.is_main,
        world=world,
    )
    # every rank reports once (Ray synchronises on it); rank 0's checkpoint carries the result, which
    # Ray copies to the run's storage where the driver reads it (on a cluster: shared storage)
    with tempfile.TemporaryDirectory(prefix="linkedout-result-") as tmp:
        checkpoint = None
        if world.is_main:
            (Path(tmp) / RESULT).write_text(json.dumps(result.to_json()))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"rank": world.rank}, checkpoint=checkpoint)


def _cause(e: BaseException) -> str:
    """The innermost exception's line: what failed in the worker, not Ray's wrapping."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {last_line(str(e))}"
