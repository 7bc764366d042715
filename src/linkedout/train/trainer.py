"""Trainer: epochs of shuffled next-item windows, validation every epoch, early stopping on a
validation metric, best weights kept (and checkpointed as safetensors when a run dir is given).

One process by default; given a `World` (linkedout.train.distributed) each rank trains on its shard of
every epoch under DistributedDataParallel, and rank 0 validates, decides when to stop and checkpoints."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file

from linkedout.config import TrainConfig
from linkedout.data.batches import TrainWindows, count_targets
from linkedout.data.protocol import Split
from linkedout.models.base import Recommender, TrainBatch
from linkedout.progress import ProgressState, StepProgress
from linkedout.train.evaluate import evaluate
from linkedout.train.optim import TrainOptimizer

if TYPE_CHECKING:
    from linkedout.data.shards import ShardStream
    from linkedout.train.distributed import World


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)  # per epoch: loss, valid metrics, seconds
    train_seconds: float = 0.0
    seconds_to_best: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: Recommender,
    split: Split,
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    label: str = "train",
    world: World | None = None,
    batches: ShardStream | None = None,
) -> TrainResult:
    """Fit ``model`` on ``split``'s training events; returns with the best validation weights loaded.
    ``label`` names the run in progress output (e.g. "train sasrec").

    With ``batches`` (a sharded log's `ShardStream`) the training windows come from it, one shard at a
    time, and ``split`` serves validation only (its sample of users): the same loop, the same early
    stopping, a log that never sits in memory whole.

    With a ``world`` of several processes (every rank calls this): ``config.batch_size`` is the global
    batch, split over the ranks; only rank 0 validates, checkpoints and holds the best weights at the
    end, and only its `TrainResult` means anything."""
    started = time.perf_counter()
    device = torch.device(config.device)
    model.to(device)
    model.fit(split)
    if world is not None and world.size == 1:
        world = None  # one rank: the plain loop, no DDP wrapper, no collectives
    main = world is None or world.is_main
    if not model.trainable:
        valid = evaluate(model, split, "valid", batch_size=config.eval_batch_size, device=device)
        return TrainResult(0, valid, [{"epoch": 0, **valid}], time.perf_counter() - started, 0.0)

    if batches is not None and world is not None:
        raise ValueError("training from a sharded log runs in one process (--nproc 1)")
    rng = np.random.default_rng(config.seed)  # the same epoch order on every rank (see shard_epoch)
    in_ram = SplitWindows.of(split) if batches is None else None
    if config.sparse_ids and world is not None:
        raise ValueError("--sparse-ids runs in one process (--nproc 1): DDP's reducer takes dense gradients")
    optimizer = TrainOptimizer(model, config)  # AdamW, plus SparseAdam for large ID tables
    step_loss: Callable[[TrainBatch], torch.Tensor] = model.loss
    batch_size = config.batch_size
    if world is not None:
        from linkedout.train.distributed import per_rank_batch

        batch_size = per_rank_batch(config.batch_size, world.size)
        wrapped = world.wrap(model)  # DDP makes every rank start from rank 0's weights
        step_loss = lambda b: wrapped(b.inputs, b.targets, b.users)  # noqa: E731
        # dropout masks must differ between ranks (each sees other rows); the window order must not,
        # and it comes from ``rng`` above, not from torch
        torch.manual_seed(config.seed + 1_000_003 * world.rank)
    precision = resolve_precision(config.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    best = TrainResult(-1, {config.select_metric: -math.inf})
    best_state: dict[str, torch.Tensor] = {}
    history: list[dict] = []
    metric = config.select_metric
    with StepProgress(
        label,
        config.epochs,
        enabled=progress and main,
        describe=_epoch_line(metric),
        columns=_epoch_columns,
        fields={"epoch": 1, "step": 0, "steps": 0, "best": None, "best_epoch": 0, "stop": None},
        transient=True,
    ) as bar:
        bar.update(description="epoch 1")
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            if batches is not None:
                epoch_batches = ((*b, None) for b in batches.epoch(rng, batch_size, config.jitter))
                bar.update(epoch=epoch, step=0, steps=0)  # drawn shard by shard: not known up front
            else:
                n_steps, epoch_batches = in_ram.epoch(rng, config, batch_size, world)
                bar.update(epoch=epoch, step=0, steps=n_steps)
            total, steps, n_targets = 0.0, 0, 0
            for inputs, targets, users, weight in epoch_batches:
                n_targets += count_targets(inputs, targets)
                batch = TrainBatch(*(torch.from_numpy(a) for a in (inputs, targets, users))).to(device)
                with autocast:
                    loss = step_loss(batch)
                optimizer.zero_grad()
                # a rank's share of the step's targets: the union batch's mean loss (see shard_epoch)
                (loss if weight is None else loss * weight).backward()
                if config.grad_clip:
                    optimizer.clip(config.grad_clip)
                optimizer.step()
                total += loss.item()
                steps += 1
                bar.update(step=steps)  # a plain line can come mid-epoch: long epochs still show life
            train_seconds = time.perf_counter() - epoch_start
            mean_loss = total / max(steps, 1)
            if world is not None:
                mean_loss = world.mean(mean_loss)
            stop: str | None = None
            if main:
                valid = evaluate(model, split, "valid", batch_size=config.eval_batch_size, device=device)
                elapsed = time.perf_counter() - started
                record = {
                    "epoch": epoch,
                    "loss": mean_loss,
                    "seconds": time.perf_counter() - epoch_start,
                    # training alone (no validation) and its target positions: events per second
                    "train_seconds": train_seconds,
                    "targets": n_targets,
                    **valid,
                }
                history.append(record)
                score = valid[config.select_metric]
                if score > best.best_valid[config.select_metric]:
                    best = TrainResult(epoch, valid, seconds_to_best=elapsed)
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if run_dir is not None:
                        save_checkpoint(model, run_dir / "model.safetensors")
                bar.update(
                    1,
                    description=f"epoch {epoch} loss {record['loss']:.4f} valid {metric} "
                    f"{score:.4f} (best {best.best_valid[metric]:.4f} @ {best.best_epoch})",
                    best=best.best_valid[metric],
                    best_epoch=best.best_epoch,
                )
                if epoch - best.best_epoch >= config.patience:
                    stop = f"early stop ({config.patience} epochs without a better {metric})"
                elif config.max_train_seconds and elapsed > config.max_train_seconds:
                    stop = f"time limit ({config.max_train_seconds:g} s)"
                if stop:
                    bar.update(stop=stop)
            # rank 0 saw the validation metric (and its own clock): every rank stops when it says so
            if world is not None and world.decide(1.0 if stop else 0.0):
                break
            if stop:
                break
    if main:
        model.load_state_dict(best_state)
    best.history = history
    best.train_seconds = time.perf_counter() - started
    return best


@dataclass(frozen=True)
class SplitWindows:
    """An in-RAM split's training sequences, read once; `epoch` draws that epoch's shuffled windows."""

    items: np.ndarray
    starts: np.ndarray
    users: np.ndarray  # split user index of each training sequence
    windows: TrainWindows

    @classmethod
    def of(cls, split: Split) -> SplitWindows:
        items, starts, ends = split.train_sequences()
        return cls(items, starts, split.train_users(), TrainWindows(starts, ends, split.protocol.max_seq_len))

    def epoch(
        self, rng: np.random.Generator, config: TrainConfig, batch_size: int, world: World | None
    ) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, float | None]]]:
        """(steps, batches of (inputs, targets, users, loss weight)); under a `World`, this rank's
        share of every step and the weight of its loss (see `shard_epoch`)."""
        w_start, w_end = self.windows.sample(rng if config.jitter else None)
        if not config.jitter:
            order = rng.permutation(len(w_end))
            w_start, w_end = w_start[order], w_end[order]
        weights = None
        if world is not None:
            from linkedout.train.distributed import shard_epoch

            shard = shard_epoch(w_start, w_end, self.windows.length, config.batch_size, world)
            w_start, w_end, weights = shard.w_start, shard.w_end, shard.step_weights

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, float | None]]:
            for step, lo in enumerate(range(0, len(w_end), batch_size)):
                starts_b = w_start[lo : lo + batch_size]
                inputs, targets = self.windows.batch(self.items, starts_b, w_end[lo : lo + batch_size])
                # a window starts where its user's sequence starts: that names the user
                users = self.users[np.searchsorted(self.starts, starts_b, side="right") - 1]
                yield inputs, targets, users, None if weights is None else weights[step]

        return math.ceil(len(w_end) / batch_size), batches()


def _epoch_line(metric: str) -> Callable[[ProgressState], str]:
    """Plain progress line of a training run: where it is and the best epoch so far."""

    def describe(s: ProgressState) -> str:
        f = s.fields
        steps = f"/{f['steps']}" if f["steps"] else ""  # a streamed epoch's steps are not known up front
        text = f"epoch {f['epoch']}/{s.total}, step {f['step']}{steps}, {s.elapsed:.0f} s"
        if f["best_epoch"] > 0:
            text += f", best valid {metric} {f['best']:.4f} (epoch {f['best_epoch']})"
        if f["stop"]:
            text += f", {f['stop']}"
        return text

    return describe


def _epoch_columns() -> list:
    """The terminal bar, as before: a description updated every epoch, epochs done, time."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision training runs at: ``precision`` itself, or for "auto" what ``device`` is fast at."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"unknown precision {precision!r} (fp32, bf16, auto)")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cpu":
        fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        fast = kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if fast else "fp32"


def save_checkpoint(model: Recommender, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)  # atomic: a killed run never leaves a half-written checkpoint
