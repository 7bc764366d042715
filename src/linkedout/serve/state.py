"""What the request handlers share: the server's configuration (`ServeConfig`) and the live `State`
(bundle, engine, event store + item feed poller, batcher, metrics) that the app's lifespan builds once.
Handlers reach it through `get_state`, so a handler is a plain function of (request body, State) that
a test can call with a State of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import Request

from linkedout.events import EventStore, EventStoreUnavailable, StoredItem, open_event_store
from linkedout.serve.bundle import Bundle, load_bundle
from linkedout.serve.engine import Engine, MicroBatcher
from linkedout.serve.metrics import Metrics


@dataclass
class ServeConfig:
    """The knobs of `linkedout serve` (the CLI maps its options onto these) and the request limits."""

    bundle: str | Path | Bundle
    events: str | Path | None = None  # SQLite path, sqlite:///path or postgresql://...; <bundle>/state.sqlite
    item_poll_seconds: float = 1.0  # look for items other replicas added this often (0: never)
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
    threads: int = 1  # torch intra-op threads for the batch worker
    max_batch: int = 64
    synchronous: str = "FULL"  # SQLite: FULL = fsync per group commit


class State:
    """Everything a request handler needs; built in the app's lifespan. Built elsewhere (a test calling
    a handler directly), `batcher.start()` must be awaited before recommending and `close()` called."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        bundle = config.bundle if isinstance(config.bundle, Bundle) else load_bundle(config.bundle)
        self.bundle = bundle
        self.engine = Engine(bundle, config.index)
        events = config.events
        if events is None:
            if bundle.path is None:
                raise ValueError("an in-memory bundle needs an explicit events path")
            events = bundle.path / "state.sqlite"
        self.log: EventStore = open_event_store(
            events, synchronous=config.synchronous, writers=config.pg_writers
        )
        self.media_roots = [Path(os.path.realpath(r)) for r in config.media_roots]
        self.batcher = MicroBatcher(self.engine, config.max_batch)
        self.extract_pool = ThreadPoolExecutor(1, thread_name_prefix="extract")
        self.metrics = Metrics()
        self.started = time.time()
        self.n_events = self.log.count_events()
        self.item_seq = 0  # feed position of the last stored item applied to the engine
        self._item_poller: asyncio.Task | None = None
        self.replayed = self.apply_new_items(self.log.items_after(self.bundle.bundle_id, 0))

    def apply_new_items(self, rows: list[StoredItem]) -> int:
        """Add stored items (replayed at startup, or added through another replica) to the engine.
        Items already there - this process added them itself - only move the feed position."""
        n = 0
        for row in rows:
            self.item_seq = max(self.item_seq, row.seq)
            if row.item_id in self.engine.row_of:
                continue
            lw = row.layer_weights
            weights = np.frombuffer(lw, dtype=np.float32).tolist() if lw else None
            vector = torch.from_numpy(np.frombuffer(row.vector, dtype=np.float32).copy())
            self.engine.add_item(row.item_id, vector, weights, row.title, row.thumbnail, row.source)
            n += 1
        return n

    async def _poll_items(self, period: float) -> None:
        """Every ``period`` seconds (or on a PostgreSQL NOTIFY), read the item feed past ``item_seq``
        and add what other processes stored: an item added through one replica is recommendable on
        every replica within ``period`` + one read. Items are applied on the event loop, the same
        thread as the add-item handler, so the engine never sees two writers."""
        while True:
            await asyncio.to_thread(self.log.wait_for_items, period)
            try:
                rows = await asyncio.to_thread(self.log.items_after, self.bundle.bundle_id, self.item_seq)
            except EventStoreUnavailable:
                continue  # the database is restarting: the next period tries again
            self.apply_new_items(rows)

    def start_item_feed(self) -> None:
        if self.config.item_poll_seconds > 0 and self._item_poller is None:
            self._item_poller = asyncio.create_task(self._poll_items(self.config.item_poll_seconds))

    async def stop_item_feed(self) -> None:
        if self._item_poller is not None:
            self._item_poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._item_poller
            self._item_poller = None

    def close(self) -> None:
        self.extract_pool.shutdown(wait=True)
        self.log.close()


async def get_state(request: Request) -> State:
    """FastAPI dependency: the State the lifespan put on the app. Async on purpose: FastAPI runs a sync
    dependency in the thread pool, a thread hop per request that the latency benchmark sees."""
    return request.app.state.linkedout
