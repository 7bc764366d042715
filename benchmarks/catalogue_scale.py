"""Retrieval at catalogue scale, in-process: every index kind on the same random catalogue, with build
time, memory per item, recall@10 against the float32 exact index, and open-loop latency at a fixed rate.

    .venv/bin/python benchmarks/catalogue_scale.py --items 1000000 --out benchmarks/results/catalogue_1m.json
    .venv/bin/python benchmarks/catalogue_scale.py --items 100000 --kinds exact exact-bf16   # quick look

What is measured (all on this machine, printed with the CPU's flags and the load average):
- build_s: building the index from the item matrix (FAISS training included); with ``--index-cache``
  a FAISS index built by an earlier run is read instead (``from_cache``: build_s is then a read).
- bytes_per_item: bytes the index allocates for its vectors, divided by the items (FAISS: its
  serialised size; exact: the float32 rows, plus the bfloat16 copy for exact-bf16). Every kind also
  keeps the float32 rows for history lookups (4 x dim bytes per item): ``bytes_per_item_total``.
- rss_delta_mb: the process's resident memory growth while building (a cross-check of the above).
- recall@10: share of the float32 exact top-10 found, with each user's history excluded as served.
- p50/p99 ms at ``--rate`` req/s: an open loop on the serving engine's own path (user encoder on the
  history rows + index search, micro-batched like `MicroBatcher`: everything that arrived while the
  previous batch ran goes in the next, up to 64). Latency counts from each request's scheduled arrival,
  so a slow batch delays the requests queued behind it (no coordinated omission). No HTTP: that part
  is benchmarks/serve_latency.py's (``--ann exact-bf16 ivfpq hnsw`` runs these kinds over HTTP).
Item vectors are random Gaussian rows (IVF's and HNSW's hardest case: no clusters), or with
``--clusters C --spread S`` SYNTHETIC clustered rows (linkedout.synthetic.random_vector_bundle); users
are encoded histories.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from linkedout.serve.engine import Engine, RecRequest
from linkedout.serve.index import INDEX_KINDS
from linkedout.synthetic import random_vector_bundle
from provenance import provenance

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_flags() -> dict:
    """Model name and the SIMD flags that decide which precision is fast (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    have = set(flags_line.split(":", 1)[-1].split())
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in have]}


def index_bytes(index) -> int:
    """Bytes the index holds for its vectors (see the module docstring)."""
    if hasattr(index, "faiss"):
        return int(index.faiss.serialize_index(index._base).size)
    view = index._view  # base segment (the bundle's rows) + online segment (empty here)
    low = view.low.nbytes if view.low is not None else 0
    return int((view.base.numel() + view.added[: view.m].numel()) * 4 + low)


def open_loop(engine: Engine, requests: list[RecRequest], rate: float, max_batch: int = 64) -> dict:
    """Requests arrive every 1/rate s; one worker runs micro-batches of what has arrived."""
    arrivals = np.arange(len(requests)) / rate
    latency = np.zeros(len(requests))
    t0 = time.perf_counter()
    i = 0
    batches = 0
    while i < len(requests):
        now = time.perf_counter() - t0
        if arrivals[i] > now:
            time.sleep(arrivals[i] - now)
            now = time.perf_counter() - t0
        j = min(len(requests), i + max_batch, int(np.searchsorted(arrivals, now, side="right")))
        j = max(j, i + 1)
        engine.recommend_batch(requests[i:j])
        latency[i:j] = (time.perf_counter() - t0) - arrivals[i:j]
        batches += 1
        i = j
    wall = time.perf_counter() - t0
    ms = latency * 1000
    return {
        "requests": len(requests),
        "rate": rate,
        "achieved_rps": len(requests) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": len(requests) / batches,
    }


def search_ms(index, dim: int, batch: int, repeats: int = 50) -> float:
    """Median milliseconds of one ``index.search`` of ``batch`` random users, back to back (the
    index alone: no user encoder, no exclusions): the kinds' raw cost side by side."""
    g = torch.Generator().manual_seed(batch)
    users = [torch.randn(batch, dim, generator=g) for _ in range(repeats + 5)]
    times = []
    for i, u in enumerate(users):
        t = time.perf_counter()
        index.search(u, 10)
        if i >= 5:  # the first few warm caches and lazily built kernels
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def recall_at_10(exact: Engine, other: Engine, requests: list[RecRequest]) -> float:
    hits = 0
    for start in range(0, len(requests), 32):
        part = requests[start : start + 32]
        for a, b in zip(exact.recommend_batch(part), other.recommend_batch(part), strict=True):
            hits += len(set(a.rows) & set(b.rows))
    return hits / (10 * len(requests))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument(
        "--kinds", nargs="+", default=["exact", "exact-bf16", "ivfpq", "hnsw"], choices=INDEX_KINDS
    )
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--requests", type=int, default=2000, help="per open-loop run")
    ap.add_argument("--repeats", type=int, default=3, help="open-loop runs per kind (each p99 reported)")
    ap.add_argument("--recall-queries", type=int, default=500)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the server's --threads)")
    ap.add_argument(
        "--nprobe",
        type=int,
        nargs="+",
        default=[64],
        help="IVF lists searched (ivf, ivfpq); several: a sweep",
    )
    ap.add_argument("--pq-m", type=int, default=16, help="IVF-PQ bytes per vector")
    ap.add_argument(
        "--ef-search", type=int, nargs="+", default=[128], help="HNSW search breadth; several: a sweep"
    )
    ap.add_argument(
        "--index-cache",
        type=Path,
        default=None,
        help="keep FAISS indexes here and reuse them (build once on a busy machine, time searches later)",
    )
    ap.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="0: isotropic Gaussian rows (ANN's worst case); C: SYNTHETIC rows around C centres",
    )
    ap.add_argument("--spread", type=float, default=1.0, help="noise around a centre, in centre scale")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    report: dict = {
        "provenance": provenance(),
        "cpu": cpu_flags(),
        "loadavg_start": os.getloadavg(),
        "cores": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "kinds": {},
    }
    t = time.perf_counter()
    bundle = random_vector_bundle(
        args.items, dim=args.dim, max_len=args.history, clusters=args.clusters, spread=args.spread
    )
    report["bundle_build_s"] = time.perf_counter() - t
    requests = []
    for _ in range(max(args.requests, args.recall_queries)):
        h = rng.choice(args.items, size=args.history, replace=False).astype(np.int64)
        requests.append(RecRequest(h, np.unique(h), 10, explain=False))
    proc = psutil.Process()
    reference = Engine(bundle, "exact")
    for kind in args.kinds:
        before = proc.memory_info().rss
        t = time.perf_counter()
        kw = {}
        if kind in ("ivf", "ivfpq"):
            kw = {"nprobe": args.nprobe[0]} | ({"pq_m": args.pq_m} if kind == "ivfpq" else {})
        elif kind == "hnsw":
            kw = {"ef_search": args.ef_search[0]}
        if kind in ("flat", "ivf", "ivfpq", "hnsw"):
            # build_s is a build, never a read of an earlier run's cached index, unless asked
            kw["cache_dir"] = args.index_cache or False
        engine = reference if kind == "exact" else Engine(bundle, kind, **kw)
        build = time.perf_counter() - t
        rss = (proc.memory_info().rss - before) / 2**20
        per_item = index_bytes(engine.index) / args.items
        # search-time knobs need no rebuild: one row per value, the build shared
        sweep = {"hnsw": args.ef_search, "ivf": args.nprobe, "ivfpq": args.nprobe}.get(kind, [None])
        for knob in sweep:
            label = kind if len(sweep) == 1 else f"{kind}@{knob}"
            if knob is not None:
                engine.index.set_search(**{"ef_search" if kind == "hnsw" else "nprobe": knob})
            rows = {
                "build_s": build if kind != "exact" else None,
                "from_cache": bool(args.index_cache) and kind in ("flat", "ivf", "ivfpq", "hnsw"),
                "rss_delta_mb": rss if kind != "exact" else None,
                "search_knob": knob,
                "bytes_per_item": per_item,
                "bytes_per_item_total": per_item + (4 * args.dim if hasattr(engine.index, "faiss") else 0),
                "recall_at_10": recall_at_10(reference, engine, requests[: args.recall_queries]),
                "search_ms_b1": search_ms(engine.index, args.dim, 1),
                "search_ms_b16": search_ms(engine.index, args.dim, 16, repeats=20),
            }
            open_loop(engine, requests[:200], args.rate)  # warm-up
            rows["runs"] = [
                open_loop(engine, requests[: args.requests], args.rate) for _ in range(args.repeats)
            ]
            rows["full_rescores"] = getattr(engine.index, "full_rescores", None)
            report["kinds"][label] = rows
            print(json.dumps({"kind": label, **rows}), flush=True)
        if engine is not reference:
            del engine
    report["loadavg_end"] = os.getloadavg()
    print_table(report, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


def print_table(report: dict, args) -> None:
    cpu = report["cpu"]
    print(
        f"\n{args.items:,} items x {args.dim}, {args.rate:.0f} req/s, history {args.history}, "
        f"{args.threads} thread(s); CPU {cpu.get('model')} flags {' '.join(cpu.get('flags', []))}; "
        f"load average {report['loadavg_start']} -> {report['loadavg_end']}, {report['cores']} cores\n"
    )
    print(
        "| index | build s | bytes/item (index) | + float32 rows | recall@10 | search ms B=1 / 16 | p50 ms "
        "| p99 ms (each run) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, r in report["kinds"].items():
        mid = sorted(r["runs"], key=lambda x: x["p99_ms"])[len(r["runs"]) // 2]
        each = " / ".join(f"{x['p99_ms']:.1f}" for x in r["runs"])
        build = f"{r['build_s']:.1f}" if r["build_s"] is not None else "-"
        print(
            f"| {kind} | {build} | {r['bytes_per_item']:.0f} | {r['bytes_per_item_total']:.0f} | "
            f"{r['recall_at_10']:.3f} | {r['search_ms_b1']:.2f} / {r['search_ms_b16']:.1f} | "
            f"{mid['p50_ms']:.2f} | {mid['p99_ms']:.2f} ({each}) |"
        )


if __name__ == "__main__":
    main()
