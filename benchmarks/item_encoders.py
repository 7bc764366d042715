"""Item encoders on real MovieLens-100K logs with text features (MiniLM over "title (year); genres"):
id-only, caption-text, last-layer, mean-of-layers, DFF and LinkedOut, all with the SASRec user encoder,
warm and cold-start, under the given protocols, mean and std over seeds.

    .venv/bin/python benchmarks/item_encoders.py [--protocols microlens recbole] [--seeds 0 1 2]
        [--encoders id caption last mean dff linkedout] [--cold 0 0.2]
        [--out benchmarks/results/item_encoders.json]

Features are extracted once into $LINKEDOUT_CACHE/features/ (resumable). Every run is a fresh
subprocess so its peak RSS is its own. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def feature_stores() -> dict[str, Path]:
    """Text-layer and caption stores for ml-100k's items (extracted once, then reused)."""
    from linkedout.backbones import get_backbone
    from linkedout.data.catalog import catalog_from_item_table
    from linkedout.data.formats import load_interactions
    from linkedout.data.samples import cache_dir
    from linkedout.extract import extract

    loaded = load_interactions("ml-100k")
    catalog = catalog_from_item_table(loaded.item_meta, loaded.interactions.item_ids)
    stores = {}
    for name in ("text", "caption"):
        path = cache_dir() / "features" / f"ml-100k-{name}"
        extract(catalog, get_backbone(name), path, batch_size=64, progress=False)
        stores[name] = path
    return stores


def one_run(protocol: str, cold: float, encoder: str, seed: int, features: str) -> dict:
    from linkedout.data.protocol import get_protocol
    from linkedout.train.recipes import recipe
    from linkedout.train.run import DatasetSpec, run_experiment

    proto = get_protocol(protocol, cold_items=cold or None)
    mc, tc = recipe(
        "sasrec", proto.name, seed=seed, item_encoder=encoder, features=None if encoder == "id" else features
    )
    r = run_experiment(DatasetSpec("ml-100k"), proto, mc, tc, progress=False)
    row = r.to_json()
    epochs = len(row.pop("history"))
    row["seconds_per_epoch"] = r.train_seconds / max(epochs, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", nargs="+", default=["microlens", "recbole"])
    ap.add_argument("--encoders", nargs="+", default=["id", "caption", "last", "mean", "dff", "linkedout"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cold", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/item_encoders.json"))
    ap.add_argument(
        "--one", nargs=5, metavar=("PROTOCOL", "COLD", "ENCODER", "SEED", "FEATURES"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.one:
        p, c, e, s, f = args.one
        print(json.dumps(one_run(p, float(c), e, int(s), f)))
        return

    stores = feature_stores()
    runs = []
    for protocol in args.protocols:
        for cold in args.cold:
            for encoder in args.encoders:
                for seed in args.seeds:
                    features = stores["caption" if encoder == "caption" else "text"]
                    cmd = [
                        sys.executable,
                        __file__,
                        "--one",
                        protocol,
                        str(cold),
                        encoder,
                        str(seed),
                        str(features),
                    ]
                    t0 = time.perf_counter()
                    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if done.returncode:
                        print(done.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(f"run failed: {' '.join(cmd)}")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    runs.append(row)
                    cold_ndcg = row["metrics_cold"].get("NDCG@10", float("nan"))
                    print(
                        f"{protocol:9s} cold={cold:.1f} {encoder:9s} seed {seed}: "
                        f"NDCG@10 {row['metrics']['NDCG@10']:.4f} cold {cold_ndcg:.4f} "
                        f"epoch {row['best_epoch']} {time.perf_counter() - t0:.0f}s",
                        flush=True,
                    )
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"runs": runs}, indent=1))
    print()
    print(markdown_table(runs))


def markdown_table(runs: list[dict]) -> str:
    lines = []
    for name in dict.fromkeys(r["protocol"]["name"] for r in runs):
        group = [r for r in runs if r["protocol"]["name"] == name]
        lines += [f"Protocol: {group[0]['protocol']['description']}", ""]
        cold = bool(group[0]["metrics_cold"])
        parts = [("metrics", "all")] + ([("metrics_warm", "warm"), ("metrics_cold", "cold")] if cold else [])
        header = [f"{m} ({label})" for key, label in parts for m in METRICS[:2]]
        lines.append("| encoder | " + " | ".join(header) + " | best epoch | s/epoch | peak RSS MB |")
        lines.append("|---" * (len(header) + 4) + "|")
        for enc in dict.fromkeys(r["item_encoder"] for r in group):
            rs = [r for r in group if r["item_encoder"] == enc]
            cells = []
            for key, _ in parts:
                for m in METRICS[:2]:
                    v = np.array([r[key][m] for r in rs])
                    cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
            ep = np.mean([r["best_epoch"] for r in rs])
            spe = np.mean([r["seconds_per_epoch"] for r in rs])
            rss = max(r["peak_rss_mb"] for r in rs)
            lines.append(f"| {enc} | " + " | ".join(cells) + f" | {ep:.0f} | {spe:.1f} | {rss:.0f} |")
        lines.append(f"\n(seeds {sorted({r['seed'] for r in group})})\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
