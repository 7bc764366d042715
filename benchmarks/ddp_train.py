"""Distributed (DDP, gloo) SASRec training vs one process on ml-100k: epoch time ratio, metric agreement.

    .venv/bin/python benchmarks/ddp_train.py                       # seeds 0 1 2, nproc 1 and 2, recipe epochs
    .venv/bin/python benchmarks/ddp_train.py --seeds 0 --epochs 1  # a smoke run (proves the script works)

For each seed, the same run (`recipe("sasrec", protocol)`, same global batch and lr, see
docs/distributed.md) trains once with 1 process and once with N processes (`launch_local`), one after
the other so they do not share the cores. Reported per run: test metrics, best epoch, median seconds per
epoch (training + rank 0's validation, from the run's history) and total training seconds; across
seeds: mean and standard deviation of each metric per world size, and the median epoch-time ratio
N-process / 1-process (< 1: faster). Torch threads: each of N workers gets cores // N (the launcher's
default); the 1-process run keeps torch's default unless ``--threads`` says otherwise (recorded per
run). Writes benchmarks/results/ddp_<protocol>[_tag].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from linkedout.data.protocol import get_protocol
from linkedout.train.distributed import launch_local
from linkedout.train.recipes import recipe
from linkedout.train.run import DatasetSpec, RunResult, run_experiment
from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def summarise(run: RunResult, threads_per_process: int) -> dict:
    epochs = [h["seconds"] for h in run.history]
    return {
        "world_size": run.world_size,
        "threads_per_process": threads_per_process,
        "seed": run.seed,
        "metrics": {k: run.metrics[k] for k in METRICS},
        "best_epoch": run.best_epoch,
        "epochs_run": len(run.history),
        "median_epoch_seconds": statistics.median(epochs),
        "train_seconds": run.train_seconds,
        "peak_rss_mb_rank0": run.peak_rss_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="recbole")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="Cap on epochs (default: the recipe's, early stopping)")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--tag", default="", help="Suffix of the results file name.")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads of the 1-process run (default: torch's). On a busy machine OpenMP's "
        "spinning makes 2 threads slower than 1: compare at equal threads before reading the ratio.",
    )
    args = ap.parse_args()
    made_by = provenance()
    if args.threads:
        torch.set_num_threads(args.threads)
    worker_threads = max(1, (os.cpu_count() or 1) // args.nproc)  # launch_local's share per worker

    protocol = get_protocol(args.protocol)
    spec = DatasetSpec(args.dataset)
    runs: list[dict] = []
    for seed in args.seeds:
        overrides = {"seed": seed, "epochs": args.epochs}
        model_config, train_config = recipe("sasrec", protocol.name, **overrides)
        train_config = replace(train_config, device="cpu")
        one = run_experiment(spec, protocol, model_config, train_config, progress=False)
        many = launch_local(args.nproc, spec, protocol, model_config, train_config, progress=False)
        for run, threads in ((one, torch.get_num_threads()), (many, worker_threads)):
            runs.append(summarise(run, threads))
            print(json.dumps(runs[-1]), flush=True)

    by_world: dict[int, list[dict]] = {}
    for run in runs:
        by_world.setdefault(run["world_size"], []).append(run)
    agreement = {
        str(world): {
            m: {
                "mean": statistics.mean(r["metrics"][m] for r in rs),
                "std": statistics.stdev([r["metrics"][m] for r in rs]) if len(rs) > 1 else None,
            }
            for m in METRICS
        }
        for world, rs in sorted(by_world.items())
    }
    ratios = [
        b["median_epoch_seconds"] / a["median_epoch_seconds"]
        for a, b in zip(by_world[1], by_world[args.nproc], strict=True)
    ]
    result = {
        "provenance": made_by,
        "what": f"SASRec ({args.protocol} recipe) on {args.dataset}: {args.nproc} DDP processes vs 1",
        "protocol": protocol.describe(),
        "nproc": args.nproc,
        "epoch_time_ratio_median": statistics.median(ratios),
        "epoch_time_ratios": ratios,
        "metrics_by_world_size": agreement,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ddp_{args.protocol}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("epoch_time_ratio_median", "metrics_by_world_size")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
