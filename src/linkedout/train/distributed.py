"""Data-parallel training over several processes: torch DistributedDataParallel, gloo on CPU, nccl on CUDA.

Two ways in, one code path (`run_experiment(..., world=World)` on every rank):

- ``linkedout train ... --nproc N`` (`launch_local`): spawns N workers on this machine that meet on
  127.0.0.1 at a free port; a worker that dies stops the others and fails the run with its rank and cause.
- ``torchrun --nproc_per_node N [--nnodes ...] -m linkedout.train ...`` (`world_from_env`): torchrun
  sets RANK / WORLD_SIZE / MASTER_ADDR and restarts or stops workers; linkedout only joins the group.

What a rank does (docs/distributed.md has the why of each):

- every rank loads and splits the log itself (deterministic: same seed, same split, no shipping of data);
- every rank draws the SAME shuffled epoch of `TrainWindows` (numpy generator seeded with the run seed),
  pads it to a multiple of N by wrapping (as torch's DistributedSampler does) and takes every N-th window
  (`shard_epoch`): equal step counts on every rank, so no rank waits for a batch that never comes;
- ``--batch-size`` stays the GLOBAL batch: each rank takes batch/N windows per step, and the union of the
  ranks' step s is exactly the single-process batch s of the same epoch order. The learning rate is
  unchanged, so a recipe tuned on one process holds for N (no linear-scaling rule is needed);
- each rank's loss is weighted by its share of the step's target positions (`StepShares`), so after DDP's
  gradient averaging the step is the gradient of the mean loss over the union batch, as on one process;
- validation runs on rank 0 only, which decides early stopping and broadcasts it; rank 0 alone writes
  checkpoints and run.json, evaluates test once and hands its `RunResult` to the other ranks.

``--nproc 1`` never imports this module: the single-process trainer pays nothing for it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from linkedout.config import TrainConfig
from linkedout.models.base import Recommender, TrainBatch

if TYPE_CHECKING:
    from linkedout.config import ModelConfig
    from linkedout.data.protocol import Protocol
    from linkedout.train.run import DatasetSpec, RunResult

# A collective that waits longer than this fails instead of hanging (a rank stopped without dying, a
# node lost). Long enough for rank 0's validation pass, which the other ranks wait for at a broadcast.
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "LINKEDOUT_DIST_TIMEOUT"


class DistributedRunError(RuntimeError):
    """A distributed run failed: a worker died, raised, or the group could not form."""


@dataclass(frozen=True)
class World:
    """This process's place in an initialised process group."""

    rank: int
    size: int
    local_rank: int
    device: str  # where this rank's model lives ("cpu", "cuda:1", ...)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: Recommender) -> nn.Module:
        """``model``'s loss as a DistributedDataParallel module: ``wrapped(inputs, targets)`` -> loss,
        gradients averaged over ranks during backward."""
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        # Buffers (logq, softmax columns) never change during training: syncing them every step would
        # be wasted traffic (torch >= 2.13 spells this forward_sync_buffers, older broadcast_buffers).
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        # find_unused_parameters: some encoders may leave parameters out of a step (sparse MoE top-k,
        # ID dropout); without it DDP would wait for their gradients forever. Its cost is one walk of
        # the autograd graph per step (small next to the step for these models); torch logs a
        # warning once per rank when a step used every parameter.
        return DistributedDataParallel(
            _Loss(model), device_ids=device_ids, find_unused_parameters=True, **{no_sync: False}
        )

    def decide(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (early stopping is decided once, where validation ran)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (the epoch's training loss as every rank saw it)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank; what the other ranks pass is ignored."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    @property
    def _comm_device(self) -> torch.device:
        # nccl moves only CUDA tensors; gloo takes CPU ones
        return torch.device(self.device) if self.device.startswith("cuda") else torch.device("cpu")


class _Loss(nn.Module):
    """DDP synchronises gradients of what its ``forward`` computed; a recommender trains through
    ``loss(batch)``, so this puts the loss behind a forward (tensors, which DDP knows how to move)."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self.model.loss(TrainBatch(inputs, targets, users))


@dataclass(frozen=True)
class EpochShard:
    """This rank's windows of one epoch and the weight of its loss at every step."""

    w_start: np.ndarray
    w_end: np.ndarray
    batch_size: int  # per rank
    step_weights: np.ndarray  # float64 [steps]

    @property
    def steps(self) -> int:
        return len(self.step_weights)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Windows per rank and step: ``batch_size`` is the global batch, split evenly over the ranks."""
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must split evenly over {world_size} "
            f"processes (use a multiple of {world_size})"
        )
    return batch_size // world_size


def shard_epoch(
    w_start: np.ndarray, w_end: np.ndarray, length: int, batch_size: int, world: World
) -> EpochShard:
    """This rank's share of an epoch's windows (the same shuffled arrays on every rank).

    Padded to a multiple of the world size by repeating the first windows, then rank r takes windows
    r, r+N, r+2N, ...: every rank has the same number of windows and so the same number of steps, and
    the union of the ranks' step s is the global batch s of the unsharded order.

    Step weight = N x (this rank's target positions) / (all ranks' target positions at that step):
    `loss` is a mean over the rank's positions, DDP averages gradients over ranks, so the weighted
    losses give the gradient of the mean over the union batch. Every rank computes every rank's counts
    from the shared arrays, so this costs no communication."""
    per_rank = per_rank_batch(batch_size, world.size)
    n = len(w_end)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return EpochShard(empty, empty, per_rank, np.zeros(0))
    order = np.arange(n + (-n % world.size)) % n  # wrap around: DistributedSampler's padding
    starts, ends = w_start[order], w_end[order]
    # a window holds min(end - start, length + 1) items, so one target fewer (see TrainWindows.batch)
    targets = (np.minimum(ends - starts, length + 1) - 1).reshape(-1, world.size)  # [windows per rank, N]
    step = np.arange(len(targets)) // per_rank
    mine = np.bincount(step, weights=targets[:, world.rank])
    everyone = np.bincount(step, weights=targets.sum(axis=1))
    return EpochShard(
        starts[world.rank :: world.size],
        ends[world.rank :: world.size],
        per_rank,
        mine * world.size / everyone,
    )


# ---------------------------------------------------------------------------------------------- joining


def timeout_seconds() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def launched_by_torchrun() -> bool:
    """True inside a worker that torchrun (or another launcher setting WORLD_SIZE > 1) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_world(device: str, timeout: float | None = None) -> World:
    """Join the process group the environment describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK): nccl when training on CUDA, gloo otherwise."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.device_count() == 0:
            raise DistributedRunError("--device cuda but this machine has no CUDA device")
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
        backend = "nccl"
    elif kind == "cpu":
        backend = "gloo"
    else:
        raise DistributedRunError(f"distributed training runs on cpu or cuda, not {device!r}")
    wait = datetime.timedelta(seconds=timeout if timeout is not None else timeout_seconds())
    dist.init_process_group(backend, rank=rank, world_size=size, timeout=wait)
    return World(rank, size, local_rank, device)


def run_in_world(
    spec: DatasetSpec,
    protocol: Protocol,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> RunResult:
    """This process's part of a distributed run (the environment names its rank): join, train, leave.
    Returns rank 0's `RunResult` on every rank."""
    from dataclasses import replace

    from linkedout.train.run import run_experiment

    world = join_world(train_config.device, timeout)
    try:
        config = replace(train_config, device=world.device)
        return run_experiment(
            spec,
            protocol,
            model_config,
            config,
            run_dir=run_dir,
            progress=progress and world.is_main,
            world=world,
        )
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- launching


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it); rank 0's store binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch_local(
    nproc: int,
    spec: DatasetSpec,
    protocol: Protocol,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> RunResult:
    """Train with ``nproc`` processes on this machine and return rank 0's `RunResult`.

    Raises `DistributedRunError` naming the rank and the cause when any worker dies or raises; the
    remaining workers are stopped first (torch's spawn context terminates them), so nothing hangs."""
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException, start_processes

    from linkedout.train.run import RunResult

    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    per_rank_batch(train_config.batch_size, nproc)  # fail here, not in N workers
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="linkedout-ddp-") as tmp:
        result_path = Path(tmp) / "result.json"
        args = (
            nproc,
            port,
            spec,
            protocol,
            model_config,
            train_config,
            run_dir,
            progress,
            timeout,
            result_path,
        )
        context = start_processes(_spawned_worker, args=args, nprocs=nproc, join=False, start_method="spawn")
        try:
            while not context.join(grace_period=5):
                pass
        except ProcessExitedException as e:
            cause = (
                f"was killed by signal {e.signal_name}"
                if e.signal_name
                else f"exited with code {e.exit_code}"
            )
            raise DistributedRunError(
                f"training worker rank {e.error_index} (pid {e.error_pid}) {cause}; "
                "the other workers were stopped"
            ) from None
        except ProcessRaisedException as e:
            raise DistributedRunError(
                f"training worker rank {e.error_index} failed: {last_line(str(e))}"
            ) from None
        return RunResult(**json.loads(result_path.read_text()))


def _spawned_worker(
    local_rank: int,
    nproc: int,
    port: int,
    spec: DatasetSpec,
    protocol: Protocol,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: Path | None,
    progress: bool,
    timeout: float | None,
    result_path: Path,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        LOCAL_RANK=str(local_rank),
    )
    if "OMP_NUM_THREADS" not in os.environ:
        # N processes each using every core would fight over them (torchrun sets 1 thread for the
        # same reason); a fair share keeps the intra-op parallelism a single process had
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    result = run_in_world(
        spec, protocol, model_config, train_config, run_dir=run_dir, progress=progress, timeout=timeout
    )
    if local_rank == 0:
        result_path.write_text(json.dumps(result.to_json()))


def last_line(text: str) -> str:
    """The exception line of a worker's traceback (what a user needs; the full trace is on stderr)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def run_distributed(
    spec: DatasetSpec,
    protocol: Protocol,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    nproc: int = 1,
    run_dir: Path | None = None,
    progress: bool = True,
) -> RunResult:
    """`linkedout train`'s multi-process entry: launch ``nproc`` local workers, or (inside torchrun)
    be this process's rank. Every caller gets rank 0's result."""
    if launched_by_torchrun():
        if nproc > 1:
            raise ValueError("--nproc launches its own workers: leave it out under torchrun")
        return run_in_world(spec, protocol, model_config, train_config, run_dir=run_dir, progress=progress)
    return launch_local(nproc, spec, protocol, model_config, train_config, run_dir=run_dir, progress=progress)


def is_main_process() -> bool:
    """False in a torchrun worker of rank > 0 (which should not print the run's table again)."""
    return int(os.environ.get("RANK", "0")) == 0
