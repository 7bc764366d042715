"""Results tables for the terminal: one row per run, the protocol printed under every table."""

from __future__ import annotations


def print_results_table(rows: list[dict], protocol_line: str, title: str) -> None:
    """One row per result; the protocol line is printed under every table on purpose."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    metric_names = list(rows[0]["metrics"]) if rows else []
    shown = [m for m in metric_names if m.split("@")[0] in ("HR", "NDCG", "MRR")]
    for col in ["dataset", "model", "seed", *shown, "best epoch", "train s"]:
        table.add_column(col, justify="right" if col not in ("dataset", "model") else "left")
    for r in rows:
        label = r["model"] if r.get("item_encoder", "id") == "id" else f"{r['model']} + {r['item_encoder']}"
        parts = [("", r["metrics"])]
        if r.get("metrics_cold"):
            parts += [(" (warm)", r["metrics_warm"]), (" (cold)", r["metrics_cold"])]
        for suffix, metrics in parts:
            table.add_row(
                r["dataset"],
                label + suffix,
                str(r["seed"]),
                *[f"{metrics[m]:.4f}" for m in shown],
                str(r["best_epoch"]),
                f"{r['train_seconds']:.1f}",
            )
    console = Console()
    console.print(table)
    console.print(f"[dim]{protocol_line}[/dim]")
