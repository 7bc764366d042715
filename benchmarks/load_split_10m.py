"""Load a 10M-event log into `Interactions` and split it by a protocol: wall time per stage, peak RSS.

    .venv/bin/python benchmarks/load_split_10m.py                 # parquet and csv, microlens protocol
    .venv/bin/python benchmarks/load_split_10m.py --format csv --protocol recbole

The log is synthetic and seeded (1M users drawn uniformly, 100k items with Zipf-like popularity,
timestamps uniform over one year) because no public log of this size installs here; it is generated
once into a cache folder (not timed). Each measurement runs in a fresh subprocess so that peak RSS
(``ru_maxrss``) belongs to loading and splitting alone. Goal: < 60 s and < 3 GB peak RSS on 2 cores.
The last line printed per format is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 60.0
GOAL_RSS_GB = 3.0


def generate(path: Path, n_events: int, n_users: int, n_items: int, seed: int) -> None:
    """Write the synthetic log (user_id, item_id, timestamp; rows in random order) to ``path``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, n_events, dtype=np.int64)
    weights = 1.0 / (np.arange(n_items) + 10.0)  # Zipf-like (s=1) with a flattened head
    cdf = np.cumsum(weights / weights.sum())
    rank = np.minimum(np.searchsorted(cdf, rng.random(n_events)), n_items - 1)
    items = rng.permutation(n_items).astype(np.int64)[rank] + 1  # popularity unrelated to the id
    start = 1_600_000_000
    times = rng.integers(start, start + 365 * 86_400, n_events, dtype=np.int64)
    table = pa.table({"user_id": users, "item_id": items, "timestamp": times})
    tmp = path.with_suffix(path.suffix + ".part")
    if path.suffix == ".parquet":
        pq.write_table(table, tmp)
    else:
        pcsv.write_csv(table, tmp)
    tmp.rename(path)


def child(path: Path, protocol_name: str) -> dict:
    """The measured run: imports, load (read + build), split."""
    t0 = time.perf_counter()
    from linkedout.data.formats import load_interactions
    from linkedout.data.protocol import get_protocol, split

    t1 = time.perf_counter()
    ds = load_interactions(path)
    t2 = time.perf_counter()
    result = split(ds.interactions, get_protocol(protocol_name))
    t3 = time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    summary = result.summary()
    return {
        "benchmark": "load_split_10m",
        "file": path.name,
        "format": ds.format,
        "protocol": result.protocol.describe(),
        "events": ds.interactions.n_events,
        "users": ds.interactions.n_users,
        "items": ds.interactions.n_items,
        "split_users": summary["users"],
        "split_events": summary["events"],
        "test_users": summary["test_users"],
        "seconds": {
            "import": round(t1 - t0, 3),
            "read": round(ds.timings["read"], 3),
            "build": round(ds.timings["build"], 3),
            "split": round(t3 - t2, 3),
            "total": round(t3 - t0, 3),
        },
        "peak_rss_gb": round(peak_kb * 1024 / 1e9, 3),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--format", choices=["parquet", "csv", "both"], default="both")
    parser.add_argument("--protocol", default="microlens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "linkedout-bench")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(child(args.child, args.protocol)))
        return

    formats = ["parquet", "csv"] if args.format == "both" else [args.format]
    args.cache.mkdir(parents=True, exist_ok=True)
    failed = False
    for fmt in formats:
        stem = f"log_{args.events}_{args.users}_{args.items}_s{args.seed}"
        path = args.cache / f"{stem}.{fmt}"
        if not path.exists():
            t = time.perf_counter()
            generate(path, args.events, args.users, args.items, args.seed)
            print(f"generated {path} in {time.perf_counter() - t:.1f} s (not timed)", file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", str(path), "--protocol", args.protocol]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        s = res["seconds"]
        ok = s["total"] < GOAL_SECONDS and res["peak_rss_gb"] < GOAL_RSS_GB
        failed |= not ok
        res["goal"] = {"seconds": GOAL_SECONDS, "peak_rss_gb": GOAL_RSS_GB, "met": ok}
        print(f"{fmt}: {res['events']:,} events, {res['users']:,} users, {res['items']:,} items")
        print(f"  protocol: {res['protocol']}")
        kept = f"{res['split_users']:,} users, {res['split_events']:,} events"
        print(f"  after the protocol: {kept}, {res['test_users']:,} test users")
        for stage in ("import", "read", "build", "split", "total"):
            print(f"  {stage:>6}: {s[stage]:7.2f} s")
        print(
            f"  peak RSS: {res['peak_rss_gb']:.2f} GB   goal < {GOAL_SECONDS:.0f} s, < {GOAL_RSS_GB:.0f} GB: "
            f"{'met' if ok else 'NOT MET'}"
        )
        print(json.dumps(res))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
