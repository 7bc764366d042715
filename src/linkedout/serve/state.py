"""What the request handlers share: the server's configuration (`ServeConfig`) and the live `State`
(bundle, engine, event log, batcher, metrics) that the app's lifespan builds once. Handlers reach it
through `get_state`, so a handler is a plain function of (request body, State) that a test can call
with a State of its own."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import Request

from linkedout.serve.bundle import Bundle, load_bundle
from linkedout.serve.engine import Engine, MicroBatcher
from linkedout.serve.events import EventLog
from linkedout.serve.metrics import Metrics


@dataclass
class ServeConfig:
    """The knobs of `linkedout serve` (the CLI maps its options onto these) and the request limits."""

    bundle: str | Path | Bundle
    events: str | Path | None = None  # SQLite file; default: <bundle>/state.sqlite
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
        self.log = EventLog(events, synchronous=config.synchronous)
        self.media_roots = [Path(os.path.realpath(r)) for r in config.media_roots]
        self.batcher = MicroBatcher(self.engine, config.max_batch)
        self.extract_pool = ThreadPoolExecutor(1, thread_name_prefix="extract")
        self.metrics = Metrics()
        self.started = time.time()
        self.n_events = self.log.count_events()
        self.replayed = self._replay_items()

    def _replay_items(self) -> int:
        n = 0
        for item_id, vec, lw, title, thumb, source in self.log.items(self.bundle.bundle_id):
            if item_id in self.engine.row_of:
                continue
            weights = np.frombuffer(lw, dtype=np.float32).tolist() if lw else None
            vector = torch.from_numpy(np.frombuffer(vec, dtype=np.float32).copy())
            self.engine.add_item(item_id, vector, weights, title, thumb, source)
            n += 1
        return n

    def close(self) -> None:
        self.extract_pool.shutdown(wait=True)
        self.log.close()


async def get_state(request: Request) -> State:
    """FastAPI dependency: the State the lifespan put on the app. Async on purpose: FastAPI runs a sync
    dependency in the thread pool, a thread hop per request that the latency benchmark sees."""
    return request.app.state.linkedout
