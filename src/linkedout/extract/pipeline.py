"""Extraction pipeline: catalog -> decoded frames -> frozen backbone -> `FeatureStore`, resumable.

::

    catalog items (todo = not in store.done_ids(), minus known decode failures)
        │  decode workers (threads by default, or processes), a bounded prefetch window, ordered
        ▼
    DecodedClip | DecodeFailure  ──failure──► store.record_failures({id: "decode: <reason>"})
        │  group `batch_size` items
        ▼
    backbone.encode(batch)  (every item's frames in shared forward chunks)
        │  a batch that raises is retried item by item; the bad item is recorded, the rest kept
        ▼
    store.append(tokens)    one Lance commit per batch: after a kill, a batch is all there or absent
        ▼
    store.compact()         at the end: fragments merged, files orphaned by a kill deleted

Why the pieces look like this:

* **Overlap.** While the main thread runs the backbone on one batch, workers decode the next ones
  (``prefetch`` clips in flight, 2 batches by default). PyAV releases the GIL inside FFmpeg (demux,
  decode, swscale), so threads overlap with torch without copying frames between processes;
  ``parallel="processes"`` (a forkserver process pool) also frees the Python glue from the GIL but
  pickles every clip through a pipe; on 2 cores both were equally fast, threads use less memory and
  start instantly, so they are the default. When the next clip is not decoded yet the backbone takes
  the partial batch rather than idle. Overlap can only use CPU the backbone leaves idle: measured in
  docs/extraction.md (`benchmarks/extract_clips.py`).
* **Resume.** The only "done" marker is a committed row, so a run killed at any moment resumes where
  its last commit ended: nothing is written twice and nothing uncommitted is lost.
* **Failures.** Reasons carry their stage (``decode:``, ``backbone:``, ``text:``, ``caption:``).
  Decode failures depend on the file only, so a resumed run does not decode them again
  (``retry_failed`` forces it); backbone failures may be transient (memory) and are always retried;
  missing text or caption stays missing until the input changes (``retry_failed`` again).
* **Fingerprint and inputs.** An `~linkedout.backbones.extractor.Extractor` (backbone + sampler) builds
  every item's input and the store's key: the backbone's fingerprint fields with ``sampler`` set to the
  sampler this run actually uses and ``item_text`` naming the catalog fields that fed the text input
  (another T or size cannot append to the same store). The same object builds inputs for items added
  to a running server, and the store records its `ExtractorSpec` so the server can rebuild it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from linkedout.backbones.base import Backbone, ItemInput, ItemTokens
from linkedout.backbones.extractor import CaptionSource, Extractor, needs_audio, needs_frames
from linkedout.data.catalog import Catalog, CatalogItem
from linkedout.extract.decode_worker import decode_clip, exit_with_parent
from linkedout.progress import ProgressState, StepProgress
from linkedout.store import FeatureStore
from linkedout.video import AudioSampler, DecodedAudio, DecodedClip, DecodeFailure, FrameSampler

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "ExtractError",
    "ExtractReport",
    "catalog_from_log",
    "cpu_count",
    "default_frame_size",
    "default_workers",
    "extract",
    "load_catalog",
]

Parallel = Literal["threads", "processes"]

# Short side (pixels) frames are decoded at, per backbone. The frames backbone resizes to 256 then
# crops 224: decoding straight to 256 makes its own resize a no-op. Video-LLM processors resize to
# ~384-448 themselves; 448 keeps what they need while a 1080p clip's 8 frames stay ~9 MB, not 50.
DEFAULT_FRAME_SIZE: dict[str, int | None] = {"frames": 256, "vllm": 448}

# A systematic backbone problem (wrong device, out of memory on every item) must stop the run rather
# than mark the whole catalog as failed: stop after this many failed items in a row with no success.
_MAX_BACKBONE_FAILURES_IN_A_ROW = 16


class ExtractError(RuntimeError):
    """The run cannot go on (the backbone fails on every item, the catalog is unusable, ...)."""


@dataclass
class ExtractReport:
    """What one `extract` call did. Times are wall-clock seconds of the main thread.

    ``decode_wait_seconds`` is how long the main thread sat waiting for decoded clips: the part of
    decoding the workers did *not* hide behind the backbone. ``decode_seconds`` adds up the time each
    clip took to decode in its worker (overlapped, so it can exceed ``seconds``).
    """

    store_path: str
    fingerprint: str
    backbone: str
    catalog_items: int  # items in scope (after ``limit``)
    already_done: int  # skipped: tokens already in the store
    skipped_failed: int  # skipped: decode failure recorded by an earlier run
    attempted: int
    extracted: int
    failed: dict[str, str] = field(default_factory=dict)  # this run's failures: id -> reason
    warnings: dict[str, list[str]] = field(default_factory=dict)  # decoded, with caveats (truncated...)
    frames: int = 0  # frames sent to the backbone
    batches: int = 0
    seconds: float = 0.0
    decode_wait_seconds: float = 0.0
    decode_seconds: float = 0.0
    backbone_seconds: float = 0.0
    write_seconds: float = 0.0
    compact_seconds: float = 0.0
    workers: int = 0  # decode workers (local engine) or backbone actors (Ray engine)
    parallel: str = "threads"
    engine: str = "local"  # "local" (this module) or "ray" (linkedout.extract.ray_engine)
    torch_threads: int | None = None  # set for the run (None: left as it was)
    batch_size: int = 0
    num_frames: int | None = None
    size: int | None = None

    @property
    def items_per_second(self) -> float:
        return self.attempted / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["items_per_second"] = round(self.items_per_second, 3)
        d["frames_per_second"] = round(self.frames_per_second, 3)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4)
        return d

    def summary(self) -> str:
        parts = [
            f"{self.extracted} extracted",
            f"{len(self.failed)} failed",
            f"{self.already_done} already in the store",
        ]
        if self.skipped_failed:
            parts.append(f"{self.skipped_failed} skipped (failed before; --retry-failed to retry)")
        rate = f"{self.items_per_second:.2f} items/s" + (
            f", {self.frames_per_second:.1f} frames/s" if self.frames else ""
        )
        return (
            f"{', '.join(parts)} in {self.seconds:.1f} s ({rate}; backbone {self.backbone_seconds:.1f} s, "
            f"waiting for decode {self.decode_wait_seconds:.1f} s, writing {self.write_seconds:.1f} s)"
        )


# --------------------------------------------------------------------------------------------------
# inputs


def load_catalog(spec: str | os.PathLike[str], *, text_column: str | None = None) -> Catalog:
    """A catalog from what a user types: ``samples:small`` / ``samples:bench`` (the real sample clips,
    fetched into the cache if needed), a folder of videos, or a CSV/TSV/Parquet manifest.
    ``text_column``: the manifest column read as each item's text (default ``text``)."""
    text = str(spec)
    path = Path(text).expanduser()
    if text_column is not None:
        if not path.is_file():
            raise ValueError(f"--text-column names a column of a manifest; {text} is not a manifest file")
        return Catalog.from_manifest(path, columns={"text": text_column})
    if text.startswith("samples:"):
        from linkedout.samples import TIERS, fetch_samples

        tier = text.partition(":")[2]
        if tier not in TIERS:
            raise ValueError(f"unknown sample tier {tier!r} in {text!r}; use samples:small or samples:bench")
        return Catalog.from_samples(fetch_samples(tier, quiet=True))  # type: ignore[arg-type]
    if path.is_dir():
        return Catalog.from_folder(path)
    if path.is_file():
        return Catalog.from_manifest(path)
    raise FileNotFoundError(f"catalog not found: {path} (a folder of videos, a manifest, or samples:<tier>)")


def catalog_from_log(spec: str | os.PathLike[str]) -> Catalog:
    """A text-only catalogue from an interaction log's item metadata (a sample name such as ``ml-100k``
    or a log path): one item per item of the log, its text "title (year); genres" (see
    `linkedout.data.catalog.catalog_from_item_table`), no video path."""
    from linkedout.data.catalog import catalog_from_item_table
    from linkedout.data.formats import load_interactions
    from linkedout.samples import resolve_dataset

    loaded = load_interactions(resolve_dataset(spec))
    if loaded.item_meta is None or len(loaded.item_meta) == 0:
        raise ValueError(
            f"the log {spec} carries no item metadata (titles, genres, text) to build a catalogue from; "
            "write a manifest with id and title/text columns and pass it as --catalog"
        )
    return catalog_from_item_table(loaded.item_meta, loaded.interactions.item_ids)


def default_frame_size(backbone: Backbone | str) -> int | None:
    """Short side frames are decoded at for a backbone (or backbone name); see `DEFAULT_FRAME_SIZE`."""
    name = backbone if isinstance(backbone, str) else backbone.name
    return DEFAULT_FRAME_SIZE.get(name.partition(":")[0], 448)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask in containers, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _on_cpu(backbone: Backbone) -> bool:
    return str(getattr(backbone, "device", "cpu")).split(":")[0] == "cpu"


def default_workers(backbone: Backbone | None = None) -> int:
    """Decode workers for a run.

    CPU backbone: one per 6 cores, at least 1. Measured on the bench tier (docs/extraction.md):
    decoding T=8 frames at 256 px costs ~6 core-seconds per 60 clips against ~38 for EfficientNet-Lite0
    on them (~16 %), so a worker per ~6 cores keeps pace and more would take cores from torch (2
    decode threads were no faster than 1 on 2 cores). GPU backbone: up to 8 (cores - 1), since there
    decoding is the bottleneck (not measured here: no GPU).
    """
    n = cpu_count()
    if backbone is not None and not _on_cpu(backbone):
        return max(1, min(8, n - 1))
    return max(1, n // 6)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block and restore them (no-op if torch is not loaded:
    backbones that do not use torch should not pay for importing it)."""
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    if torch is None or n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------------
# decoding source: (item, DecodedClip | DecodeFailure | None) in catalog order


_Decoded = tuple[CatalogItem, DecodedClip | DecodedAudio | DecodeFailure | None]


def _process_context() -> multiprocessing.context.BaseContext:
    # forkserver, not fork: the parent runs torch's and Lance's thread pools, and forking a
    # multi-threaded process can deadlock the child (Lance warns about it, Python 3.12 too). Workers
    # start from a clean server process and import only what decoding needs.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        # Only the light worker module: the default preload ("__main__") would import the caller's
        # script, hence Lance, into the server, which then warns at every fork.
        ctx.set_forkserver_preload(["linkedout.extract.decode_worker"])
    return ctx


class _Source:
    """Items in catalog order with their decoded clips, decoded ahead by a pool of workers.

    At most ``prefetch`` clips are in flight (memory stays bounded). Delivery is ordered, which keeps
    the store's row order independent of thread timing; a slow clip holds back at most ``prefetch``
    finished ones. `next_ready` tells whether the next clip is decoded, so that the caller can run
    the backbone on what it has instead of idling while it waits for a full batch.
    """

    def __init__(
        self,
        items: Sequence[CatalogItem],
        sampler: FrameSampler | AudioSampler | None,
        workers: int,
        parallel: Parallel,
        prefetch: int,
    ) -> None:
        self.sampler = sampler
        self.wait_seconds = 0.0  # main thread blocked on a clip that was not decoded yet
        self.decode_seconds = 0.0  # sum of per-clip decode times, in whichever worker ran them
        self._items = iter(items)
        self._window: deque[tuple[CatalogItem, Future[tuple[DecodedClip | DecodeFailure, float]]]] = deque()
        self._pool: Executor | None = None
        self._workers, self._parallel = workers, parallel
        if sampler is None or workers == 0:
            return
        if parallel not in ("threads", "processes"):
            raise ValueError(f"parallel must be 'threads' or 'processes', not {parallel!r}")
        self._pool = self._new_pool()
        for _ in range(prefetch):
            if not self._submit():
                break

    def _new_pool(self) -> Executor:
        if self._parallel == "threads":
            return ThreadPoolExecutor(self._workers, thread_name_prefix="linkedout-decode")
        me = psutil.Process()
        return ProcessPoolExecutor(
            self._workers,
            mp_context=_process_context(),
            initializer=exit_with_parent,
            initargs=(me.pid, me.create_time()),
        )

    def _restart_pool(self) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def _after_crash(self, item: CatalogItem) -> tuple[DecodedClip | DecodeFailure, float]:
        """A decode worker process died (FFmpeg crashed on some file, or it was killed): every clip in
        flight is lost and the culprit is unknown. Decode ``item`` alone in a fresh pool: if that
        crashes too, it is the culprit and becomes a failure; then the rest of the window is
        resubmitted. Each crash costs one window of re-decoding; the run goes on."""
        assert self.sampler is not None
        self._restart_pool()
        assert self._pool is not None
        try:
            out = self._pool.submit(decode_clip, self.sampler, item.path).result()
        except BrokenProcessPool:
            self._restart_pool()
            out = (DecodeFailure(item.path, "decoder process crashed on this file"), 0.0)
        assert self._pool is not None
        self._window = deque(
            (it, self._pool.submit(decode_clip, self.sampler, it.path)) for it, _ in self._window
        )
        return out

    def _submit(self) -> bool:
        item = next(self._items, None)
        if item is None:
            return False
        assert self._pool is not None and self.sampler is not None
        self._window.append((item, self._pool.submit(decode_clip, self.sampler, item.path)))
        return True

    def next_ready(self) -> bool:
        """True if the next item can be had without waiting (always, without workers)."""
        return self._pool is None or not self._window or self._window[0][1].done()

    def __iter__(self) -> Iterator[_Decoded]:
        if self._pool is None:
            for item in self._items:
                if self.sampler is None:  # text backbone: nothing to decode
                    yield item, None
                    continue
                t0 = time.perf_counter()
                out, secs = decode_clip(self.sampler, item.path)
                self.wait_seconds += time.perf_counter() - t0
                self.decode_seconds += secs
                yield item, out
            return
        while self._window:
            item, fut = self._window.popleft()
            t0 = time.perf_counter()
            try:
                out, secs = fut.result()
            except BrokenProcessPool:
                out, secs = self._after_crash(item)
            self.wait_seconds += time.perf_counter() - t0
            self.decode_seconds += secs
            self._submit()
            yield item, out

    def close(self) -> None:
        if self._pool is not None:
            for _, fut in self._window:  # stopped early (error, Ctrl-C): do not decode the rest
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None


# --------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """Extraction progress on stderr (stdout stays clean for the summary / --json): a rich bar
    (items, items/s, failures, last failure) on a terminal, plain lines elsewhere, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._failed = 0
        self._progress = StepProgress(
            label,
            total,
            enabled=enabled and total > 0,
            describe=_extract_line,
            columns=_extract_columns,
            fields={"failed": 0, "last": ""},
            stream=sys.stderr,
        )
        self.enabled = self._progress.enabled

    def __enter__(self) -> _Progress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def done(self, n: int = 1) -> None:
        if n:
            self._progress.update(n)

    def failed(self, item_id: str, reason: str) -> None:
        self._failed += 1
        # One line per failure (above the bar on a terminal), so the reasons stay after the run.
        self._progress.print(f"failed {item_id}: {reason}", style="red")
        short = reason if len(reason) <= 60 else reason[:57] + "..."
        self._progress.update(1, failed=self._failed, last=f"{item_id}: {short}")


def _extract_line(s: ProgressState) -> str:
    return (
        f"{s.completed}/{s.total} items, {s.fields['failed']} failed, {s.rate:.1f} items/s, {s.elapsed:.0f} s"
    )


def _extract_columns() -> list[Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} items/s" if speed else "- items/s", style="cyan")

    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("[dim]{task.fields[last]}"),
    ]


# --------------------------------------------------------------------------------------------------
# backbone


def _encode_batch(backbone: Backbone, batch: list[ItemInput]) -> tuple[list[ItemTokens], dict[str, str]]:
    """Encode a batch; if it raises, encode item by item so one bad input costs only itself."""
    try:
        out = backbone.encode(batch)
        if [t.item_id for t in out] != [b.item_id for b in batch]:
            raise ExtractError(f"backbone {backbone.name} returned ids out of order or missing items")
        return out, {}
    except ExtractError:
        raise
    except Exception as exc:
        if len(batch) == 1:
            return [], {batch[0].item_id: f"backbone: {type(exc).__name__}: {exc}"}
    tokens: list[ItemTokens] = []
    failed: dict[str, str] = {}
    for item in batch:
        got, bad = _encode_batch(backbone, [item])
        tokens += got
        failed.update(bad)
    return tokens, failed


# --------------------------------------------------------------------------------------------------
# run bookkeeping shared by both engines (this loop and linkedout.extract.ray_engine)


def store_options(extractor: Extractor) -> dict[str, Any]:
    """`FeatureStore.open_or_create` keyword arguments that key a store by this extractor. A plain dict:
    the Ray engine computes it on a worker (where the model loads) and sends it to the driver."""
    backbone = extractor.backbone
    spec = extractor.spec()
    return {
        "fingerprint_fields": extractor.fingerprint_fields(),
        "layers": backbone.layers,
        "token_kinds": backbone.token_kinds,
        "dim": backbone.dim,
        "layer_names": getattr(backbone, "layer_names", None),
        "extractor": spec.to_json() if spec is not None else None,
        "source": extractor.captions_from.to_json() if extractor.captions_from is not None else None,
    }


@dataclass
class _Plan:
    """Which items a run works on: the scope minus committed rows minus known decode failures."""

    items: list[CatalogItem]
    done: set[str]
    skip_failed: set[str]

    @property
    def todo(self) -> list[CatalogItem]:
        return [it for it in self.items if it.id not in self.done and it.id not in self.skip_failed]

    def report(self, store: FeatureStore, backbone: str, **fields: Any) -> ExtractReport:
        return ExtractReport(
            store_path=str(store.path),
            fingerprint=store.fingerprint,
            backbone=backbone,
            catalog_items=len(self.items),
            already_done=sum(it.id in self.done for it in self.items),
            skipped_failed=sum(it.id in self.skip_failed and it.id not in self.done for it in self.items),
            attempted=len(self.todo),
            extracted=0,
            **fields,
        )


def _plan(items: list[CatalogItem], store: FeatureStore, retry_failed: bool) -> _Plan:
    done = store.done_ids()
    skip_failed: set[str] = set()
    if not retry_failed:
        fails = store.failures()
        for item_id, reason in zip(
            fails.column("item_id").to_pylist(), fails.column("reason").to_pylist(), strict=True
        ):
            # Only decode failures are a property of the file; "backbone:" ones may be transient.
            if not str(reason).startswith("backbone:") and item_id not in done:
                skip_failed.add(item_id)
    return _Plan(items, done, skip_failed)


def item_input_or_failure(
    extractor: Extractor, item: CatalogItem, decoded: DecodedClip | DecodeFailure | None
) -> ItemInput | str:
    """The backbone's input for one item, or why it has none (a reason with its stage prefix)."""
    if isinstance(decoded, DecodeFailure):
        return f"decode: {decoded.reason}"
    given = extractor.item_input(item.id, decoded, title=item.title, text=item.text, path=item.path)
    if decoded is None and given.text is None:  # text backbone, nothing to read
        if extractor.captions_from is not None:
            source = extractor.captions_from.store
            return f"caption: no generated text for this item in the source store {source}"
        return "text: item has no title or text"
    return given


def _with_captions(tokens: list[ItemTokens], batch: list[ItemInput]) -> list[ItemTokens]:
    """Keep the caption a text backbone read (stage two of the caption path) beside its vector, so the
    caption store alone can show it (store info, explanations, the bundle)."""
    caption = {b.item_id: b.meta.get("caption") for b in batch}
    for t in tokens:
        if t.caption is None:
            t.caption = caption.get(t.item_id)
    return tokens


def _commit(
    store: FeatureStore,
    tokens: list[ItemTokens],
    failures: dict[str, str],
    report: ExtractReport,
    bar: _Progress,
) -> None:
    """One batch's tokens (one Lance commit: all visible or none), then its failures."""
    t0 = time.perf_counter()
    store.append(tokens)
    if failures:
        store.record_failures(failures)
        report.failed.update(failures)
    report.write_seconds += time.perf_counter() - t0
    report.extracted += len(tokens)
    bar.done(len(tokens))


def check_video_paths(items: Sequence[CatalogItem], backbone: str) -> None:
    """A text-only catalogue (no ``path`` column, or built from a log's item metadata) given to a
    backbone that decodes: one clear error rather than one decode failure per item."""
    no_path = [it.id for it in items if not it.path]
    if no_path:
        raise ExtractError(
            f"the {backbone} backbone reads each item's video, but {len(no_path)} of {len(items)} "
            f"catalogue items have no path (e.g. {', '.join(no_path[:3])}): a text-only catalogue "
            "goes with --backbone text or caption"
        )


def _finish(store: FeatureStore, report: ExtractReport, compact: bool, t_start: float) -> ExtractReport:
    """The end of a run, either engine: compact the store when it changed, stamp the wall time."""
    if compact and (report.extracted or report.failed):
        t0 = time.perf_counter()
        store.compact()
        report.compact_seconds = time.perf_counter() - t0
    report.seconds = time.perf_counter() - t_start
    return report


def _stop_if_broken(fails_in_a_row: int, report: ExtractReport) -> None:
    if fails_in_a_row >= _MAX_BACKBONE_FAILURES_IN_A_ROW:
        last = next(reversed(report.failed.values()))
        raise ExtractError(
            f"the backbone failed on {fails_in_a_row} items in a row, none succeeded; stopping "
            f"(last error: {last}). Items stored so far are kept; fix the cause and re-run to resume."
        )


# --------------------------------------------------------------------------------------------------
# the pipeline


def extract(
    catalog: Catalog | Sequence[CatalogItem],
    backbone: Backbone,
    store_path: str | os.PathLike[str],
    *,
    frames: int = 8,
    size: int | Literal["auto"] | None = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    parallel: Parallel = "threads",
    prefetch: int | None = None,
    progress: bool = True,
    limit: int | None = None,
    retry_failed: bool = False,
    compact: bool = True,
    sampler: FrameSampler | AudioSampler | None = None,
    torch_threads: int | None = None,
    captions_from: CaptionSource | None = None,
) -> ExtractReport:
    """Extract `LayerTokens` for every catalog item not yet in the store at ``store_path``.

    ``frames``/``size``: T frames uniformly over each clip, short side ``size`` pixels (``"auto"``:
    `DEFAULT_FRAME_SIZE` for the backbone; ``None``: stored size); or pass a ready ``sampler``.
    ``batch_size``: items per backbone call (their frames share forward chunks). ``workers``: decode
    workers (default `default_workers`; 0 decodes in the main thread, no overlap), ``parallel``:
    ``"threads"`` or ``"processes"``, ``prefetch``: clips decoded ahead (default 2 batches).
    ``limit``: only the first N catalog items are in scope (a scope, not a budget: re-running with the
    same limit does nothing new). ``retry_failed``: decode again items whose decode failed in an
    earlier run. Text backbones read `item_text` and never decode. ``torch_threads``: torch's
    intra-op threads during the run, restored after (None: leave torch as it is; on a machine shared
    with other busy processes, fewer threads than cores avoids OpenMP stalls: docs/extraction.md).
    ``captions_from``: the items' text is a source store's generated captions (``catalog`` built by
    `linkedout.extract.captions.captions_catalog`), not their title + text; see that module.

    Resumable and crash-safe (see module docstring); returns an `ExtractReport`. Raises
    `~linkedout.store.FingerprintMismatchError` if the store holds tokens from other settings, and
    `ExtractError` if the backbone fails on many items in a row.
    """
    t_start = time.perf_counter()
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if parallel not in ("threads", "processes"):
        raise ValueError(f"parallel must be 'threads' or 'processes', not {parallel!r}")
    items = list(catalog)[: limit if limit is not None else None]
    video = needs_frames(backbone)
    if needs_audio(backbone):  # decode the audio track at the model's rate instead of frames
        video = True
        if sampler is None:
            sampler = backbone.audio_sampler()  # type: ignore[attr-defined]
    elif video and sampler is None:
        if frames < 1:
            raise ValueError("frames must be >= 1")
        sampler = FrameSampler(frames, default_frame_size(backbone) if size == "auto" else size)
    if not video:
        sampler = None
    else:
        check_video_paths(items, backbone.name)
    n_workers = (default_workers(backbone) if workers is None else max(0, int(workers))) if video else 0
    n_threads = torch_threads
    n_prefetch = max(1, prefetch if prefetch is not None else 2 * batch_size)

    extractor = Extractor(backbone, sampler, captions_from)
    store = FeatureStore.open_or_create(store_path, **store_options(extractor))
    plan = _plan(items, store, retry_failed)
    todo = plan.todo
    report = plan.report(
        store,
        backbone.name,
        workers=n_workers,
        parallel=parallel if n_workers else "inline",
        torch_threads=n_threads,
        batch_size=batch_size,
        num_frames=getattr(sampler, "num_frames", None),
        size=getattr(sampler, "size", None),
    )

    source = _Source(todo, sampler, n_workers, parallel, n_prefetch)

    batch: list[ItemInput] = []
    pending_failures: dict[str, str] = {}
    fails_in_a_row = 0

    def flush(bar: _Progress, encode: bool = True) -> None:
        nonlocal fails_in_a_row
        tokens: list[ItemTokens] = []
        if batch and encode:
            t0 = time.perf_counter()
            tokens, bad = _encode_batch(backbone, batch)
            if extractor.captions_from is not None:
                tokens = _with_captions(tokens, batch)
            report.backbone_seconds += time.perf_counter() - t0
            report.batches += 1
            report.frames += sum(
                len(b.frames) for b in batch if b.frames is not None and b.item_id not in bad
            )
            for item_id, reason in bad.items():
                pending_failures[item_id] = reason
                bar.failed(item_id, reason)
            fails_in_a_row = 0 if tokens else fails_in_a_row + len(bad)
            batch.clear()
        _commit(store, tokens, pending_failures, report, bar)
        pending_failures.clear()
        _stop_if_broken(fails_in_a_row, report)

    label = f"extract {backbone.name}"
    with (
        _Progress(progress, len(todo), label) as bar,
        contextlib.closing(source),
        _torch_threads(n_threads if todo else None),
    ):
        for item, decoded in source:
            if isinstance(decoded, DecodedClip) and decoded.warnings:
                report.warnings[item.id] = list(decoded.warnings)
            given = item_input_or_failure(extractor, item, decoded)
            if isinstance(given, str):
                pending_failures[item.id] = given
                bar.failed(item.id, given)
            else:
                batch.append(given)
            # A full batch goes to the backbone; so does a partial one when the next clip is still
            # decoding: the backbone would otherwise idle (on the first batch, for a whole batch's
            # decode). Failures are written with batches, or alone when many pile up.
            if len(batch) >= batch_size or (batch and not source.next_ready()):
                flush(bar)
            elif len(pending_failures) >= batch_size:
                flush(bar, encode=False)
        flush(bar)
    report.decode_wait_seconds = source.wait_seconds
    report.decode_seconds = source.decode_seconds

    return _finish(store, report, compact, t_start)
