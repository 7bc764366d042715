"""SIMULATED users on REAL clips: raw video -> frames backbone (EfficientNet-Lite0 layers) -> every
item encoder -> SASRec -> recommendations, warm and cold-start. Every number this prints is on a
simulated log and must be reported as such.

    .venv/bin/python benchmarks/video_simulated.py [--seeds 0 1 2] [--users 3000] [--stay 0.8]
        [--encoders id last mean dff linkedout linkedout+id] [--cold 0.2]
        [--out benchmarks/results/video_simulated.json]

The catalogue is the bench tier's valid clips (fetched with `linkedout fetch-samples --tier bench`).
The only "truth" the simulation uses is a fact about the files: the package each clip was shipped
in (planetblupi cutscenes, lebiniou visualiser clips, mecavideo lab clips, GNOME help screencasts...).
A simulated user starts at a random clip; each next view is, with probability ``--stay``, another clip
of the same package as the last one, otherwise any clip (so tastes drift). Nobody told the models the
packages: the id-only model can learn them from co-occurrence for warm clips; for a held-out (cold)
clip only what the frames show can place it beside its package-mates. This is a plumbing-and-signal
test of raw video -> recommendations, not a claim about real users.

Caption-text ("Describe What You See") is not run here: the clips have no captions and the CPU
default has no captioner (a Video-LLM writes them; see docs/video-llm.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from provenance import provenance


def simulate_log(sources: list[str], users: int, stay: float, seed: int) -> list[tuple[int, int, int]]:
    """(user, clip index, timestamp) events; sequence lengths 8-30 (views are not repeated in a row)."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    events = []
    for u in range(users):
        item = int(rng.integers(len(sources)))
        for t in range(int(rng.integers(8, 31))):
            events.append((u, item, t))
            mates = [j for j in by_source[sources[item]] if j != item]
            if mates and rng.random() < stay:
                item = int(rng.choice(mates))
            else:
                item = int(rng.choice([j for j in range(len(sources)) if j != item]))
    return events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--stay", type=float, default=0.8)
    ap.add_argument(
        "--encoders", nargs="+", default=["id", "last", "mean", "dff", "linkedout", "linkedout+id"]
    )
    ap.add_argument("--cold", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/video_simulated.json"))
    args = ap.parse_args()
    made_by = provenance()  # before the first write: this run's own output must not mark the tree dirty

    from linkedout.backbones import get_backbone
    from linkedout.data.catalog import Catalog
    from linkedout.data.protocol import get_protocol
    from linkedout.extract import extract
    from linkedout.samples import cache_dir, fetch_samples
    from linkedout.train.recipes import encoder_settings, recipe
    from linkedout.train.report import markdown_encoder_table
    from linkedout.train.run import DatasetSpec, run_experiment

    catalog = Catalog.from_samples(fetch_samples("bench", quiet=True))
    store = cache_dir() / "features" / "bench-frames"
    t0 = time.perf_counter()
    extract(catalog, get_backbone("frames"), store, progress=False)  # resumable: a no-op once done
    print(f"{len(catalog)} clips, frames features in {store} ({time.perf_counter() - t0:.0f} s)", flush=True)
    sources = [str(it.extra["source"]) for it in catalog]

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            log = Path(tmp) / f"simulated-{seed}.csv"
            rows = simulate_log(sources, args.users, args.stay, seed)
            log.write_text(
                "user,item,timestamp\n" + "".join(f"u{u},{catalog[i].id},{t}\n" for u, i, t in rows)
            )
            spec = DatasetSpec(str(log), user_col="user", item_col="item", time_col="timestamp")
            protocol = get_protocol("recbole", cold_items=args.cold or None)
            for encoder in args.encoders:
                settings = encoder_settings(encoder)
                features = None if settings["item_encoder"] == "id" else str(store)
                mc, tc = recipe("sasrec", "recbole", seed=seed, features=features, **settings)
                r = run_experiment(spec, protocol, mc, tc, progress=False)
                row = r.to_json()
                row["seconds_per_epoch"] = r.train_seconds / max(len(row.pop("history")), 1)
                row["label"] = encoder
                row["dataset"] = f"SIMULATED users on {len(catalog)} bench-tier clips (stay={args.stay})"
                runs.append(row)
                cold = row["metrics_cold"].get("NDCG@10", float("nan"))
                print(
                    f"SIMULATED seed {seed} {encoder:12s} NDCG@10 {row['metrics']['NDCG@10']:.4f} "
                    f"warm {row['metrics_warm'].get('NDCG@10', float('nan')):.4f} cold {cold:.4f}",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(
                    json.dumps({"simulated": True, "provenance": made_by, "runs": runs}, indent=1)
                )
    print(f"\nSIMULATED users ({args.users} per seed, stay={args.stay}) on real clips\n")
    print(markdown_encoder_table(runs))


if __name__ == "__main__":
    main()
