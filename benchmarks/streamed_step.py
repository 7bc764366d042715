"""Where a streamed SASRec training step's time goes (issue 13: "a step costs the batch, not the
catalogue"), on the SYNTHETIC 1M-event, 100k-item log of benchmarks/scale_train.py.

    .venv/bin/python benchmarks/scale_train.py --events 1000000 --encoders id  # makes the log (once)
    .venv/bin/python benchmarks/streamed_step.py --threads 1  # -> benchmarks/results/streamed_step.json

The same step `linkedout train` takes on a sharded log (`ShardStream.epoch` windows, `model.loss`,
backward, clip, `TrainOptimizer`), cut into phases timed with perf_counter: draw (the next batch of
windows from the stream), forward, backward, clip, optimizer. Variants, interleaved round by round so a
slower minute of the machine hits them all alike (median over rounds of the mean ms per step):

- ``id dense``: ID table on dense AdamW (``--sparse-ids 0``, the default)
- ``id sparse``: ID table on sparse gradients + SparseAdam (``--sparse-ids 10000``)
- ``linkedout``: the content-only LinkedOut encoder over random tokens (no ID table: nothing to sparsify)

Then one torch.profiler pass per variant splits the operators' self time by what their input shapes
say they scale with: the catalogue (a ``[n_items, ...]`` tensor), the in-batch softmax (``[target
positions, distinct targets]``), the rest (the transformer over ``[batch, max_len, dim]`` windows and
small tensors). The profiler slows small operators more than large ones: read its shares, not its ms.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from provenance import provenance

HERE = Path(__file__).resolve().parent
WORK = Path.home() / ".cache" / "linkedout" / "synthetic" / "scale_train"
PHASES = ("draw", "forward", "backward", "clip", "optimizer")


class Variant:
    """One model + optimizer + its stream of training batches, stepping and timing each phase."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        from linkedout.data.protocol import get_protocol
        from linkedout.train.optim import TrainOptimizer
        from linkedout.train.recipes import recipe
        from linkedout.train.run import DatasetSpec, build_for_split, prepare_split

        encoder, _, mode = name.partition(" ")
        protocol = get_protocol("recbole")
        settings = {"loss": "inbatch", "logq": True, "batch_size": args.batch_size, "precision": "fp32"}
        if encoder != "id":
            settings |= {"item_encoder": encoder, "features": str(args.features)}
        model_config, train_config = recipe("sasrec", protocol.name, **settings)
        train_config = replace(train_config, sparse_ids=args.sparse_ids if mode == "sparse" else 0)
        spec = DatasetSpec(path=str(args.log), eval_users=100)  # the sample is not used: training only
        log = spec.sharded()
        if log is None:
            raise SystemExit(f"{args.log} is not a sharded log: run benchmarks/scale_train.py first")
        split, _ = prepare_split(spec, protocol, log)
        self.model, split, _ = build_for_split(model_config, split, train_counts=log.train_counts)
        self.model.train()
        self.optimizer = TrainOptimizer(self.model, train_config)
        self.grad_clip = train_config.grad_clip
        self.batches = log.stream(protocol).epoch(np.random.default_rng(0), args.batch_size, True)
        self.n_items = self.model.n_items

    def step(self, seconds: dict[str, float]) -> int:
        """One training step; adds each phase's seconds to ``seconds``; returns its target positions."""
        from linkedout.data.batches import count_targets
        from linkedout.models.base import TrainBatch

        t0 = time.perf_counter()
        inputs, targets, users = next(self.batches)
        batch = TrainBatch(*(torch.from_numpy(a) for a in (inputs, targets, users)))
        t1 = time.perf_counter()
        loss = self.model.loss(batch)
        t2 = time.perf_counter()
        self.optimizer.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        self.optimizer.clip(self.grad_clip)
        t4 = time.perf_counter()
        self.optimizer.step()
        t5 = time.perf_counter()
        for phase, a, b in zip(PHASES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
            seconds[phase] += b - a
        return count_targets(inputs, targets)


def shape_class(shapes: str, n_items: int) -> str:
    if re.search(rf"\[{n_items}[,\]]", shapes):
        return "catalogue"
    # a 2-D [positions, candidates] logit/mask matrix: both sides in the hundreds or more, no 64-d side
    if re.search(r"\[\d{3,5}, \d{3,5}\]", shapes) and not re.search(r"\[\d+, 64\]|\[64, \d+\]", shapes):
        return "in-batch softmax"
    return "transformer and the rest"


def profile_shares(variant: Variant, steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    scratch = dict.fromkeys(PHASES, 0.0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            variant.step(scratch)
    totals: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        kind = shape_class(str(event.input_shapes), variant.n_items)
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return {k: v / whole for k, v in sorted(totals.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sparse-ids", type=int, default=10_000, help="the `id sparse` variant's threshold")
    ap.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variants", nargs="+", default=["id dense", "id sparse", "linkedout"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "streamed_step.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.log = WORK / f"log_e{args.events}_i{args.items}_p500000_s0"
    args.features = WORK / f"tokens_i{args.items}_4x2x64"
    made_by = provenance()
    torch.manual_seed(0)
    variants = {name: Variant(name, args) for name in args.variants}
    for variant in variants.values():  # warm-up: first steps allocate and fill caches
        for _ in range(3):
            variant.step(dict.fromkeys(PHASES, 0.0))
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, variant in variants.items():
            seconds = dict.fromkeys(PHASES, 0.0)
            targets = sum(variant.step(seconds) for _ in range(args.steps))
            ms = {k: 1000 * v / args.steps for k, v in seconds.items()}
            ms["step"] = sum(ms.values())
            ms["targets_per_step"] = targets / args.steps
            rounds[name].append(ms)
            print(
                f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()), file=sys.stderr
            )
    results: dict = {
        "benchmark": "streamed_step",
        "data": f"SYNTHETIC log {args.log.name} (benchmarks/scale_train.py)",
        "threads": torch.get_num_threads(),
        "steps_per_round": args.steps,
        "variants": {},
    }
    for name, variant in variants.items():
        median = {k: statistics.median(r[k] for r in rounds[name]) for k in rounds[name][0]}
        results["variants"][name] = {
            "median_ms": median,
            "rounds_ms": rounds[name],
            "profile_self_time_share": profile_shares(variant, args.profile_steps),
        }
        print(f"{name}: {median['step']:.0f} ms/step (median of {args.rounds} rounds)")
    results["provenance"] = made_by
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
