"""Durable state of the service in one SQLite file (WAL mode): watch events and items added online.

Durability: every write goes through one writer thread that commits *group transactions* - all jobs
waiting when it wakes up share one COMMIT (one fsync with ``synchronous=FULL``) - and a caller's
future resolves only after that COMMIT returned. So an HTTP reply is sent only for data already on
disk; a process killed with ``kill -9`` (or a power cut, with FULL) loses nothing it acknowledged, and
group commit keeps throughput high under concurrency. Each job runs inside a SAVEPOINT: one job that
fails (a conflicting event id) rolls back alone and does not take its neighbours down.

Idempotency: ``event_id`` is the primary key. Re-sending an event with the same id and the same
content is a no-op reported as a duplicate (safe client retries); the same id with different content
is a conflict (`EventConflict`) and nothing of that request is written.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, seq);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    bundle_id TEXT NOT NULL,
    vector BLOB NOT NULL,
    layer_weights BLOB,
    title TEXT,
    thumbnail BLOB,
    source TEXT,
    added REAL NOT NULL
);
"""


class EventConflict(ValueError):
    """An event id already stored with different content."""


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    ts: float | None  # None: stamped with the server's time when stored
    kind: str = "watch"


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future


_STOP = object()


class EventLog:
    """Events + added items; reads on a separate connection (WAL lets them run beside the writer)."""

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "FULL", max_group: int = 512
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL, NORMAL or OFF")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.max_group = max_group
        self._queue: queue.Queue = queue.Queue()
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._reader = self._connect()
        self._read_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.committed_jobs = 0

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (group commit needs explicit control)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    # ------------------------------------------------------------------ writer
    def _run(self) -> None:
        conn = self._writer
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            jobs = [job]
            stop = False
            while len(jobs) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                jobs.append(nxt)
            results: list[tuple[_Job, Any, BaseException | None]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for j in jobs:
                    conn.execute("SAVEPOINT job")
                    try:
                        out = j.fn(conn)
                        conn.execute("RELEASE job")
                        results.append((j, out, None))
                    except Exception as e:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                        results.append((j, None, e))
                conn.execute("COMMIT")
                self.commits += 1
                self.committed_jobs += len(jobs)
            except Exception as e:  # the disk said no: every job of the group fails, none is acknowledged
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [(j, None, e) for j in jobs]
            for j, out, err in results:  # replies only after COMMIT returned: durable before the reply
                if err is None:
                    j.future.set_result(out)
                else:
                    j.future.set_exception(err)
            if stop:
                return

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Future:
        fut: Future = Future()
        self._queue.put(_Job(fn, fut))
        return fut

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        self._writer.close()
        self._reader.close()

    # ------------------------------------------------------------------ events
    def append_events(self, events: list[Event]) -> Future:
        """Future of ``(n_new, duplicate_ids)``; raises `EventConflict` for a changed event id."""
        now = time.time()

        def job(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            new, dup = 0, []
            for e in events:
                row = conn.execute(
                    "SELECT user_id, item_id, ts, kind FROM events WHERE event_id = ?", (e.event_id,)
                ).fetchone()
                if row is not None:
                    # a retry without ts was stamped on first arrival: compare what the client sent
                    stored = (row[0], row[1], row[3]) if e.ts is None else tuple(row)
                    sent = (
                        (e.user_id, e.item_id, e.kind)
                        if e.ts is None
                        else (e.user_id, e.item_id, e.ts, e.kind)
                    )
                    if stored != sent:
                        raise EventConflict(
                            f"event {e.event_id!r} was already stored with other content "
                            f"(user {row[0]!r}, item {row[1]!r}, ts {row[2]}); event ids must be unique"
                        )
                    dup.append(e.event_id)
                    continue
                conn.execute(
                    "INSERT INTO events (event_id, user_id, item_id, ts, kind, received) "
                    "VALUES (?,?,?,?,?,?)",
                    (e.event_id, e.user_id, e.item_id, now if e.ts is None else float(e.ts), e.kind, now),
                )
                new += 1
            return new, dup

        return self.submit(job)

    def history(self, user_id: str, limit: int) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (time order; ties by arrival)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT item_id FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
        return [r[0] for r in reversed(rows)]

    def count_events(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM events").fetchone()[0])

    # ------------------------------------------------------------------ items
    def add_item(
        self,
        item_id: str,
        bundle_id: str,
        vector: bytes,
        layer_weights: bytes | None,
        title: str | None,
        thumbnail: bytes | None,
        source: str,
    ) -> Future:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO items (item_id, bundle_id, vector, layer_weights, title, thumbnail, source, "
                "added) VALUES (?,?,?,?,?,?,?,?)",
                (item_id, bundle_id, vector, layer_weights, title, thumbnail, source, time.time()),
            )

        return self.submit(job)

    def items(self, bundle_id: str) -> list[tuple]:
        """Items added online for this bundle, in the order they were added (replayed at startup)."""
        with self._read_lock:
            return self._reader.execute(
                "SELECT item_id, vector, layer_weights, title, thumbnail, source FROM items "
                "WHERE bundle_id = ? ORDER BY added, rowid",
                (bundle_id,),
            ).fetchall()
