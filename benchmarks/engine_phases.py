"""Where one recommend request's time goes in process: the user vector (SASRec over the history rows)
and the index search, timed apart, with requests back to back or spaced as at a given rate.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/engine_phases.py --items 100000 \
        --kinds exact exact-int8 --gap-ms 0 5 --out benchmarks/results/engine_phases.json

One torch thread (the server's default), random 64-d id-only SASRec bundle (as serve_latency.py),
histories of 50 random items excluded from the results, k = 10, one request per call. The first
``--warmup`` requests of each series are not counted. Also a bare float32 ``[1, D] @ [D, N]`` product
+ top-k under the same spacing: what the index search would cost without anything around it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from linkedout.serve.engine import Engine, RecRequest
from linkedout.synthetic import random_vector_bundle
from provenance import provenance


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {q: float(np.percentile(ms, int(q[1:]))) for q in ("p50", "p90", "p99")} | {"max": float(ms.max())}


def phases(engine: Engine, requests: list[RecRequest], gap: float, warmup: int) -> dict:
    user, search, total = [], [], []
    for r in requests:
        t0 = time.perf_counter()
        with torch.no_grad():
            u = engine.user_vectors([r.history])
            t1 = time.perf_counter()
            engine.index.search(u, r.k, [r.exclude])
        t2 = time.perf_counter()
        user.append(t1 - t0)
        search.append(t2 - t1)
        total.append(t2 - t0)
        if gap:
            time.sleep(gap)
    return {
        name: percentiles(x[warmup:])
        for name, x in (("user_ms", user), ("search_ms", search), ("total_ms", total))
    }


def bare_product(matrix: torch.Tensor, n: int, gap: float, warmup: int) -> dict:
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(n):
        u = torch.randn(1, matrix.shape[1], generator=g)
        t = time.perf_counter()
        torch.topk(u @ matrix.T, 10)
        times.append(time.perf_counter() - t)
        if gap:
            time.sleep(gap)
    return percentiles(times[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--kinds", nargs="+", default=["exact", "exact-int8"])
    ap.add_argument("--gap-ms", type=float, nargs="+", default=[0.0, 5.0], help="pause between requests")
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = random_vector_bundle(args.items, dim=64, max_len=50)
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(args.requests):
        h = rng.choice(args.items, size=50, replace=False).astype(np.int64)
        requests.append(RecRequest(h, np.unique(h), 10, explain=False))
    report: dict = {
        "provenance": provenance(),
        "loadavg_start": os.getloadavg(),
        "args": vars(args) | {"out": str(args.out)},
    }
    for kind in args.kinds:
        engine = Engine(bundle, kind)
        for gap in args.gap_ms:
            report[f"{kind}@gap{gap:g}ms"] = row = phases(engine, requests, gap / 1000, args.warmup)
            print(kind, f"gap {gap:g} ms", json.dumps(row), flush=True)
    for gap in args.gap_ms:
        report[f"bare_fp32_product@gap{gap:g}ms"] = row = bare_product(
            bundle.item_matrix, args.requests, gap / 1000, args.warmup
        )
        print("bare float32 product + topk", f"gap {gap:g} ms", json.dumps(row), flush=True)
    report["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
