"""LightGCN cold items (issue 12): which rule for items without edges, and how much cold-start training
(item isolation), on VALIDATION only. Writes benchmarks/results/lightgcn_cold.json.

    .venv/bin/python benchmarks/lightgcn_cold.py [--features id text text-layers] [--isolate 0 0.1 0.2 0.4]
        [--seeds 0] [--out benchmarks/results/lightgcn_cold.json]

ml-100k, microlens protocol, 20% cold items (as benchmarks/families.py), lightgcn's recipe. Per
(feature, isolate share, rule, seed): one training run, then validation NDCG@10 / HR@10 on all /
warm / cold / cold-among-cold validation users. The two rules (``self``: an item without edges keeps
its layer-0 vector; ``zero``: layer 0 / (K + 1)) only differ in training when items are isolated, so
without isolation one trained model is evaluated under both. Test metrics are not computed here.
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


def valid_metrics(model, data_split) -> dict[str, dict[str, float]]:
    from linkedout.train.evaluate import evaluate

    return {s: evaluate(model, data_split, "valid", subset=s) for s in SUBSETS}


def one_setting(feature: str, isolate: float, rules: list[str], seed: int, prepared) -> list[dict]:
    """Train once (rule ``rules[0]``), evaluate validation under each of ``rules``."""
    from linkedout.samples import cache_dir
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
        isolated=rules[0],
        **settings,
    )
    seed_everything(seed)
    model, data_split, _ = build_for_split(mc, prepared[0])
    t0 = time.perf_counter()
    result = train(model, data_split, tc, progress=False)
    seconds = time.perf_counter() - t0
    rows = []
    for rule in rules:
        model.isolated = rule
        model.train()  # drops the cached final vectors
        model.eval()
        rows.append(
            {
                "feature": feature,
                "isolate_items": isolate,
                "rule": rule,
                "trained_with_rule": rules[0],
                "seed": seed,
                "best_epoch": result.best_epoch,
                "train_seconds_busy_machine": round(seconds, 1),
                "valid": valid_metrics(model, data_split),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", nargs="+", default=["id", "text", "text-layers"])
    ap.add_argument("--isolate", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    ap.add_argument("--rules", nargs="+", default=["self", "zero"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lightgcn_cold.json"))
    args = ap.parse_args()

    from linkedout.data.protocol import get_protocol
    from linkedout.train.run import DatasetSpec, prepare_split

    made_by = provenance()
    previous = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    key = lambda r: (r["feature"], r["isolate_items"], r["rule"], r["seed"])  # noqa: E731
    done = {key(r): r for r in previous}
    prepared = prepare_split(DatasetSpec("ml-100k"), get_protocol("microlens", cold_items=0.2))
    for feature in args.features:
        for isolate in args.isolate:
            for seed in args.seeds:
                # without isolation the rule does not change training: one model, both rules
                groups = [args.rules] if isolate == 0 else [[r] for r in args.rules]
                for rules in groups:
                    if all((feature, isolate, r, seed) in done for r in rules):
                        continue
                    for row in one_setting(feature, isolate, rules, seed, prepared):
                        row["provenance"] = made_by
                        done[key(row)] = row
                        v = row["valid"]
                        print(
                            f"{feature} isolate {isolate:.2f} {row['rule']} seed {seed}: valid NDCG@10 "
                            + " ".join(f"{s} {v[s]['NDCG@10']:.4f}" for s in SUBSETS)
                            + f" (epoch {row['best_epoch']}, {row['train_seconds_busy_machine']} s)",
                            flush=True,
                        )
                    args.out.write_text(
                        json.dumps({"provenance": made_by, "runs": list(done.values())}, indent=1)
                    )


if __name__ == "__main__":
    main()
