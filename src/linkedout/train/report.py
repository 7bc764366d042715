"""Results tables for the terminal: one row per run, the protocol printed under every table."""

from __future__ import annotations


def print_results_table(rows: list[dict], protocol_line: str, title: str) -> None:
    """One row per result; the protocol line is printed under every table on purpose."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    table = Table(title=title)
    metric_names = list(rows[0]["metrics"]) if rows else []
    shown = [m for m in metric_names if m.split("@")[0] in ("HR", "NDCG", "MRR")]
    for col in ["dataset", "model", "seed", *shown, "best epoch", "train s"]:
        table.add_column(col, justify="right" if col not in ("dataset", "model") else "left")
    for r in rows:
        label = r.get("label") or (
            r["model"] if r.get("item_encoder", "id") == "id" else f"{r['model']} + {r['item_encoder']}"
        )
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
    if not console.is_terminal:
        # piped or logged (CI, `make demo | tee`): rich would fold the table into 80 columns and
        # elide the numbers; a log line may be as long as the table needs
        unbounded = console.options.update_width(10_000)
        console.width = max(console.width, Measurement.get(console, unbounded, table).maximum)
    console.print(table)
    console.print(f"[dim]{protocol_line}[/dim]")


def run_label(run: dict) -> str:
    """``sasrec`` runs by item encoder; content encoders fused with the ID get ``+ id`` (DFF always is)."""
    if "label" in run:
        return run["label"]
    enc = run.get("item_encoder", "id")
    fused = run.get("model_config", {}).get("id_fusion") and enc not in ("id", "dff")
    return enc + (" + id" if fused else "")


def markdown_encoder_table(runs: list[dict], metrics: tuple[str, ...] = ("HR@10", "NDCG@10")) -> str:
    """Per protocol: one row per item encoder, mean ± std over its seeds for all / warm / cold test
    users, best epoch, seconds per epoch and peak RSS. For docs/benchmarks.md."""
    import numpy as np

    lines = []
    for name in dict.fromkeys(r["protocol"]["name"] for r in runs):
        group = [r for r in runs if r["protocol"]["name"] == name]
        lines += [f"Protocol: {group[0]['protocol']['description']}", ""]
        cold = bool(group[0].get("metrics_cold"))
        parts = [("metrics", "all")] + ([("metrics_warm", "warm"), ("metrics_cold", "cold")] if cold else [])
        if cold and group[0].get("metrics_cold_among_cold"):
            parts.append(("metrics_cold_among_cold", "cold among cold"))
        header = [f"{m} ({label})" for _, label in parts for m in metrics]
        lines.append("| encoder | " + " | ".join(header) + " | best epoch | s/epoch | peak RSS MB |")
        lines.append("|---" * (len(header) + 4) + "|")
        for label in dict.fromkeys(run_label(r) for r in group):
            rs = [r for r in group if run_label(r) == label]
            cells = []
            for key, _ in parts:
                for m in metrics:
                    v = np.array([r[key][m] for r in rs])
                    cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
            ep = np.mean([r["best_epoch"] for r in rs])
            spe = np.mean([r["seconds_per_epoch"] for r in rs])
            rss = max(r["peak_rss_mb"] for r in rs)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {ep:.0f} | {spe:.1f} | {rss:.0f} |")
        lines.append(f"\n(seeds {sorted({r['seed'] for r in group})})\n")
    return "\n".join(lines)
