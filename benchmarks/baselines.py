"""Baselines on MovieLens-100K under both protocols, mean and std over seeds.

    .venv/bin/python benchmarks/baselines.py [--seeds 0 1 2] [--protocols microlens recbole]
        [--models pop itemknn gru4rec sasrec] [--out benchmarks/results/baselines.json]

Each run uses the tuned recipe of linkedout/train/recipes.py (tuned on validation only), picks the best
validation epoch and reports test metrics. Prints a markdown table (mean ± std) ready for
docs/benchmarks.md and writes every run's JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from linkedout.data.protocol import get_protocol, split
from linkedout.train.recipes import recipe
from linkedout.train.run import DatasetSpec, run_experiment
from provenance import provenance

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--protocols", nargs="+", default=["microlens", "recbole"])
    ap.add_argument("--models", nargs="+", default=["pop", "itemknn", "gru4rec", "sasrec"])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/baselines.json"))
    ap.add_argument(
        "--table",
        type=Path,
        nargs="+",
        help="Only print the markdown table of earlier --out files; a (protocol, model, seed) found in a "
        "later file replaces the earlier file's run of it.",
    )
    args = ap.parse_args()
    if args.table:
        print(markdown_table(merge_runs([json.loads(path.read_text())["runs"] for path in args.table])))
        return

    made_by = provenance()  # before the first write: this run's own output must not mark the tree dirty
    spec = DatasetSpec(path=args.dataset)
    loaded = spec.load()
    runs = []
    meta = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.protocols:
        protocol = get_protocol(name)
        prepared = (split(loaded.interactions, protocol), loaded.name)
        for model in args.models:
            for seed in args.seeds:
                mc, tc = recipe(model, protocol.name, seed=seed)
                t0 = time.perf_counter()
                r = run_experiment(spec, protocol, mc, tc, prepared=prepared, progress=False)
                row = r.to_json()
                row.pop("history")
                row["provenance"] = made_by  # per run: --table merges runs of several files
                runs.append(row)
                print(
                    f"{name:9s} {model:8s} seed {seed}: NDCG@10 {r.metrics['NDCG@10']:.4f} HR@10 "
                    f"{r.metrics['HR@10']:.4f} best epoch {r.best_epoch} to-best {r.seconds_to_best:.0f}s "
                    f"total {time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
                # written after every run: a long benchmark stopped early keeps what it measured
                args.out.write_text(json.dumps({"meta": meta, "provenance": made_by, "runs": runs}, indent=1))
    print()
    print(markdown_table(runs))


def merge_runs(files: list[list[dict]]) -> list[dict]:
    """Runs of several result files; a later file's (protocol, model, seed) replaces an earlier one's,
    so files holding other seeds of the same model add to its mean."""
    merged: dict[tuple[str, str, int], dict] = {}
    for runs in files:
        for r in runs:
            merged[(r["protocol"]["name"], r["model"], r["seed"])] = r
    return list(merged.values())


def markdown_table(runs: list[dict]) -> str:
    lines = []
    for name in dict.fromkeys(r["protocol"]["name"] for r in runs):
        group = [r for r in runs if r["protocol"]["name"] == name]
        lines += [f"Protocol: {group[0]['protocol']['description']}", ""]
        lines.append("| model | " + " | ".join(METRICS) + " | best epoch | s to best | peak RSS MB |")
        lines.append("|---" * (len(METRICS) + 4) + "|")
        for model in dict.fromkeys(r["model"] for r in group):
            rs = [r for r in group if r["model"] == model]
            cells = []
            for m in METRICS:
                v = np.array([r["metrics"][m] for r in rs])
                cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
            epochs = np.mean([r["best_epoch"] for r in rs])
            to_best = np.mean([r["seconds_to_best"] for r in rs])
            rss = max(r["peak_rss_mb"] for r in rs)
            lines.append(
                f"| {model} | " + " | ".join(cells) + f" | {epochs:.0f} | {to_best:.0f} | {rss:.0f} |"
            )
        lines.append(f"\n({len(rs)} seeds: {sorted({r['seed'] for r in group})})\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
