"""Training throughput and peak RSS against log size, streamed from Parquet shards (issue 13, "cost
grows linearly with the log"), on SYNTHETIC logs; and the loss that makes it possible, on ml-100k.

    .venv/bin/python benchmarks/scale_train.py --events 1000000 10000000            # a small check
    .venv/bin/python benchmarks/scale_train.py --events 1000000 10000000 100000000  # the goal
    .venv/bin/python benchmarks/scale_train.py --accuracy                           # ml-100k, 3 seeds

Throughput: for each log size (same catalogue, ``--items``), a SYNTHETIC log (linkedout.synthetic.
synthetic_log: Zipf popularity, sessions) is generated once as shards under ``--work`` (not timed), and
SASRec trains exactly one epoch on it in a fresh subprocess (so ``ru_maxrss`` is that run's peak RSS),
through `linkedout train`'s own path (`run_experiment` on a sharded log), with ``--loss inbatch --logq``:
a softmax over the batch's distinct targets, corrected by log-popularity, so a step costs the batch
and not the catalogue; and with ``--sparse-ids`` (default 10,000: the item table) the ID table takes
sparse gradients and SparseAdam, so the optimizer too updates the rows a step looked up, not all 100k
(``--sparse-ids 0``: dense AdamW, as measured before it existed). Two item sides: ID embeddings,
and the LinkedOut encoder over precomputed random tokens (a FeatureStore with a row per item,
``--token-shape``). Recorded per run: events/s =
training target positions / training seconds of the epoch (validation excluded), the epoch's
seconds, validation and test seconds on ``--eval-users`` users, load+split seconds (open the log and
read the evaluation sample: what a run does before training), peak RSS.
Goals (issue 13): events/s at 100M >= 0.8x at 1M; peak RSS at 100M <= 1.5x at 1M and < 4 GB.

Resumable: logs, the token store and every finished (events, encoder) run are kept (``--work``,
``--out``); a rerun measures only what is missing (``--force`` remeasures).

Accuracy (``--accuracy``): SASRec ids on ml-100k (recbole protocol, the tuned recipe otherwise)
trained to early stopping with each loss of ``--losses`` (``LOSSES``: the full softmax ``ce``, the
in-batch softmax with and without logQ and with a larger batch, mixed negatives ``sampled-N``),
seeds ``--seeds``, each `linkedout train` in its own process with one torch thread. A finished run is
kept under ``--work``/accuracy and reused (``--force`` reruns it).

    .venv/bin/python benchmarks/scale_train.py --accuracy --losses ce inbatch sampled-1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provenance import provenance

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "scale_train.json"
DEFAULT_WORK = Path.home() / ".cache" / "linkedout" / "synthetic" / "scale_train"
GOAL_THROUGHPUT = 0.8
GOAL_RSS_RATIO = 1.5
GOAL_RSS_GB = 4.0
# --accuracy variants: `linkedout train` options on top of the sasrec/recbole recipe (batch 32)
LOSSES: dict[str, list[str]] = {
    "ce": ["--loss", "ce"],
    "inbatch": ["--loss", "inbatch", "--logq"],
    "inbatch-nologq": ["--loss", "inbatch", "--no-logq"],
    "inbatch-b256": ["--loss", "inbatch", "--logq", "--batch-size", "256"],
    "inbatch-nologq-b256": ["--loss", "inbatch", "--no-logq", "--batch-size", "256"],
    "sampled-1024": ["--loss", "sampled", "--logq", "--negatives", "1024"],
    "sampled-256": ["--loss", "sampled", "--logq", "--negatives", "256"],
    "sampled-nologq-1024": ["--loss", "sampled", "--no-logq", "--negatives", "1024"],
    "sampled-1024-nomask": ["--loss", "sampled", "--logq", "--negatives", "1024", "--no-mask-window"],
    "inbatch-nomask": ["--loss", "inbatch", "--logq", "--no-mask-window"],
    # the in-batch loss with the item table on sparse gradients + SparseAdam (1,682 rows; SASRec's
    # 50-row position table stays on AdamW)
    "inbatch_sparse": ["--loss", "inbatch", "--logq", "--sparse-ids", "1000"],
}


def log_dir(args: argparse.Namespace, events: int) -> Path:
    return args.work / f"log_e{events}_i{args.items}_p{args.events_per_shard}_s{args.seed}"


def ensure_log(args: argparse.Namespace, events: int) -> Path:
    from linkedout.data.shards import is_sharded_log
    from linkedout.synthetic import synthetic_log

    path = log_dir(args, events)
    if is_sharded_log(path):
        return path
    shutil.rmtree(path, ignore_errors=True)  # an interrupted write: start it again
    t = time.perf_counter()
    synthetic_log(path, events, n_items=args.items, events_per_shard=args.events_per_shard, seed=args.seed)
    print(f"generated SYNTHETIC {path} in {time.perf_counter() - t:.0f} s (not timed)", file=sys.stderr)
    return path


def ensure_tokens(args: argparse.Namespace) -> Path:
    """A FeatureStore of random float16 tokens for items 0 .. items-1 (resumes a partial write)."""
    import numpy as np

    from linkedout.backbones.base import ItemTokens
    from linkedout.store import FeatureStore

    n_layers, n_tokens, dim = args.token_shape
    path = args.work / f"tokens_i{args.items}_{n_layers}x{n_tokens}x{dim}"
    fields = {"synthetic": "random tokens (benchmarks/scale_train.py)", "shape": [n_layers, n_tokens, dim]}
    store = FeatureStore.open_or_create(
        path, fields, range(n_layers), ["video"] * (n_tokens - 1) + ["new"], dim
    )
    done = store.done_ids()
    rng = np.random.default_rng(0)
    for lo in range(0, args.items, 20_000):
        ids = [str(i) for i in range(lo, min(lo + 20_000, args.items))]
        tokens = rng.standard_normal((len(ids), n_layers, n_tokens, dim), dtype=np.float32).astype(np.float16)
        todo = [ItemTokens(i, t) for i, t in zip(ids, tokens, strict=True) if i not in done]
        store.append(todo)
    return path


def child(args: argparse.Namespace) -> dict:
    """One epoch of `linkedout train` on a sharded log; prints the measurements as JSON."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from linkedout.data.protocol import get_protocol
    from linkedout.train.recipes import recipe
    from linkedout.train.run import DatasetSpec, prepare_split, run_experiment

    protocol = get_protocol("recbole")
    settings = {"loss": "inbatch", "logq": True, "epochs": 1, "batch_size": args.batch_size}
    settings["precision"] = args.precision
    settings["sparse_ids"] = args.sparse_ids
    if args.encoder != "id":
        settings |= {"item_encoder": args.encoder, "features": str(args.features)}
    model_config, train_config = recipe("sasrec", protocol.name, **settings)
    spec = DatasetSpec(path=str(args.child), eval_users=args.eval_users)
    t = time.perf_counter()
    prepared = prepare_split(spec, protocol)
    load_split = time.perf_counter() - t
    result = run_experiment(spec, protocol, model_config, train_config, prepared=prepared, progress=False)
    epoch = result.history[0]
    return {
        "events": result.data["n_events"],
        "items": result.data["n_items"],
        "users": result.data["n_users"],
        "shards": result.data["shards"],
        "encoder": args.encoder,
        "loss": "inbatch+logQ",
        "batch_size": train_config.batch_size,
        "precision": train_config.precision,
        "sparse_ids": train_config.sparse_ids,
        "torch_threads": torch.get_num_threads(),
        "train_targets": epoch["targets"],
        "events_per_s": epoch["targets"] / epoch["train_seconds"],
        "train_seconds": epoch["train_seconds"],
        "valid_seconds": epoch["seconds"] - epoch["train_seconds"],
        "test_seconds": result.data["test_seconds"],
        "load_split_seconds": load_split,
        "eval_users": result.data["evaluated"]["test_users"],
        "peak_rss_gb": result.peak_rss_mb / 1024,
        "test_after_one_epoch": {k: result.metrics[k] for k in ("NDCG@10", "HR@10")},
        "log_fingerprint": result.data["fingerprint"],
        "synthetic": result.data["source"],
    }


def measure(args: argparse.Namespace, results: dict) -> None:
    runs = results.setdefault("runs", {})
    made_by = provenance()  # at the start: the code the runs below are made with
    for events in args.events:
        path = ensure_log(args, events)
        for encoder in args.encoders:
            key = run_key(events, encoder, args.items, args.precision, args.sparse_ids)
            if key in runs and not args.force:
                print(f"{key}: kept from {args.out.name} (--force remeasures)")
                continue
            cmd = [sys.executable, __file__, "--child", str(path), "--encoder", encoder]
            cmd += ["--batch-size", str(args.batch_size), "--eval-users", str(args.eval_users)]
            cmd += ["--threads", str(args.threads), "--precision", args.precision]
            cmd += ["--sparse-ids", str(args.sparse_ids)]
            if encoder != "id":
                cmd += ["--features", str(ensure_tokens(args))]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["provenance"] = made_by
            runs[key] = row
            print(
                f"{key}: {row['events_per_s']:,.0f} events/s, epoch {row['train_seconds']:.0f} s, "
                f"peak RSS {row['peak_rss_gb']:.2f} GB, load+split {row['load_split_seconds']:.1f} s"
            )
            results["goals"] = goals(runs)
            save(args.out, results)


def run_key(events: int, encoder: str, items: int, precision: str, sparse_ids: int) -> str:
    """A run's key in the results; rows measured before --sparse-ids existed (dense AdamW) keep theirs."""
    key = f"{events}/{encoder}/{items}/{precision}"
    return key + (f"/sparse{sparse_ids}" if sparse_ids else "")


def goals(runs: dict) -> dict:
    """Each size against the smallest measured, per (encoder, catalogue)."""
    out: dict = {}
    groups: dict[str, list[dict]] = {}
    for row in runs.values():
        group = run_key(0, row["encoder"], row["items"], row["precision"], row.get("sparse_ids", 0))
        groups.setdefault(group.split("/", 1)[1], []).append(row)
    for name, rows in groups.items():
        rows.sort(key=lambda r: r["events"])
        base = rows[0]
        out[name] = {
            str(r["events"]): {
                "throughput_vs_smallest": r["events_per_s"] / base["events_per_s"],
                "rss_vs_smallest": r["peak_rss_gb"] / base["peak_rss_gb"],
                "met": r["events_per_s"] >= GOAL_THROUGHPUT * base["events_per_s"]
                and r["peak_rss_gb"] <= GOAL_RSS_RATIO * base["peak_rss_gb"]
                and r["peak_rss_gb"] < GOAL_RSS_GB,
            }
            for r in rows[1:]
        }
        out[name]["smallest"] = base["events"]
    out["goal"] = (
        f"events/s >= {GOAL_THROUGHPUT}x the smallest log's; "
        f"peak RSS <= {GOAL_RSS_RATIO}x and < {GOAL_RSS_GB} GB"
    )
    return out


def accuracy(args: argparse.Namespace, results: dict) -> None:
    folder = args.work / "accuracy"
    folder.mkdir(parents=True, exist_ok=True)
    table: dict = results.get("accuracy_ml100k", {}).get("losses", {})

    def train(loss: str, seed: int) -> None:
        path = folder / f"sasrec_{loss}_s{seed}.json"
        if (path.exists() and not args.force) or args.collect_only:
            return
        cmd = [sys.executable, "-m", "linkedout.train", "--dataset", "ml-100k"]
        cmd += ["--protocol", "recbole", "--model", "sasrec", *LOSSES[loss]]
        cmd += ["--seed", str(seed), "--quiet", "--json", str(path) + ".part"]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        Path(str(path) + ".part").replace(path)

    # each run is its own one-thread process: --jobs of them at once
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: train(*job), [(loss, seed) for loss in args.losses for seed in args.seeds]))
    for loss in args.losses:
        rows, missing = [], []
        for seed in args.seeds:
            path = folder / f"sasrec_{loss}_s{seed}.json"
            if not path.exists():  # --collect-only: a run not finished (yet)
                missing.append(seed)
                continue
            run = json.loads(path.read_text())
            rows.append(
                {
                    "seed": seed,
                    **{k: run["metrics"][k] for k in ("NDCG@10", "HR@10", "NDCG@20", "HR@20")},
                    "best_epoch": run["best_epoch"],
                    "train_seconds": run["train_seconds"],
                }
            )
        if not rows:
            print(f"ml-100k sasrec {loss}: no finished run")
            continue
        table[loss] = {
            "options": LOSSES[loss],
            "missing_seeds": missing,
            "runs": rows,
            "mean": {k: statistics.mean(r[k] for r in rows) for k in ("NDCG@10", "HR@10")},
            "std": {k: statistics.pstdev(r[k] for r in rows) for k in ("NDCG@10", "HR@10")},
        }
        table[loss]["provenance"] = provenance()  # the call that collected this loss's runs
        print(
            f"ml-100k sasrec {loss}: NDCG@10 {table[loss]['mean']['NDCG@10']:.4f} "
            f"+- {table[loss]['std']['NDCG@10']:.4f} over seeds {[r['seed'] for r in rows]}"
        )
    protocol = run["protocol"]["description"]
    results["accuracy_ml100k"] = {
        "protocol": protocol,
        "note": "each loss: its `options` on top of the tuned sasrec/recbole recipe (batch 32 unless the "
        "options say otherwise); OMP_NUM_THREADS=1 per run; each provenance here is the call that "
        "collected the runs, which may have been made by earlier calls (kept under --work/accuracy)",
        "losses": table,
        "provenance": provenance(),
    }
    save(args.out, results)


def save(path: Path, results: dict) -> None:
    """Write the results; the file's own provenance is the last command that wrote it (each run and
    the accuracy table keep the provenance they were measured with)."""
    results["provenance"] = provenance()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000], help="log sizes to measure")
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size (the same for every log)")
    ap.add_argument("--encoders", nargs="+", default=["id", "linkedout"], choices=["id", "linkedout"])
    ap.add_argument("--events-per-shard", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=128, help="training windows per step")
    ap.add_argument("--eval-users", type=int, default=10_000)
    ap.add_argument("--token-shape", type=int, nargs=3, default=[4, 2, 64], metavar=("L", "S", "D"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    # fp32 by default: under bf16 autocast oneDNN compiles and keeps a matmul per shape, and the
    # in-batch softmax has a new shape (the batch's distinct targets) at nearly every step, so the
    # process would grow with the number of steps (see models/sequential.py on the same for ``ce``)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    # the 100k-row item table on sparse gradients + SparseAdam (train/optim.py): a step then updates
    # the rows it looked up instead of the whole table; 0 measures dense AdamW (the rows before it)
    ap.add_argument("--sparse-ids", type=int, default=10_000, help="ID tables of >= N rows go sparse")
    ap.add_argument("--seed", type=int, default=0, help="of the synthetic logs")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="logs and token store (kept)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="remeasure runs already in --out")
    ap.add_argument("--accuracy", action="store_true", help="only the ml-100k loss comparison")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--losses",
        nargs="+",
        default=["ce", "inbatch"],
        choices=list(LOSSES),
        help="--accuracy: losses to run",
    )
    ap.add_argument("--jobs", type=int, default=1, help="--accuracy: runs at once (one thread each)")
    ap.add_argument(
        "--collect-only", action="store_true", help="--accuracy: tabulate finished runs, start none"
    )
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--encoder", default="id", help=argparse.SUPPRESS)
    ap.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["benchmark"] = "scale_train"
    results["data"] = "SYNTHETIC logs (linkedout.synthetic.synthetic_log); accuracy on ml-100k"
    if args.accuracy:
        accuracy(args, results)
    else:
        measure(args, results)


if __name__ == "__main__":
    main()
