"""Extraction throughput: the local engine (one process) against the Ray engine with 1 and 2 actors.

Usage:
    python benchmarks/extract_ray.py                         # bench tier, frames backbone, T=8, 3 rounds
    python benchmarks/extract_ray.py --limit 6 --rounds 1    # a quick check that it runs

Every run goes from nothing loaded to a compacted store: the local engine builds the backbone and
extracts; the Ray engine builds it on a worker to key the store, starts its actors (each loads the
model) and extracts. Ray itself (``ray.init``, a local instance on this machine's cores) is started
once beforehand and its start time reported apart: a cluster is up before a job is sent to it.
Configurations run in rotated order each round; the headline is ``ratio = local median seconds /
config median seconds`` (items/s relative to one process; issue 13's goal: Ray >= 0.9 here).
torch threads: the local engine keeps torch's default (all cores) unless ``--torch-threads``; each
Ray actor gets ``--torch-threads`` or cores // actors, so both engines use the same cores.
Results (with provenance) go to benchmarks/results/extract_ray.json unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from linkedout.data.catalog import Catalog
from linkedout.extract import ExtractOptions, cpu_count, extract, extract_ray
from linkedout.samples import fetch_samples
from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "extract_ray.json"


def _run(config: str, catalog: Catalog, args: argparse.Namespace, store: Path) -> dict[str, Any]:
    cores = cpu_count()
    opts = {"backbone": "frames", "frames": args.frames, "batch_size": args.batch_size}
    t0 = time.perf_counter()
    if config == "local":
        backbone, sampler = ExtractOptions(**opts).build()
        threads = args.torch_threads or None
        report = extract(
            catalog,
            backbone,
            store,
            sampler=sampler,
            batch_size=args.batch_size,
            torch_threads=threads,
            progress=False,
        )
    else:
        actors = int(config.partition(":")[2])
        threads = args.torch_threads or max(1, cores // actors)
        recipe = ExtractOptions(**opts, engine="ray").recipe()
        report = extract_ray(
            catalog,
            recipe,
            store,
            actors=actors,
            batch_size=args.batch_size,
            torch_threads=threads,
            progress=False,
        )
    seconds = time.perf_counter() - t0
    return {
        "config": config,
        "seconds": round(seconds, 3),
        "items": report.extracted,
        "failures": len(report.failed),
        "torch_threads": threads,
        "backbone_seconds": round(report.backbone_seconds, 3),
        "decode_wait_seconds": round(report.decode_wait_seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="bench", choices=["small", "bench"])
    ap.add_argument("--limit", type=int, help="only the first N valid clips (quick checks)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--configs", default="local,ray:1,ray:2", help="comma list: local, ray:N (N actors)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=0, help="0: see the module docstring")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    made_by = provenance(None if argv is None else [sys.argv[0], *argv])

    samples = fetch_samples(args.tier, quiet=True)
    valid = {c.name for c in samples.valid_clips()}
    catalog = Catalog.from_samples(samples)
    catalog = Catalog([it for it in catalog if it.id in valid][: args.limit], source=catalog.source)
    configs = args.configs.split(",")

    import ray

    # Ray workers must import this checkout's linkedout, and a local test cluster needs no auth token.
    src = str(Path(__file__).resolve().parents[1] / "src")
    os.environ["PYTHONPATH"] = src + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    ray.init(num_cpus=cpu_count(), include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    print(f"ray.init: {ray_start:.1f} s; {len(catalog)} clips, configs {configs}", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="extract_ray_") as tmp:
            for r in range(args.rounds):
                order = configs[r % len(configs) :] + configs[: r % len(configs)]
                for config in order:
                    row = _run(config, catalog, args, Path(tmp) / f"{config.replace(':', '')}-{r}")
                    row["round"] = r
                    print(json.dumps(row), file=sys.stderr)
                    runs.append(row)
    finally:
        ray.shutdown()

    median = {c: statistics.median(x["seconds"] for x in runs if x["config"] == c) for c in configs}
    base = median.get("local")
    summary = [
        {
            "config": c,
            "median_seconds": round(median[c], 3),
            "items_per_second": round(len(catalog) / median[c], 3),
            "throughput_vs_local": round(base / median[c], 3) if base else None,
            "failures": max(x["failures"] for x in runs if x["config"] == c),
        }
        for c in configs
    ]
    result = {
        "provenance": made_by,
        "load_average_at_end": os.getloadavg(),
        "settings": {
            "tier": args.tier,
            "clips": len(catalog),
            "frames": args.frames,
            "batch_size": args.batch_size,
            "backbone": "frames",
            "rounds": args.rounds,
        },
        "ray_init_seconds": round(ray_start, 2),
        "summary": summary,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in summary:
        print(json.dumps(row))
    return 1 if any(row["failures"] for row in summary) else 0


if __name__ == "__main__":
    raise SystemExit(main())
