"""Item encoders on real MovieLens-100K logs with text features (MiniLM over "title (year); genres"):
id-only, caption-text, last-layer, mean-of-layers, DFF and LinkedOut, all with the SASRec user encoder,
warm and cold-start, under the given protocols, mean and std over seeds.

    .venv/bin/python benchmarks/item_encoders.py [--protocols microlens recbole] [--seeds 0 1 2]
        [--encoders id caption last mean dff linkedout] [--cold 0 0.2] [--losses ce inbatch]
        [--jobs 2] [--out benchmarks/results/item_encoders.json]
    .venv/bin/python benchmarks/item_encoders.py --table OUT1.json OUT2.json   # merged table, no runs

``--losses``: ``ce`` is the recipe's full softmax; ``inbatch`` is the in-batch softmax with the logQ
correction (``--loss inbatch --logq``), every other setting the recipe's; its runs are labelled
"ENCODER inbatch". Features are extracted once into $LINKEDOUT_CACHE/features/ (resumable). Every
run is a fresh subprocess so its peak RSS is its own. Prints a markdown table for docs/benchmarks.md.
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

from linkedout.train.report import markdown_encoder_table
from provenance import provenance

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def feature_stores() -> dict[str, Path]:
    """Text-layer and caption stores for ml-100k's items (extracted once, then reused)."""
    from linkedout.backbones import get_backbone
    from linkedout.data.catalog import catalog_from_item_table
    from linkedout.data.formats import load_interactions
    from linkedout.extract import extract
    from linkedout.samples import cache_dir, resolve_dataset

    loaded = load_interactions(resolve_dataset("ml-100k"))
    catalog = catalog_from_item_table(loaded.item_meta, loaded.interactions.item_ids)
    stores = {}
    for name in ("text", "caption"):
        path = cache_dir() / "features" / f"ml-100k-{name}"
        extract(catalog, get_backbone(name), path, batch_size=64, progress=False)
        stores[name] = path
    return stores


def one_run(protocol: str, cold: float, encoder: str, seed: int, features: str, loss: str = "ce") -> dict:
    from linkedout.data.protocol import get_protocol
    from linkedout.train.recipes import encoder_settings, recipe
    from linkedout.train.run import DatasetSpec, run_experiment

    proto = get_protocol(protocol, cold_items=cold or None)
    settings = encoder_settings(encoder)
    features = None if settings["item_encoder"] == "id" else features
    in_batch = {"loss": "inbatch", "logq": True} if loss == "inbatch" else {}
    mc, tc = recipe("sasrec", proto.name, seed=seed, features=features, **settings, **in_batch)
    r = run_experiment(DatasetSpec("ml-100k"), proto, mc, tc, progress=False)
    row = r.to_json()
    epochs = len(row.pop("history"))
    row["seconds_per_epoch"] = r.train_seconds / max(epochs, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", nargs="+", default=["microlens", "recbole"])
    ap.add_argument(
        "--encoders",
        nargs="+",
        default=["id", "caption", "last", "mean", "dff", "linkedout", "linkedout+id"],
        help="item encoders; NAME+id fuses a content encoder with the ID embedding",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cold", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--losses", nargs="+", default=["ce"], choices=["ce", "inbatch"])
    ap.add_argument(
        "--table", type=Path, nargs="+", help="only print the merged table of earlier --out files"
    )
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (1 thread each at 2)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/item_encoders.json"))
    ap.add_argument(
        "--one",
        nargs=6,
        metavar=("PROTOCOL", "COLD", "ENCODER", "SEED", "FEATURES", "LOSS"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()
    if args.table:
        print(markdown_encoder_table([r for f in args.table for r in json.loads(f.read_text())["runs"]]))
        return
    if args.one:
        p, c, e, s, f, loss = args.one
        print(json.dumps(one_run(p, float(c), e, int(s), f, loss)))
        return

    made_by = provenance()  # before the first write: this run's own output must not mark the tree dirty
    stores = feature_stores()
    jobs = [
        (protocol, cold, encoder, loss, seed)
        for protocol in args.protocols
        for cold in args.cold
        for encoder in args.encoders
        for loss in args.losses
        for seed in args.seeds
    ]
    # --jobs N: N runs side by side, each on its share of the cores (threads never oversubscribed)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    done_runs: dict[int, dict] = {}

    def launch(i: int) -> None:
        protocol, cold, encoder, loss, seed = jobs[i]
        features = stores["caption" if encoder.startswith("caption") else "text"]
        cmd = [
            sys.executable,
            __file__,
            "--one",
            protocol,
            str(cold),
            encoder,
            str(seed),
            str(features),
            loss,
        ]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            raise RuntimeError(f"run failed: {' '.join(cmd)}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["label"] = encoder if loss == "ce" else f"{encoder} {loss}"
        row["provenance"] = made_by  # per run: --table merges runs of several files
        done_runs[i] = row
        cold_ndcg = row["metrics_cold"].get("NDCG@10", float("nan"))
        print(
            f"{protocol:9s} cold={cold:.1f} {row['label']:20s} seed {seed}: "
            f"NDCG@10 {row['metrics']['NDCG@10']:.4f} cold {cold_ndcg:.4f} "
            f"epoch {row['best_epoch']} {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"provenance": made_by, "runs": [done_runs[j] for j in sorted(done_runs)]}, indent=1)
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(launch, range(len(jobs))))
    runs = [done_runs[j] for j in sorted(done_runs)]
    print()
    print(markdown_encoder_table(runs))


if __name__ == "__main__":
    main()
