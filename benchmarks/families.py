"""Features x recommender families ("Describe What You See", issue 12): which item-vector source helps
which kind of recommender, warm and cold-start, under both protocols, mean ± std over seeds.

    .venv/bin/python benchmarks/families.py [--datasets ml-100k clips-sim] [--protocols recbole microlens]
        [--families sasrec twotower bpr lightgcn tiger] [--features id text text-layers]
        [--seeds 0 1 2] [--cold 0.2] [--jobs 1] [--out benchmarks/results/families.json]
    .venv/bin/python benchmarks/families.py --table benchmarks/results/families.json   # table only

Datasets and their features (a feature a dataset does not have is skipped):
- ``ml-100k`` (REAL logs): ``id``; ``text`` = one MiniLM sentence vector of the item's metadata
  ("title (year); genres") through the ``caption`` item encoder - the Describe-What-You-See path, but
  the text is metadata, not a Video-LLM caption (MovieLens has no videos); ``text-layers`` = MiniLM's
  layer tokens of the same text through the LinkedOut fuser.
- ``clips-sim`` (SIMULATED users on REAL bench-tier clips, see benchmarks/video_simulated.py):
  ``id``; ``frames`` = EfficientNet-Lite0 layer tokens through the LinkedOut fuser; ``audio`` =
  YAMNet segment tokens (mean of layers encoder). Clips without an audio track have no audio features:
  those items are excluded from ranking in the audio rows (the run JSON says how many).
Every run is a fresh subprocess (its own peak RSS) writing one row; the output file is rewritten after
every run and runs already in it are skipped, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provenance import provenance

FEATURES = {  # dataset -> feature label -> (item encoder spec, store name or None)
    "ml-100k": {
        "id": ("id", None),
        "text": ("caption", "ml-100k-caption"),
        "text-layers": ("linkedout", "ml-100k-text"),
    },
    "clips-sim": {
        "id": ("id", None),
        "frames": ("linkedout", "bench-frames"),
        "audio": ("mean", "bench-audio"),
    },
}
SIM_USERS, SIM_STAY = 3000, 0.8


def feature_stores(dataset: str, wanted: list[str]) -> dict[str, str]:
    """Feature stores the runs need, extracted on first use (resumable) into $LINKEDOUT_CACHE/features."""
    from linkedout.backbones import get_backbone
    from linkedout.data.catalog import Catalog, catalog_from_item_table
    from linkedout.data.formats import load_interactions
    from linkedout.extract import extract
    from linkedout.samples import cache_dir, fetch_samples, resolve_dataset

    out = {}
    for label in wanted:
        _, store = FEATURES[dataset][label]
        if store is None:
            continue
        path = cache_dir() / "features" / store
        if dataset == "ml-100k":
            loaded = load_interactions(resolve_dataset("ml-100k"))
            catalog = catalog_from_item_table(loaded.item_meta, loaded.interactions.item_ids)
            backbone = "caption" if label == "text" else "text"
        else:
            catalog = Catalog.from_samples(fetch_samples("bench", quiet=True))
            backbone = "frames" if label == "frames" else "audio"
        extract(catalog, get_backbone(backbone), path, batch_size=64, progress=False)
        out[label] = str(path)
    return out


def simulated_log(seed: int, directory: Path) -> Path:
    """The clips-sim log of ``seed`` as CSV (what benchmarks/video_simulated.py simulates)."""
    from linkedout.data.catalog import Catalog
    from linkedout.samples import fetch_samples
    from video_simulated import simulate_log

    catalog = Catalog.from_samples(fetch_samples("bench", quiet=True))
    sources = [str(it.extra["source"]) for it in catalog]
    path = directory / f"clips-sim-{seed}.csv"
    if not path.exists():
        rows = simulate_log(sources, SIM_USERS, SIM_STAY, seed)
        path.write_text("user,item,timestamp\n" + "".join(f"u{u},{catalog[i].id},{t}\n" for u, i, t in rows))
    return path


def one_run(job: dict, store: str | None) -> dict:
    from linkedout.data.protocol import get_protocol
    from linkedout.train.recipes import encoder_settings, recipe
    from linkedout.train.run import DatasetSpec, run_experiment

    proto = get_protocol(job["protocol"], cold_items=job["cold"] or None)
    encoder, _ = FEATURES[job["dataset"]][job["feature"]]
    settings = encoder_settings(encoder)
    mc, tc = recipe(job["family"], proto.name, seed=job["seed"], features=store, **settings)
    if job["dataset"] == "ml-100k":
        spec = DatasetSpec("ml-100k")
    else:
        log = simulated_log(job["seed"], Path(os.environ.get("LINKEDOUT_SIM_DIR", "/tmp")))
        spec = DatasetSpec(str(log), user_col="user", item_col="item", time_col="timestamp")
    r = run_experiment(spec, proto, mc, tc, progress=False)
    row = r.to_json()
    row["seconds_per_epoch"] = r.train_seconds / max(len(row.pop("history")), 1)
    return row


def job_key(job: dict) -> tuple:
    return (job["dataset"], job["protocol"], job["cold"], job["family"], job["feature"], job["seed"])


def markdown_table(runs: list[dict]) -> str:
    """Per dataset and protocol: family x feature rows, mean ± std of NDCG@10 and HR@10 over seeds on
    all / warm / cold / cold-among-cold test users, best epoch, seconds to the best epoch."""
    import numpy as np

    lines = []
    parts = [("metrics", "all"), ("metrics_warm", "warm"), ("metrics_cold", "cold"),
             ("metrics_cold_among_cold", "cold among cold")]  # fmt: skip
    for ds, proto in dict.fromkeys((r["job"]["dataset"], r["protocol"]["name"]) for r in runs):
        group = [r for r in runs if r["job"]["dataset"] == ds and r["protocol"]["name"] == proto]
        label = "SIMULATED users on real clips" if ds == "clips-sim" else ds
        lines += [f"**{label}** - {group[0]['protocol']['description']}", ""]
        header = [f"{m} {p}" for _, p in parts for m in ("NDCG@10", "HR@10")]
        lines.append("| family | feature | " + " | ".join(header) + " | best epoch | s to best | seeds |")
        lines.append("|---" * (len(header) + 5) + "|")
        for fam, feat in dict.fromkeys((r["job"]["family"], r["job"]["feature"]) for r in group):
            rs = [r for r in group if (r["job"]["family"], r["job"]["feature"]) == (fam, feat)]
            cells = []
            for key, _ in parts:
                for m in ("NDCG@10", "HR@10"):
                    v = np.array([r[key].get(m, np.nan) for r in rs], dtype=float)
                    cells.append("-" if np.isnan(v).all() else f"{v.mean():.4f} ± {v.std():.4f}")
            ep = np.mean([r["best_epoch"] for r in rs])
            stb = np.mean([r["seconds_to_best"] for r in rs])
            lines.append(
                f"| {fam} | {feat} | " + " | ".join(cells) + f" | {ep:.0f} | {stb:.0f} | {len(rs)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "clips-sim"])
    ap.add_argument("--protocols", nargs="+", default=["recbole", "microlens"])
    ap.add_argument("--families", nargs="+", default=["sasrec", "twotower", "bpr", "lightgcn", "tiger"])
    ap.add_argument("--features", nargs="+", default=["id", "text", "text-layers", "frames", "audio"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cold", type=float, default=0.2, help="share of items held out of training")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (threads split between them)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/families.json"))
    ap.add_argument("--table", type=Path, nargs="+", help="only print the table of earlier --out files")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(markdown_table([r for f in args.table for r in json.loads(f.read_text())["runs"]]))
        return
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(one_run(job, job.pop("store"))))
        return

    made_by = provenance()  # before the first write: this run's own output must not mark the tree dirty
    previous = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    done = {job_key(r["job"]): r for r in previous}
    jobs = []
    for ds in args.datasets:
        features = [f for f in args.features if f in FEATURES[ds]]
        stores = feature_stores(ds, features)
        for protocol in args.protocols:
            for family in args.families:
                for feature in features:
                    for seed in args.seeds:
                        job = {"dataset": ds, "protocol": protocol, "cold": args.cold, "family": family,
                               "feature": feature, "seed": seed}  # fmt: skip
                        if job_key(job) not in done:
                            jobs.append({**job, "store": stores.get(feature)})
    print(f"{len(jobs)} runs to go ({len(done)} already in {args.out})", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads}

    def launch(job: dict) -> None:
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", json.dumps(job)]
        ran = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        job = {k: v for k, v in job.items() if k != "store"}
        if ran.returncode:
            print(f"FAILED {job}:\n{ran.stderr[-1500:]}", file=sys.stderr, flush=True)
            return
        row = json.loads(ran.stdout.strip().splitlines()[-1])
        row["job"] = job
        row["provenance"] = made_by
        done[job_key(job)] = row
        cold = row["metrics_cold"].get("NDCG@10", float("nan"))
        print(
            f"{job['dataset']} {job['protocol']} {job['family']:9s} {job['feature']:12s} seed {job['seed']}: "
            f"NDCG@10 {row['metrics']['NDCG@10']:.4f} cold {cold:.4f} epoch {row['best_epoch']} "
            f"{time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"provenance": made_by, "runs": list(done.values())}, indent=1))

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(launch, jobs))
    print()
    print(markdown_table(list(done.values())))


if __name__ == "__main__":
    main()
