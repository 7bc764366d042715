"""LightGCN cold items (issue 12): how much of its layer-0 (content) vector an item without training
edges keeps (``--isolated-scale``), and whether cold-start training (``--isolate-items``) helps, on
VALIDATION only. Writes benchmarks/results/lightgcn_cold.json.

    .venv/bin/python benchmarks/lightgcn_cold.py [--features id text text-layers] [--isolate 0]
        [--scales 0.4 0.45 0.5 ...] [--seeds 0 1] [--out benchmarks/results/lightgcn_cold.json]
    .venv/bin/python benchmarks/lightgcn_cold.py --summary RESULTS.json ... [--scales ...]   # table only

ml-100k, microlens protocol, 20% cold items (as benchmarks/families.py), lightgcn's recipe. Per
(feature, isolate share, seed): one training run (cold items do not take part in training, so
without isolation the scale cannot change it), then validation NDCG@10 / HR@10 on all / warm / cold /
cold-among-cold validation users for every scale (``formula`` = 1/(K+1), LightGCN's alpha_0). With
``--isolate`` > 0, the isolated items of a training step get the scale too, so training uses
``--train-scale``. Test metrics are not computed here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from provenance import provenance

STORES = {"id": None, "text": "ml-100k-caption", "text-layers": "ml-100k-text"}
ENCODERS = {"id": "id", "text": "caption", "text-layers": "linkedout"}
SUBSETS = ("all", "warm", "cold", "cold-among-cold")


def one_setting(feature: str, isolate: float, train_scale, scales: list, seed: int, prepared) -> list[dict]:
    """Train once, evaluate validation with each of ``scales`` (None = 1/(K+1))."""
    from linkedout.samples import cache_dir
    from linkedout.train.evaluate import evaluate
    from linkedout.train.recipes import encoder_settings, recipe
    from linkedout.train.run import build_for_split
    from linkedout.train.trainer import seed_everything, train

    store = STORES[feature]
    features = str(cache_dir() / "features" / store) if store else None
    settings = encoder_settings(ENCODERS[feature])
    mc, tc = recipe(
        "lightgcn",
        "microlens",
        seed=seed,
        features=features,
        isolate_items=isolate,
        isolated_scale=train_scale,
        **settings,
    )
    mc.isolated_scale = train_scale  # recipe() skips None overrides: None here means 1/(K+1)
    seed_everything(seed)
    model, data_split, _ = build_for_split(mc, prepared)
    t0 = time.perf_counter()
    result = train(model, data_split, tc, progress=False)
    seconds = time.perf_counter() - t0
    rows = []
    for scale in scales:
        model.isolated_scale = scale
        model.train()  # drops the cached final vectors
        model.eval()
        rows.append(
            {
                "feature": feature,
                "isolate_items": isolate,
                "train_scale": train_scale,
                "scale": scale,
                "scale_value": model.new_item_scale,
                "seed": seed,
                "best_epoch": result.best_epoch,
                "train_seconds_busy_machine": round(seconds, 1),
                "valid": {s: evaluate(model, data_split, "valid", subset=s) for s in SUBSETS},
            }
        )
    return rows


def summary(paths: list[Path], scales: list[float]) -> str:
    """Markdown: per (feature, isolate share, scale), validation NDCG@10 on all / warm / cold /
    cold-among-cold users, mean ± std over the seeds in ``paths``."""
    import numpy as np

    runs = [r for p in paths for r in json.loads(p.read_text())["runs"]]
    runs = [r for r in runs if any(abs(r["scale_value"] - s) < 1e-3 for s in scales)]
    head = ["feature", "isolate", "scale", "seeds", *(f"valid NDCG@10 {s}" for s in SUBSETS)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    keys = sorted({(r["feature"], r["isolate_items"], round(r["scale_value"], 3)) for r in runs})
    for feature, isolate, scale in keys:
        rs = [
            r
            for r in runs
            if (r["feature"], r["isolate_items"], round(r["scale_value"], 3)) == (feature, isolate, scale)
        ]
        cells = []
        for s in SUBSETS:
            v = np.array([r["valid"][s]["NDCG@10"] for r in rs])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
        lines.append(f"| {feature} | {isolate} | {scale:.3f} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", nargs="+", default=["id", "text", "text-layers"])
    ap.add_argument("--isolate", type=float, nargs="+", default=[0.0])
    ap.add_argument("--train-scale", type=float, default=None, help="scale while training (with --isolate)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lightgcn_cold.json"))
    ap.add_argument("--summary", type=Path, nargs="+", help="only print these results files' table")
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary, [1 / 3, *args.scales]))
        return

    from linkedout.data.protocol import get_protocol
    from linkedout.train.run import DatasetSpec, prepare_split

    made_by = provenance()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = lambda r: (r["feature"], r["isolate_items"], r["train_scale"], r["scale"], r["seed"])  # noqa: E731
    done = {key(r): r for r in previous.get("runs", [])}
    scales = [None, *args.scales]
    data_split, _ = prepare_split(DatasetSpec("ml-100k"), get_protocol("microlens", cold_items=0.2))
    for feature in args.features:
        for isolate in args.isolate:
            train_scale = args.train_scale if isolate > 0 else None
            for seed in args.seeds:
                if all((feature, isolate, train_scale, s, seed) in done for s in scales):
                    continue
                for row in one_setting(feature, isolate, train_scale, scales, seed, data_split):
                    row["provenance"] = made_by
                    done[key(row)] = row
                    v = row["valid"]
                    print(
                        f"{feature} isolate {isolate:.2f} seed {seed} scale {row['scale_value']:.3f}: valid "
                        + " ".join(f"{s} {v[s]['NDCG@10']:.4f}" for s in SUBSETS)
                        + f" (epoch {row['best_epoch']}, {row['train_seconds_busy_machine']} s)",
                        flush=True,
                    )
                out = {**previous, "provenance": made_by, "runs": list(done.values())}
                args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
