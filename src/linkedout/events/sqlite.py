"""The embedded event store: one SQLite file (WAL mode) holding watch events and items added online.

Durability: every write goes through one writer thread that commits *group transactions* - all jobs
waiting when it wakes up share one COMMIT (one fsync with ``synchronous=FULL``) - and a caller's
future resolves only after that COMMIT returned. So an HTTP reply is sent only for data already on
disk; a process killed with ``kill -9`` (or a power cut, with FULL) loses nothing it acknowledged, and
group commit keeps throughput high under concurrency. Each job runs inside a SAVEPOINT: one job that
fails (a conflicting event id) rolls back alone and does not take its neighbours down.

Several processes may share the file (replicas on one host): SQLite's write lock serialises their
transactions (``BEGIN IMMEDIATE``, waiting up to 30 s), which also makes the items' ``seq`` grow in
commit order - the property the cross-process item feed needs.

Idempotency: ``event_id`` is unique. Re-sending an event with the same id and the same content is a
no-op reported as a duplicate (safe client retries); the same id with different content is a conflict
(`EventConflict`) and nothing of that request is written.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkedout.events.base import (
    Event,
    EventConflict,
    EventStoreError,
    EventStoreUnavailable,
    ItemExists,
    StoredItem,
    WatchRow,
    apply_pending_migrations,
    refuse_newer_schema,
)

# Schema migrations, applied in order inside one write transaction each; ``schema_version`` records
# the versions applied. Version 1 is the schema of files written before migrations existed (no
# version table), so such a file migrates like any other.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                ts REAL NOT NULL,
                kind TEXT NOT NULL,
                received REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, seq)",
            """CREATE TABLE IF NOT EXISTS items (
                item_id TEXT PRIMARY KEY,
                bundle_id TEXT NOT NULL,
                vector BLOB NOT NULL,
                layer_weights BLOB,
                title TEXT,
                thumbnail BLOB,
                source TEXT,
                added REAL NOT NULL
            )""",
        ],
    ),
    (
        # the item feed: an explicit, never reused position per item (AUTOINCREMENT), in the order
        # items were added; existing rows keep their order (added, rowid)
        2,
        [
            """CREATE TABLE items_v2 (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                item_id TEXT NOT NULL UNIQUE,
                bundle_id TEXT NOT NULL,
                vector BLOB NOT NULL,
                layer_weights BLOB,
                title TEXT,
                thumbnail BLOB,
                source TEXT,
                added REAL NOT NULL
            )""",
            "INSERT INTO items_v2 "
            "(item_id, bundle_id, vector, layer_weights, title, thumbnail, source, added) "
            "SELECT item_id, bundle_id, vector, layer_weights, title, thumbnail, source, added FROM items "
            "ORDER BY added, rowid",
            "DROP TABLE items",
            "ALTER TABLE items_v2 RENAME TO items",
            "CREATE INDEX items_feed ON items (bundle_id, seq)",
            "CREATE INDEX events_order ON events (kind, ts, seq)",
        ],
    ),
]
LATEST = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to `LATEST`; returns the version found before. Runs under ``BEGIN IMMEDIATE``
    so two processes opening a fresh file at once do not both migrate it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)"
        )
        found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        refuse_newer_schema(found, LATEST)
        apply_pending_migrations(conn.execute, found, MIGRATIONS, "INSERT INTO schema_version VALUES (?, ?)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(found)


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future


_STOP = object()


class SQLiteEventStore:
    """Events + added items; reads on a separate connection (WAL lets them run beside the writer)."""

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "FULL", max_group: int = 512
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL, NORMAL or OFF")
        self.path = Path(path)
        self.url = f"sqlite:///{self.path.resolve()}"
        self.synchronous = synchronous
        self.max_group = max_group
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self.migrated_from = migrate(self._writer)
            self._reader = self._connect()
        except (OSError, sqlite3.Error) as e:
            raise EventStoreError(f"cannot open the SQLite event store {self.path}: {e}") from e
        self._queue: queue.Queue = queue.Queue()
        self._read_lock = threading.Lock()
        self.commits = 0
        self.committed_jobs = 0
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()

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
                    except (EventConflict, ItemExists) as e:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                        results.append((j, None, e))
                conn.execute("COMMIT")
                self.commits += 1
                self.committed_jobs += len(jobs)
            except Exception as e:  # the disk said no: every job of the group fails, none is acknowledged
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                err = EventStoreUnavailable(f"SQLite event store {self.path}: {e}")
                results = [(j, None, err) for j in jobs]
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

    def schema_version(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT max(version) FROM schema_version").fetchone()[0])

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
                    check_duplicate(e, tuple(row))
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

    def history(self, user_id: str, limit: int, after_seq: int | None = None) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (time order; ties by arrival)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT item_id FROM events WHERE user_id = ? AND seq > ? ORDER BY ts DESC, seq DESC LIMIT ?",
                (user_id, -1 if after_seq is None else after_seq, limit),
            ).fetchall()
        return [r[0] for r in reversed(rows)]

    def count_events(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM events").fetchone()[0])

    def watch_events(self, kind: str = "watch") -> Iterator[WatchRow]:
        # its own connection: a long read for training must not hold the request path's reader
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            cur = conn.execute(
                "SELECT user_id, item_id, ts, seq FROM events WHERE kind = ? ORDER BY ts, seq", (kind,)
            )
            while rows := cur.fetchmany(10_000):
                for r in rows:
                    yield WatchRow(*r)
        finally:
            conn.close()

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
        def job(conn: sqlite3.Connection) -> int:
            try:
                cur = conn.execute(
                    "INSERT INTO items (item_id, bundle_id, vector, layer_weights, title, thumbnail, "
                    "source, added) VALUES (?,?,?,?,?,?,?,?)",
                    (item_id, bundle_id, vector, layer_weights, title, thumbnail, source, time.time()),
                )
            except sqlite3.IntegrityError:
                raise ItemExists(f"item {item_id!r} already exists") from None
            return int(cur.lastrowid)

        return self.submit(job)

    def items_after(self, bundle_id: str, seq: int = 0, limit: int = 10_000) -> list[StoredItem]:
        """Items added online for this bundle after feed position ``seq``, in the order they were added."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT seq, item_id, vector, layer_weights, title, thumbnail, source FROM items "
                "WHERE bundle_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (bundle_id, seq, limit),
            ).fetchall()
        return [StoredItem(*r) for r in rows]

    def wait_for_items(self, timeout: float) -> None:
        time.sleep(timeout)  # SQLite cannot notify another process: the poller's period is the bound


def check_duplicate(sent: Event, stored: tuple) -> None:
    """Raise `EventConflict` unless ``stored`` (user_id, item_id, ts, kind) is what ``sent`` says.
    A retry without ``ts`` was stamped on first arrival: then only user, item and kind are compared."""
    if sent.ts is None:
        same = (stored[0], stored[1], stored[3]) == (sent.user_id, sent.item_id, sent.kind)
    else:
        same = tuple(stored) == (sent.user_id, sent.item_id, float(sent.ts), sent.kind)
    if not same:
        raise EventConflict(
            f"event {sent.event_id!r} was already stored with other content "
            f"(user {stored[0]!r}, item {stored[1]!r}, ts {stored[2]}); event ids must be unique"
        )
