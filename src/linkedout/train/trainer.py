"""One-process trainer: epochs of shuffled next-item windows, validation every epoch, early stopping
on a validation metric, best weights kept (and checkpointed as safetensors when a run dir is given)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from linkedout.config import TrainConfig
from linkedout.data.batches import TrainWindows
from linkedout.data.protocol import Split
from linkedout.models.base import Recommender, TrainBatch
from linkedout.progress import ProgressState, StepProgress
from linkedout.train.evaluate import evaluate


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
) -> TrainResult:
    """Fit ``model`` on ``split``'s training events; returns with the best validation weights loaded.
    ``label`` names the run in progress output (e.g. "train sasrec")."""
    started = time.perf_counter()
    device = torch.device(config.device)
    model.to(device)
    model.fit(split)
    if not model.trainable:
        valid = evaluate(model, split, "valid", batch_size=config.eval_batch_size, device=device)
        return TrainResult(0, valid, [{"epoch": 0, **valid}], time.perf_counter() - started, 0.0)

    rng = np.random.default_rng(config.seed)
    train_items, train_starts, train_ends = split.train_sequences()
    windows = TrainWindows(train_starts, train_ends, split.protocol.max_seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    precision = resolve_precision(config.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    best = TrainResult(-1, {config.select_metric: -math.inf})
    best_state: dict[str, torch.Tensor] = {}
    history: list[dict] = []
    metric = config.select_metric
    with StepProgress(
        label,
        config.epochs,
        enabled=progress,
        describe=_epoch_line(metric),
        columns=_epoch_columns,
        fields={"epoch": 1, "step": 0, "steps": 0, "best": None, "best_epoch": 0, "stop": None},
        transient=True,
    ) as bar:
        bar.update(description="epoch 1")
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            w_start, w_end = windows.sample(rng if config.jitter else None)
            if not config.jitter:
                order = rng.permutation(len(w_end))
                w_start, w_end = w_start[order], w_end[order]
            total, steps = 0.0, 0
            bar.update(epoch=epoch, step=0, steps=math.ceil(len(w_end) / config.batch_size))
            for lo in range(0, len(w_end), config.batch_size):
                inputs, targets = windows.batch(
                    train_items, w_start[lo : lo + config.batch_size], w_end[lo : lo + config.batch_size]
                )
                batch = TrainBatch(torch.from_numpy(inputs), torch.from_numpy(targets)).to(device)
                with autocast:
                    loss = model.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                total += loss.item()
                steps += 1
                bar.update(step=steps)  # a plain line can come mid-epoch: long epochs still show life
            valid = evaluate(model, split, "valid", batch_size=config.eval_batch_size, device=device)
            elapsed = time.perf_counter() - started
            record = {
                "epoch": epoch,
                "loss": total / max(steps, 1),
                "seconds": time.perf_counter() - epoch_start,
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
                bar.update(stop=f"early stop ({config.patience} epochs without a better {metric})")
                break
            if config.max_train_seconds and elapsed > config.max_train_seconds:
                bar.update(stop=f"time limit ({config.max_train_seconds:g} s)")
                break
    model.load_state_dict(best_state)
    best.history = history
    best.train_seconds = time.perf_counter() - started
    return best


def _epoch_line(metric: str) -> Callable[[ProgressState], str]:
    """Plain progress line of a training run: where it is and the best epoch so far."""

    def describe(s: ProgressState) -> str:
        f = s.fields
        text = f"epoch {f['epoch']}/{s.total}, step {f['step']}/{f['steps']}, {s.elapsed:.0f} s"
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
