"""Ray Data extraction: the same job as `linkedout.extract.pipeline`, spread over a Ray cluster.

::

    driver: catalog ─► todo (the pipeline's _plan: items − store.done_ids() − known decode failures)
        │  ray.data.from_items(rows)                       one block per backbone batch, order kept
        ▼
    decode tasks (CPU, num_cpus=1): decode_clip(sampler, path)   the local engine's worker function
        │  a clip or a DecodeFailure, pickled into one binary cell (see _decode_rows for why)
        ▼
    backbone actor pool: map_batches(_EncodeActor, compute=ActorPoolStrategy(size=actors),
        │                num_gpus=gpus_per_actor)  model built ONCE per actor from the recipe,
        │                item inputs from Extractor.item_input, a bad batch retried item by item
        │  item_id, float16 token bytes, caption, failure reason, timings
        ▼
    driver: iter_batches() ─► store.append(block) + store.record_failures  one Lance commit per block
        ▼
    items no block delivered (their worker died on every try) ─► "backbone: the Ray worker died ..."
        ─► store.compact()

Why it is built like this:

* **One writer.** Only the driver writes, through `FeatureStore.append` (one Lance commit per batch),
  so the store, its fingerprint, its failure records and its resume semantics are the local engine's.
  Ray's own ``Dataset.write_lance`` is not used: in Ray 2.60 it fails with current pylance and would
  store numpy tokens as Ray tensor columns (variable lists to Lance) rather than the store's
  fixed-size float16 lists. Workers send tokens as raw float16 bytes; the driver knows the shape.
* **The model loads once per actor**, rebuilt by an `ExtractorRecipe` (the `ExtractorSpec` plus
  runtime options such as the device) or any picklable factory. A first remote task with the actors'
  resources builds it once to key the store (fingerprint fields, shape, spec): the fingerprint can
  depend on where the model runs (``dtype="auto"`` is bfloat16 on a GPU, float32 on a CPU), so the
  driver, which may have no GPU, does not load it. Each actor checks its own fingerprint against the
  store's before encoding anything.
* **Failures.** An actor that dies mid-batch (out of memory, a segfault) is restarted by Ray and the
  batch is tried again, up to ``_TASK_RETRIES`` more times; a batch that kills every try is set aside
  (``max_errored_blocks``) and its items are recorded as "backbone:" failures, which the next run
  retries. Nothing half-written can result: a block is committed by the driver only once it arrived
  whole.
* **Resume.** The driver is the only writer, so ``kill -9`` of the driver leaves committed blocks and
  nothing else; Ray ends the dead driver's tasks and actors, and a rerun skips ``store.done_ids()``.
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from linkedout.backbones.base import ItemTokens
from linkedout.backbones.extractor import Extractor, ExtractorSpec
from linkedout.data.catalog import Catalog, CatalogItem
from linkedout.extract.decode_worker import decode_clip
from linkedout.extract.pipeline import (
    ExtractError,
    ExtractReport,
    _commit,
    _encode_batch,
    _finish,
    _plan,
    _Progress,
    _stop_if_broken,
    item_input_or_failure,
    store_options,
)
from linkedout.raycluster import connected
from linkedout.store import FeatureStore
from linkedout.video import DecodedClip, FrameSampler

if TYPE_CHECKING:
    import ray.data

__all__ = ["RAY_INSTALL_HINT", "ExtractorRecipe", "extract_ray", "import_ray"]

RAY_INSTALL_HINT = "pip install -e '.[ray]'"
# Tries of a batch whose actor died, after the first: a transient death (a node lost, memory freed
# later) gets another chance; an item that kills its actor every time must not loop forever (Ray
# Data's default for actor pools is to retry without end).
_TASK_RETRIES = 2
ExtractorFactory = Callable[[], Extractor]


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray core
    except ImportError as e:
        raise ImportError(f"--engine ray needs Ray Data ({e}); install it with: {RAY_INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class ExtractorRecipe:
    """How a Ray worker builds the extractor: the spec a store records, plus runtime options
    (``device``, ``batch_size``...) that change where it runs, not its tokens. Picklable and small:
    it travels to every actor, which loads the model itself."""

    spec: ExtractorSpec
    runtime: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Extractor:
        return Extractor.from_spec(self.spec, **self.runtime)


# --------------------------------------------------------------------------------------------------
# cluster


def _check_resources(ray: Any, actors: int, gpus_per_actor: float, cpus_per_actor: float) -> None:
    # Ray would leave actors that ask for absent resources pending forever: say so instead.
    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    if gpus_per_actor and actors * gpus_per_actor > gpus:
        raise ExtractError(
            f"{actors} actor(s) x --gpus-per-actor {gpus_per_actor:g} need {actors * gpus_per_actor:g} "
            f"GPU(s), the Ray cluster has {gpus:g}; use --gpus-per-actor 0 (CPU) or a cluster with GPUs"
        )
    if actors * cpus_per_actor + 1 > cpus:  # decode tasks need a CPU of their own
        raise ExtractError(
            f"{actors} actor(s) x {cpus_per_actor:g} CPU leave no CPU for decode tasks on a cluster of "
            f"{cpus:g} CPU(s); use fewer --actors"
        )


def default_cpus_per_actor(cluster_cpus: float, actors: int, gpus_per_actor: float) -> float:
    """CPUs reserved per backbone actor: 1, or less when that would leave no CPU for decode tasks
    (2 CPU actors on 2 cores: 0.5 each, the other core decodes). A reservation, not a thread count:
    torch's threads are set by ``torch_threads``."""
    if gpus_per_actor:
        return 1.0
    return max(0.1, min(1.0, (cluster_cpus - 1) / actors))


# --------------------------------------------------------------------------------------------------
# what runs on workers


def _describe(build: ExtractorFactory) -> tuple[dict[str, Any], FrameSampler | None, str]:
    """Build the extractor once where actors will run; what keys the store, the sampler, the name."""
    extractor = build()
    return store_options(extractor), extractor.sampler, extractor.backbone.name


_ITEM_COLUMNS = ("item_id", "path", "title", "text")


def _item(row: dict[str, Any]) -> CatalogItem:
    return CatalogItem(row["item_id"], row["path"], title=row["title"], text=row["text"])


def _decode_rows(rows: pa.Table, sampler: FrameSampler) -> pa.Table:
    """Decode task: each row's clip with the local engine's worker function (never raises). The
    outcome travels pickled in one binary cell: the actor needs the exact `DecodedClip` (frames of
    any size, timestamps, warnings) that `Extractor.item_input` takes, and Arrow tensor columns
    would reshape it."""
    decoded, seconds = [], []
    for path in rows.column("path").to_pylist():
        out, secs = decode_clip(sampler, path)
        decoded.append(pickle.dumps(out, protocol=5))
        seconds.append(secs)
    return rows.append_column("decoded", pa.array(decoded, pa.binary())).append_column(
        "decode_seconds", pa.array(seconds, pa.float64())
    )


_RESULT_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("tokens", pa.binary()),  # float16 [L, S, D], C order; null for a failed item
        ("caption", pa.string()),
        ("reason", pa.string()),  # "<stage>: ..." for a failed item, else null
        ("warnings", pa.list_(pa.string())),
        ("frames", pa.int64()),
        ("decode_seconds", pa.float64()),
        ("backbone_seconds", pa.float64()),  # the batch's encode time, on its first row
    ]
)


class _EncodeActor:
    """One per actor: builds the extractor once, then encodes batches of decoded rows."""

    def __init__(self, build: ExtractorFactory, fingerprint: str, torch_threads: int | None) -> None:
        if torch_threads:
            import torch  # the backbones are torch models; set before the first forward

            torch.set_num_threads(torch_threads)
        self.extractor = build()
        if self.extractor.fingerprint() != fingerprint:  # another library version / device on this node
            raise ExtractError(
                f"this worker's extractor has fingerprint {self.extractor.fingerprint()}, the store "
                f"{fingerprint}: {self.extractor.fingerprint_fields()}"
            )

    def __call__(self, rows: pa.Table) -> pa.Table:
        extractor = self.extractor
        n = rows.num_rows
        reasons: list[str | None] = [None] * n
        warnings: list[list[str]] = [[] for _ in range(n)]
        inputs, where = [], []
        decoded_cells = rows.column("decoded").to_pylist() if "decoded" in rows.column_names else [None] * n
        for i, row in enumerate(rows.select(list(_ITEM_COLUMNS)).to_pylist()):
            decoded = pickle.loads(decoded_cells[i]) if decoded_cells[i] is not None else None
            if isinstance(decoded, DecodedClip):
                warnings[i] = list(decoded.warnings)
            given = item_input_or_failure(extractor, _item(row), decoded)
            if isinstance(given, str):
                reasons[i] = given
            else:
                inputs.append(given)
                where.append(i)
        t0 = time.perf_counter()
        tokens, bad = _encode_batch(extractor.backbone, inputs) if inputs else ([], {})
        seconds = time.perf_counter() - t0
        out_tokens: list[bytes | None] = [None] * n
        captions: list[str | None] = [None] * n
        frames = [0] * n
        by_id = {t.item_id: t for t in tokens}
        for given, i in zip(inputs, where, strict=True):
            if given.item_id in bad:
                reasons[i] = bad[given.item_id]
                continue
            got = by_id[given.item_id]
            out_tokens[i] = np.ascontiguousarray(got.tokens, dtype=np.float16).tobytes()
            captions[i] = got.caption
            frames[i] = len(given.frames) if given.frames is not None else 0
        decode_seconds = (
            rows.column("decode_seconds").to_pylist() if "decode_seconds" in rows.column_names else [0.0] * n
        )
        return pa.table(
            {
                "item_id": rows.column("item_id"),
                "tokens": out_tokens,
                "caption": captions,
                "reason": reasons,
                "warnings": warnings,
                "frames": frames,
                "decode_seconds": decode_seconds,
                "backbone_seconds": [seconds] + [0.0] * (n - 1),
            },
            schema=_RESULT_SCHEMA,
        )


# --------------------------------------------------------------------------------------------------
# the driver


@dataclass
class _Settings:
    build: ExtractorFactory
    sampler: FrameSampler | None
    fingerprint: str
    batch_size: int
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    torch_threads: int | None


def _dataset(items: Sequence[CatalogItem], s: _Settings, batch_size: int) -> ray.data.Dataset:
    import ray.data

    rows = [{"item_id": it.id, "path": it.path, "title": it.title, "text": it.text} for it in items]
    # One block per backbone batch: a decode task decodes one batch's clips, and blocks are small
    # enough that the actors and the decoders overlap.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    if s.sampler is not None:
        ds = ds.map_batches(
            _decode_rows,
            fn_kwargs={"sampler": s.sampler},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=1,
        )
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args but has no named parameter for max_task_retries yet
        # (its own docs still say to pass it this way); without it a poison batch retries forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
        return ds.map_batches(
            _EncodeActor,
            fn_constructor_kwargs={
                "build": s.build,
                "fingerprint": s.fingerprint,
                "torch_threads": s.torch_threads,
            },
            compute=ray.data.ActorPoolStrategy(size=s.actors),
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=s.cpus_per_actor,
            num_gpus=s.gpus_per_actor or None,
            max_restarts=-1,  # a dead actor comes back (and loads the model again) ...
            max_task_retries=_TASK_RETRIES,  # ... but a batch that kills it every time is given up on
        )


def _run_pass(
    items: Sequence[CatalogItem],
    s: _Settings,
    batch_size: int,
    store: FeatureStore,
    report: ExtractReport,
    bar: _Progress,
    fails_in_a_row: int,
) -> int:
    """Run ``items`` through the cluster, committing each arriving block; returns the failure streak.
    Blocks whose workers died on every try are skipped (up to all of them): the caller finds their
    items missing. ``batch_size``: items per backbone call."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # store rows follow the catalog, as in the local engine
    ctx.max_errored_blocks = len(items)
    ctx.enable_progress_bars = False  # our own bar (stderr) counts items, failures and the last reason
    ctx.print_on_execution_start = False
    shape = store.shape
    batches = _dataset(items, s, batch_size).iter_batches(batch_size=None, batch_format="pyarrow")
    t_wait = time.perf_counter()
    for block in batches:
        report.decode_wait_seconds += time.perf_counter() - t_wait
        tokens, failures = [], {}
        for row in block.to_pylist():
            report.decode_seconds += row["decode_seconds"]
            report.backbone_seconds += row["backbone_seconds"]
            if row["warnings"]:
                report.warnings[row["item_id"]] = row["warnings"]
            if row["reason"] is not None:
                failures[row["item_id"]] = row["reason"]
                bar.failed(row["item_id"], row["reason"])
            else:
                arr = np.frombuffer(row["tokens"], dtype=np.float16).reshape(shape)
                tokens.append(ItemTokens(row["item_id"], arr, row["caption"]))
                report.frames += row["frames"]
        report.batches += 1
        _commit(store, tokens, failures, report, bar)
        backbone_failures = sum(r.startswith("backbone:") for r in failures.values())
        fails_in_a_row = 0 if tokens else fails_in_a_row + backbone_failures
        _stop_if_broken(fails_in_a_row, report)
        t_wait = time.perf_counter()
    return fails_in_a_row


def extract_ray(
    catalog: Catalog | Sequence[CatalogItem],
    build: ExtractorFactory,
    store_path: str | os.PathLike[str],
    *,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0,
    cpus_per_actor: float | None = None,
    batch_size: int = 8,
    torch_threads: int | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    compact: bool = True,
    progress: bool = True,
    runtime_env: dict[str, Any] | None = None,
) -> ExtractReport:
    """Extract every catalog item not yet in the store at ``store_path`` on a Ray cluster.

    ``build``: a picklable callable that returns the `Extractor` (backbone + frame sampler), run once
    per backbone actor (e.g. `ExtractorRecipe`). ``address``: the cluster (``"auto"``,
    ``"host:port"``); None starts a local Ray for the run, unless this process is already connected.
    ``actors``: backbone actors; ``gpus_per_actor`` / ``cpus_per_actor``: what each reserves (default
    CPUs: `default_cpus_per_actor`). ``torch_threads``: torch's threads in each actor (None: Ray's
    setting). ``runtime_env``: passed to ``ray.init`` when this call connects (e.g. ``env_vars``).
    The rest as in `linkedout.extract.extract`; the same store, fingerprint, failures and resume.
    Raises ExtractError for an unreachable cluster or resources it does not have, ImportError without Ray.
    """
    t_start = time.perf_counter()
    if batch_size < 1 or actors < 1 or gpus_per_actor < 0:
        raise ValueError("batch_size and actors must be >= 1, gpus_per_actor >= 0")
    ray = import_ray()
    items = list(catalog)[: limit if limit is not None else None]
    with connected(ray, address, runtime_env, ExtractError):
        cpus = ray.cluster_resources().get("CPU", 1.0)
        cpa = (
            default_cpus_per_actor(cpus, actors, gpus_per_actor) if cpus_per_actor is None else cpus_per_actor
        )
        _check_resources(ray, actors, gpus_per_actor, cpa)
        describe = ray.remote(num_cpus=cpa, num_gpus=gpus_per_actor or None)(_describe)
        options, sampler, name = ray.get(describe.remote(build))
        store = FeatureStore.open_or_create(store_path, **options)
        plan = _plan(items, store, retry_failed)
        todo = plan.todo
        report = plan.report(
            store,
            name,
            workers=actors,
            parallel="ray",
            engine="ray",
            torch_threads=torch_threads,
            batch_size=batch_size,
            num_frames=sampler.num_frames if sampler else None,
            size=sampler.size if sampler else None,
        )
        settings = _Settings(
            build, sampler, store.fingerprint, batch_size, actors, gpus_per_actor, cpa, torch_threads
        )
        with _Progress(progress, len(todo), f"extract {name} (ray, {actors} actors)") as bar:
            streak = _run_pass(todo, settings, batch_size, store, report, bar, 0) if todo else 0
            # Items of batches that killed their actor on every try: no block came back for them.
            # Recorded as "backbone:" failures, which the next run retries. (Not re-run one by one
            # here: Ray Data 2.60 can leave an actor that was restarting when the pass ended alive
            # and holding its CPU/GPU, which starves a second pass in the same process.)
            missing = [it for it in todo if it.id not in report.failed and it.id not in store]
            if missing:
                tries = 1 + _TASK_RETRIES
                lost = {
                    it.id: f"backbone: the Ray worker died on this item's batch ({tries} tries)"
                    for it in missing
                }
                for item_id, reason in lost.items():
                    bar.failed(item_id, reason)
                _commit(store, [], lost, report, bar)
                _stop_if_broken(streak + len(lost), report)
    return _finish(store, report, compact, t_start)
