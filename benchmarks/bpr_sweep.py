"""BPR-MF recipe sweep on ml-100k VALIDATION (issue 12: linkedout bpr behind implicit's BPR on the proven
split). Writes benchmarks/results/bpr_sweep.json; test metrics are never computed here.

    .venv/bin/python benchmarks/bpr_sweep.py --set patience=10 --set weight_decay=0.01,lr=3e-3 [--seeds 0]
    .venv/bin/python benchmarks/bpr_sweep.py --summary              # the sweep, mean ± std over seeds
    .venv/bin/python benchmarks/bpr_sweep.py --peers-summary benchmarks/results/peers_bpr_seeds.json

Protocol: ``recbole`` with the history masked (what `benchmarks/peers.py --linkedout bpr:masked` runs;
linkedout's split of the cached ml-100k equals the split of peers.py's ordered file, which peers.py
asserts). Each ``--set`` is one setting: comma-separated ``field=value`` overrides of the bpr recipe
(ModelConfig or TrainConfig fields; ``base`` = the recipe as it is). Runs already in --out are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from provenance import provenance


def parse_setting(text: str) -> dict:
    if text == "base":
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--set {text!r}: expected field=value[,field=value...] or base")
        try:
            out[key] = json.loads(value)  # numbers, true/false
        except json.JSONDecodeError:
            out[key] = value  # a plain string (e.g. an item encoder's name)
    return out


def summary(path: Path, *, peers: bool) -> str:
    """Markdown: per setting (or per peers.py row), validation (and for peers, test) NDCG@10 / HR@10 as
    mean ± std over the seeds in the file, with the seeds listed."""
    import numpy as np

    runs = json.loads(path.read_text())["runs"]
    group = (lambda r: (r["side"], r["model"])) if peers else (lambda r: (r["model"], r["setting"]))
    cols = (
        [("best_valid_ndcg10", "valid NDCG@10"), ("ndcg10", "test NDCG@10"), ("hr10", "test HR@10")]
        if peers
        else [("valid_ndcg10", "valid NDCG@10"), ("valid_hr10", "valid HR@10"), ("best_epoch", "best epoch")]
    )
    lines = [
        "| " + " | ".join(["row", "seeds", *(c for _, c in cols)]) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for key in dict.fromkeys(group(r) for r in runs):
        rs = sorted((r for r in runs if group(r) == key), key=lambda r: r["seed"])
        cells = []
        for field, _ in cols:
            v = np.array([r[field] for r in rs], dtype=float)
            digits = 1 if field == "best_epoch" else 4
            cells.append(
                f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"
            )
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {' '.join(map(str, key))} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="settings", action="append", default=[], help="field=value,... or base")
    ap.add_argument("--model", default="bpr")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bpr_sweep.json"))
    ap.add_argument("--summary", action="store_true", help="print --out's settings, mean ± std over seeds")
    ap.add_argument("--peers-summary", type=Path, help="print a peers.py results file, mean ± std over seeds")
    args = ap.parse_args()
    if args.summary or args.peers_summary:
        print(summary(args.peers_summary or args.out, peers=bool(args.peers_summary)))
        return

    from linkedout.data.protocol import get_protocol
    from linkedout.train.recipes import recipe
    from linkedout.train.run import DatasetSpec, build_for_split, prepare_split
    from linkedout.train.trainer import seed_everything, train

    made_by = provenance()
    previous = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    key = lambda r: (r["model"], r["setting"], r["seed"])  # noqa: E731
    done = {key(r): r for r in previous}
    protocol = get_protocol("recbole", mask_history=True)
    data_split, _ = prepare_split(DatasetSpec("ml-100k"), protocol)
    for text in args.settings or ["base"]:
        overrides = parse_setting(text)
        for seed in args.seeds:
            if (args.model, text, seed) in done:
                continue
            mc, tc = recipe(args.model, protocol.name, seed=seed, **overrides)
            seed_everything(seed)
            model, split_for_model, _ = build_for_split(mc, data_split)
            t0 = time.perf_counter()
            result = train(model, split_for_model, tc, progress=False)
            row = {
                "model": args.model,
                "setting": text,
                "seed": seed,
                "model_config": mc.to_dict(),
                "train_config": {k: getattr(tc, k) for k in ("lr", "weight_decay", "batch_size", "patience")},
                "valid_ndcg10": round(result.best_valid["NDCG@10"], 4),
                "valid_hr10": round(result.best_valid["HR@10"], 4),
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "seconds_busy_machine": round(time.perf_counter() - t0, 1),
                "protocol": protocol.describe(),
                "provenance": made_by,
            }
            done[key(row)] = row
            print(
                f"{args.model} {text} seed {seed}: valid NDCG@10 {row['valid_ndcg10']:.4f} HR@10 "
                f"{row['valid_hr10']:.4f} best epoch {row['best_epoch']}/{row['epochs_run']} "
                f"({row['seconds_busy_machine']} s)",
                flush=True,
            )
            args.out.write_text(json.dumps({"provenance": made_by, "runs": list(done.values())}, indent=1))


if __name__ == "__main__":
    main()
