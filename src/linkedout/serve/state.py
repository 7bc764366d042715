"""What the request handlers share: the server's configuration (`ServeConfig`) and the live `State`
(event store, metrics, and the `Serving` snapshot: bundle + engine + batcher) that the app's lifespan
builds once. Handlers reach it through `get_state`, so a handler is a plain function of (request body,
State) that a test can call with a State of its own.

Zero-downtime reload: `State.reload` loads and warms a new bundle off the event loop, then swaps
``state.serving`` in one reference assignment. A handler reads ``state.serving`` once and uses that
snapshot to the end, so a request never mixes the rows of one bundle with the ids of another, and
requests in flight finish on the old snapshot (`MicroBatcher.retire`). `linkedout.serve.reload`
carries a reload to the other worker processes.

Items added online are stored in the event store's ordered item feed; every process polls it
(`item_poll_seconds`, woken early by a PostgreSQL NOTIFY) and adds what other workers or replicas
stored, so an item added through one process is recommendable on all of them within that bound."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import Request

from linkedout.events import EventStore, EventStoreUnavailable, StoredItem, open_event_store
from linkedout.events.base import store_identity
from linkedout.serve.bundle import Bundle, BundleError, load_bundle
from linkedout.serve.engine import Engine, MicroBatcher, RecRequest
from linkedout.serve.metrics import Metrics
from linkedout.serve.reload import ControlDir, bundle_stamp

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """The knobs of `linkedout serve` (the CLI maps its options onto these) and the request limits."""

    bundle: str | Path | Bundle
    events: str | Path | None = None  # SQLite path, sqlite:///path or postgresql://...; <bundle>/state.sqlite
    item_poll_seconds: float = 1.0  # look for items other workers/replicas added this often (0: never)
    pg_writers: int = 1  # PostgreSQL: writer connections (group commit per writer)
    api_key: str | None = None
    media_roots: list[str | Path] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024  # a frames-backbone LayerTokens JSON is ~0.5 MB
    max_history: int = 1000
    max_k: int = 100
    max_events: int = 1000  # per request
    explain_window: int = 20  # occlusion over the most recent items only: one user forward per item
    index: str = "exact"
    index_options: dict[str, int] = field(default_factory=dict)  # FAISS knobs, e.g. nprobe, ef_search
    threads: int = 1  # torch intra-op threads for the batch worker
    max_batch: int = 64
    synchronous: str = "FULL"  # SQLite: FULL = fsync per group commit
    # reload: bundles a reload may name lie under these (default: the configured bundle's parent)
    bundle_roots: list[str | Path] = field(default_factory=list)
    watch_bundle: bool = False  # reload when the configured bundle directory is replaced
    control_dir: str | Path | None = None  # set by `run_server` for several workers (serve/reload.py)
    workers: int = 1
    reload_poll_s: float = 0.5  # how often a worker looks at the control file / the watched bundle
    reload_wait_s: float = 120.0  # how long a reload reply waits for the other workers


@dataclass(frozen=True)
class Serving:
    """One bundle being served, as a whole: replaced by one assignment, never changed in place
    (except for items added online, which the engine's index publishes atomically itself)."""

    bundle: Bundle
    engine: Engine
    batcher: MicroBatcher
    generation: int  # 0: the bundle the server started with; +1 per reload
    replayed: int  # items added online earlier (for this bundle) and replayed from the event store
    item_seq: int  # item feed position the engine was built up to (the poller goes on from there)


@dataclass
class ReloadOutcome:
    serving: Serving
    previous_bundle_id: str
    load_seconds: float
    warm_seconds: float
    workers: dict[int, dict] | None = None  # pid -> report, when several workers serve
    all_workers: bool = True


class State:
    """Everything a request handler needs; built in the app's lifespan. Built elsewhere (a test calling
    a handler directly), `batcher.start()` (or `start()`) must be awaited before recommending and
    `close()` called."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.control = ControlDir(config.control_dir) if config.control_dir else None
        self.metrics = Metrics()
        source: str | Path | Bundle = config.bundle
        generation = 0
        # stamp before reading: a reload published between the two is then seen by the watch
        self._control_seen = self.control.stamp() if self.control else None
        published = self.control.current() if self.control else None
        if published is not None:  # a worker (re)started after a reload serves the reloaded bundle
            generation, source = published
        bundle = source if isinstance(source, Bundle) else load_bundle(source)
        events = config.events
        if events is None:
            if bundle.path is None:
                raise ValueError("an in-memory bundle needs an explicit events path")
            events = bundle.path / "state.sqlite"
        self.log: EventStore = open_event_store(
            events, synchronous=config.synchronous, writers=config.pg_writers
        )
        self.events_identity = store_identity(events)
        self.media_roots = [Path(os.path.realpath(r)) for r in config.media_roots]
        roots = list(config.bundle_roots)
        if not roots and bundle.path is not None:
            roots = [bundle.path.parent]
        self.bundle_roots = [Path(os.path.realpath(r)) for r in roots]
        self.extract_pool = ThreadPoolExecutor(1, thread_name_prefix="extract")
        self.started = time.time()
        self.n_events = self.log.count_events()
        self.serving = self._build(bundle, generation)
        self.item_seq = self.serving.item_seq  # feed position of the last stored item applied
        self.metrics.generation.set(generation)
        self.refresh_gauges()
        self._reload_lock = asyncio.Lock()
        self._watch_task: asyncio.Task | None = None
        self._item_poller: asyncio.Task | None = None

    # the current snapshot's parts; a handler that uses more than one takes `state.serving` once
    @property
    def bundle(self) -> Bundle:
        return self.serving.bundle

    @property
    def engine(self) -> Engine:
        return self.serving.engine

    @property
    def batcher(self) -> MicroBatcher:
        return self.serving.batcher

    @property
    def replayed(self) -> int:
        return self.serving.replayed

    def _build(self, bundle: Bundle, generation: int) -> Serving:
        engine = Engine(bundle, self.config.index, **self.config.index_options)
        replayed, seq = apply_stored_items(engine, self.log.items_after(bundle.bundle_id, 0), 0)
        batcher = MicroBatcher(engine, self.config.max_batch, observe=self.metrics.batch)
        return Serving(bundle, engine, batcher, generation, replayed, seq)

    def apply_new_items(self, rows: list[StoredItem]) -> int:
        """Add stored items of the served bundle (added through another process) to its engine."""
        n, self.item_seq = apply_stored_items(self.engine, rows, self.item_seq)
        if n:
            self.metrics.set_catalogue(self.engine.n_items, len(self.engine.added_source))
        return n

    async def _poll_items(self, period: float) -> None:
        """Every ``period`` seconds (or on a PostgreSQL NOTIFY), read the item feed past ``item_seq``
        and add what other processes stored. Items are applied on the event loop, the same thread as
        the add-item handler and the reload swap, so an engine never sees two writers and a feed
        position always belongs to the bundle being served."""
        while True:
            await asyncio.to_thread(self.log.wait_for_items, period)
            bundle_id, after = self.bundle.bundle_id, self.item_seq
            try:
                rows = await asyncio.to_thread(self.log.items_after, bundle_id, after)
            except EventStoreUnavailable:
                continue  # the database is restarting: the next period tries again
            if self.bundle.bundle_id == bundle_id:  # not swapped meanwhile (a reload replays itself)
                self.apply_new_items(rows)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batcher, and the reload watch when there are workers to follow or a bundle to watch."""
        await self.batcher.start()
        if self.config.item_poll_seconds > 0:
            self._item_poller = asyncio.create_task(self._poll_items(self.config.item_poll_seconds))
        if self.control is not None:
            self.control.report(self.serving.generation, self.bundle.bundle_id)
        if self.control is not None or self.config.watch_bundle:
            # stamps taken now, not when the task first runs: a change in between must count
            watched = None if isinstance(self.config.bundle, Bundle) else Path(self.config.bundle)
            control_seen = self._control_seen
            bundle_seen = bundle_stamp(watched) if watched is not None else None
            self._watch_task = asyncio.create_task(self._watch(watched, control_seen, bundle_seen))

    async def stop(self) -> None:
        for task in (self._watch_task, self._item_poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.batcher.stop()

    def close(self) -> None:
        self.extract_pool.shutdown(wait=True)
        self.log.close()

    def refresh_gauges(self) -> None:
        engine = self.engine
        self.metrics.set_catalogue(engine.n_items, len(engine.added_source))
        self.metrics.commits.set(self.log.commits)

    # ------------------------------------------------------------------ reload
    def _load_and_warm(self, path: Path, generation: int) -> tuple[Serving, float, float]:
        """Off the event loop (a thread): read the bundle, build its engine, and score once, so the
        first request after the swap pays no first-call costs and a bundle whose parts do not fit
        (user encoder vs item matrix) fails here, while the old one still serves."""
        t0 = time.perf_counter()
        bundle = load_bundle(path)
        step = "building its engine"
        try:  # any failure of the new bundle's model (weights that do not fit) is the bundle's fault
            serving = self._build(bundle, generation)
            t1 = time.perf_counter()
            step = "its warm-up scoring"
            history = np.zeros(1, dtype=np.int64)
            serving.engine.recommend_batch([RecRequest(history, history, min(10, bundle.n_items))])
        except Exception as e:
            raise BundleError(f"bundle at {path} failed {step}: {type(e).__name__}: {e}") from None
        return serving, t1 - t0, time.perf_counter() - t1

    def resolve_bundle(self, bundle: str | None) -> Path:
        """The bundle directory a reload names: by default the one being served; otherwise a path
        under the bundle roots (after resolving symlinks), so the API cannot load files from anywhere."""
        if bundle is None:
            current = self.bundle.path or (
                Path(self.config.bundle) if not isinstance(self.config.bundle, Bundle) else None
            )
            if current is None:
                raise BundleError("this server was started from an in-memory bundle: name a bundle path")
            return Path(current)
        if "\x00" in bundle:
            raise PermissionError("invalid path")
        if not self.bundle_roots:
            raise PermissionError("no bundle root configured: reload can only re-read the served bundle")
        candidates = [Path(bundle)] if os.path.isabs(bundle) else [r / bundle for r in self.bundle_roots]
        for cand in candidates:
            real = Path(os.path.realpath(cand))
            if any(real.is_relative_to(root) for root in self.bundle_roots):
                return real
        raise PermissionError(f"{bundle!r} is not under the server's bundle roots")

    async def reload(
        self, path: Path, *, generation: int | None = None, propagate: bool = True
    ) -> ReloadOutcome:
        """Load, warm and swap to the bundle at ``path``; `BundleError` (old one kept) if it is broken.
        ``generation``: the published generation this worker follows (from the control file); None
        for a reload asked of this worker, which then publishes it to the others (``propagate``)."""
        async with self._reload_lock:
            old = self.serving
            if generation is not None and generation <= old.generation:
                # this worker published it itself (its watch saw the file before the swap) or
                # already followed it: nothing to load again
                return ReloadOutcome(old, old.bundle.bundle_id, 0.0, 0.0)
            gen = generation if generation is not None else old.generation + 1
            try:
                new, load_s, warm_s = await asyncio.to_thread(self._load_and_warm, path, gen)
            except BundleError as e:
                self.metrics.reloads.labels("refused").inc()
                if self.control is not None and generation is not None:  # a follower: the reply waits on it
                    self.control.report(old.generation, old.bundle.bundle_id, str(e), failed=generation)
                raise
            if generation is None and propagate and self.control is not None:
                # the number every worker orders reloads by: taken after the load succeeded, so a
                # broken bundle never reaches the control file
                gen = await asyncio.to_thread(self.control.publish, str(path))
                new = Serving(new.bundle, new.engine, new.batcher, gen, new.replayed, new.item_seq)
            await new.batcher.start()
            self.serving = new  # the swap: requests from here on take the new snapshot
            self.item_seq = new.item_seq  # the poller goes on from where the new engine's replay ended
            old.batcher.retire()
            gc.freeze()  # as at startup: keep the new id maps out of the collector's full passes
            self.metrics.reloads.labels("ok").inc()
            self.metrics.generation.set(gen)
            self.metrics.set_catalogue(new.engine.n_items, len(new.engine.added_source))
            if self.control is not None:
                self.control.report(gen, new.bundle.bundle_id)
            log.warning("serving bundle %s (generation %d) from %s", new.bundle.bundle_id, gen, path)
        outcome = ReloadOutcome(new, old.bundle.bundle_id, load_s, warm_s)
        if generation is None and propagate and self.control is not None:
            outcome.workers, outcome.all_workers = await self._wait_for_workers(gen)
        return outcome

    async def _wait_for_workers(self, generation: int) -> tuple[dict[int, dict], bool]:
        """Until every live worker reports ``generation`` (or an error for it), at most reload_wait_s."""
        assert self.control is not None
        deadline = time.monotonic() + self.config.reload_wait_s
        while True:
            reports = await asyncio.to_thread(self.control.workers)
            done = [r for r in reports.values() if max(r["generation"], r.get("failed") or 0) >= generation]
            all_there = len(reports) >= self.config.workers
            if (all_there and len(done) == len(reports)) or time.monotonic() > deadline:
                ok = all_there and all(r["generation"] >= generation for r in reports.values())
                return reports, ok
            await asyncio.sleep(self.config.reload_poll_s / 2)

    async def _watch(
        self, watched: Path | None, control_seen: tuple[int, int] | None, bundle_seen: tuple[int, int] | None
    ) -> None:
        """Each worker's loop: follow the control file (other workers' reloads) and, with
        --watch-bundle, the configured bundle directory; refresh this worker's gauges meanwhile."""
        while True:
            await asyncio.sleep(self.config.reload_poll_s)
            try:
                self.refresh_gauges()
                if self.control is not None and (stamp := self.control.stamp()) != control_seen:
                    control_seen = stamp
                    published = self.control.current()
                    if published is not None and published[0] > self.serving.generation:
                        await self.reload(Path(published[1]), generation=published[0])
                if self.config.watch_bundle and watched is not None:
                    stamp = bundle_stamp(watched)
                    if stamp is not None and stamp != bundle_seen:
                        bundle_seen = stamp
                        await self.reload(watched, propagate=False)  # every worker watches the file itself
            except BundleError as e:
                log.error("reload refused, still serving %s: %s", self.bundle.bundle_id, e)
            except Exception:  # the watch must outlive any one failure
                log.exception("reload watch")


def apply_stored_items(engine: Engine, rows: list[StoredItem], seq: int) -> tuple[int, int]:
    """Add stored items to ``engine`` (replayed at startup or reload, or added through another process);
    items already there - this process added them itself - only move the feed position. Returns
    (items added, new feed position)."""
    n = 0
    for row in rows:
        seq = max(seq, row.seq)
        if row.item_id in engine.row_of:
            continue
        lw = row.layer_weights
        weights = np.frombuffer(lw, dtype=np.float32).tolist() if lw else None
        vector = torch.from_numpy(np.frombuffer(row.vector, dtype=np.float32).copy())
        engine.add_item(row.item_id, vector, weights, row.title, row.thumbnail, row.source)
        n += 1
    return n, seq


async def get_state(request: Request) -> State:
    """FastAPI dependency: the State the lifespan put on the app. Async on purpose: FastAPI runs a sync
    dependency in the thread pool, a thread hop per request that the latency benchmark sees."""
    return request.app.state.linkedout
