"""The shared event store: PostgreSQL through psycopg 3 and a connection pool (`pip install
'linkedout[postgres]'`). Same promises as the SQLite store (see `linkedout.events.base`).

Group commit: ``writers`` threads (default 1) each take every job waiting in one queue and run them
as *one* transaction; futures resolve after COMMIT returned. A SAVEPOINT per job would let a
conflicting job roll back alone, but costs two round trips per job (measured: ~1,600 single-event
jobs/s per writer with them); so a group first runs without savepoints, and only when one of its
jobs turns out to conflict is the whole group rolled back and run again with a savepoint per job.
Item inserts always get their savepoint (a unique violation aborts a PostgreSQL transaction).
With PostgreSQL's defaults (``fsync=on``, ``synchronous_commit=on``) COMMIT
returns after the WAL is flushed, so an acknowledged event survives ``kill -9`` of the server and of
the postmaster. More writers means more concurrent transactions, whose WAL flushes PostgreSQL groups
itself; benchmarks/events_ingest.py measures both (docs/serving.md has the numbers).

A batch of events is one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING``
(one round trip for 1,000 events); only ids that were not inserted are read back and compared, to
tell a duplicate from a conflict. The event calls of one group share that statement (one round trip
for the group, not one per call: `_append_batches`), each still answered as if it had run alone.

Item feed order: ``seq`` is a sequence, and sequences hand out numbers at INSERT, not at COMMIT - two
replicas could commit items 8 then 7, and a poller that already read 8 would skip 7 for ever. So an
item insert first takes a transaction-scoped advisory lock: item transactions commit one at a time,
in ``seq`` order. Items are rare (each is an encoder pass), so the lock costs nothing measurable.
Each committed item also sends ``NOTIFY linkedout_items``, which wakes other replicas' pollers early.

A database that becomes unreachable mid-connection (a network partition, a host gone without closing
its sockets) would otherwise hold a write for the kernel's TCP retransmission timeout, minutes: every
connection sets libpq's ``tcp_user_timeout`` and TCP keepalives (`io_timeout`, unless the URL sets
them), so a write fails with `EventStoreUnavailable` (HTTP 503) after at most about ``io_timeout`` +
``connect_timeout`` seconds, and an unacknowledged write is never reported as stored
(tests/test_multihost.py cuts a replica's link).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from linkedout.events.base import (
    Event,
    EventConflict,
    EventStoreError,
    EventStoreUnavailable,
    ItemExists,
    StoredItem,
    WatchRow,
    apply_pending_migrations,
    redact,
    refuse_newer_schema,
)
from linkedout.events.sqlite import check_duplicate

CHANNEL = "linkedout_items"
# advisory lock keys (arbitrary constants, namespaced by a prefix unlikely to clash with other apps)
ITEM_FEED_LOCK = 0x6C6B6F7401
MIGRATION_LOCK = 0x6C6B6F7402

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE events (
                seq BIGSERIAL PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                received DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX events_user ON events (user_id, ts, seq)",
            "CREATE INDEX events_order ON events (kind, ts, seq)",
            """CREATE TABLE items (
                seq BIGSERIAL PRIMARY KEY,
                item_id TEXT NOT NULL UNIQUE,
                bundle_id TEXT NOT NULL,
                vector BYTEA NOT NULL,
                layer_weights BYTEA,
                title TEXT,
                thumbnail BYTEA,
                source TEXT,
                added DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX items_feed ON items (bundle_id, seq)",
        ],
    ),
]
LATEST = MIGRATIONS[-1][0]

_INSERT_EVENTS = """
INSERT INTO events (event_id, user_id, item_id, ts, kind, received)
SELECT e, u, i, t, k, r
FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::float8[])
     WITH ORDINALITY AS x(e, u, i, t, k, r, o)
ORDER BY o
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


def migrate(conn: psycopg.Connection) -> int:
    """Bring the database to `LATEST`; returns the version found before. An advisory lock makes
    replicas starting together migrate one after the other."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
        )
        found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        refuse_newer_schema(found, LATEST)
        apply_pending_migrations(
            conn.execute, found, MIGRATIONS, "INSERT INTO schema_version VALUES (%s, %s)"
        )
    return int(found)


@dataclass
class _Job:
    fn: Callable[[psycopg.Connection], Any]
    future: Future
    savepoint: bool = False  # run inside its own SAVEPOINT even on the first attempt
    # an `append_events` job: (events, rows); consecutive ones of a group share one INSERT statement
    batch: _EventBatch | None = None


@dataclass
class _EventBatch:
    events: list[Event]
    rows: list[tuple[str, str, str, float, str, float]]  # event_id, user, item, ts, kind, received


def _append_batches(conn: psycopg.Connection, batches: list[_EventBatch]) -> list[tuple[int, list[str]]]:
    """Insert the events of ``batches`` with ONE statement; per batch ``(n_new, duplicate_ids)``.

    One statement for a whole group of requests instead of one per request: at one event per request
    a group commit of 30 requests was 30 round trips and 30 Python-side executions on the writer
    thread, which shares the GIL with the HTTP event loop. The answer per batch is what it would have
    been alone, in order: an id's first copy in the group is new, a later copy is a duplicate if its
    content is the same and an `EventConflict` otherwise (like an id stored before the group)."""
    rows = [r for b in batches for r in b.rows]
    if not rows:
        return [(0, []) for _ in batches]
    inserted = {
        r[0] for r in conn.execute(_INSERT_EVENTS, tuple(map(list, zip(*rows, strict=True)))).fetchall()
    }
    before = [r[0] for r in rows if r[0] not in inserted]  # ids already stored before this statement
    stored: dict[str, tuple] = {}
    if before:  # duplicates or conflicts: compare with what is stored (READ COMMITTED sees it all)
        sql = "SELECT event_id, user_id, item_id, ts, kind FROM events WHERE event_id = ANY(%s)"
        stored = {r[0]: r[1:] for r in conn.execute(sql, (before,)).fetchall()}
    first: dict[str, tuple] = {}  # id -> content of its first copy in this group
    out = []
    for b in batches:
        new, dup = 0, []
        for e, r in zip(b.events, b.rows, strict=True):
            if r[0] in inserted and r[0] not in first:
                first[r[0]] = r[1:5]
                new += 1
            else:
                check_duplicate(e, first[r[0]] if r[0] in first else stored[r[0]])
                dup.append(e.event_id)
        out.append((new, dup))
    return out


_STOP = object()


def bounded_conninfo(url: str, io_timeout: float) -> str:
    """``url`` with libpq's ``tcp_user_timeout`` and TCP keepalives set from ``io_timeout`` (seconds)
    where the URL does not set them: unacknowledged data or a silent peer then closes the connection
    after about ``io_timeout`` instead of the kernel's retransmission timeout."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise EventStoreError(f"not a PostgreSQL URL {redact(url)}: {e}") from None
    idle = max(1, int(io_timeout / 2))
    defaults = {
        "tcp_user_timeout": str(int(io_timeout * 1000)),
        "keepalives": "1",
        "keepalives_idle": str(idle),
        "keepalives_interval": str(max(1, int(io_timeout / 6))),
        "keepalives_count": "3",
    }
    return make_conninfo("", **{**defaults, **params})


class PostgresEventStore:
    """Events + added items in PostgreSQL; reads and writes share one connection pool."""

    def __init__(
        self,
        url: str,
        *,
        writers: int = 1,
        max_group: int = 512,
        pool_size: int | None = None,
        connect_timeout: float = 5.0,
        io_timeout: float = 10.0,
    ) -> None:
        if writers < 1:
            raise ValueError("writers must be >= 1")
        self.url = redact(url)
        self._conninfo = bounded_conninfo(
            url.replace("postgresql+psycopg://", "postgresql://", 1), io_timeout
        )
        self.max_group = max_group
        self.writers = writers
        self.connect_timeout = connect_timeout
        try:  # one plain connection first: its error says *why* (refused, no such database, auth)
            with psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            ) as conn:
                self.migrated_from = migrate(conn)
        except psycopg.Error as e:
            raise EventStoreError(f"cannot use PostgreSQL at {self.url}: {str(e).strip()}") from None
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size or writers + 4,
            kwargs={"autocommit": True},
            # a connection idle in the pool across a database restart is dead: test it when taken,
            # so a request fails only if the database is down *now*
            check=ConnectionPool.check_connection,
            timeout=connect_timeout,
            open=False,
            name="linkedout-events",
        )
        self._pool.open(wait=False)
        self._queue: queue.Queue = queue.Queue()
        self.commits = 0
        self.committed_jobs = 0
        self._listen: psycopg.Connection | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"eventstore-writer-{i}", daemon=True)
            for i in range(writers)
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ writers
    def _take_group(self) -> tuple[list[_Job], bool]:
        job = self._queue.get()
        if job is _STOP:
            return [], True
        jobs = [job]
        while len(jobs) < self.max_group:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                self._queue.put(_STOP)  # the other writers need to see it too
                break
            jobs.append(nxt)
        return jobs, False

    def _run(self) -> None:
        while True:
            jobs, stop = self._take_group()
            if stop:
                self._queue.put(_STOP)
                return
            try:
                try:
                    results = self._attempt(jobs, savepoints=False)
                except (EventConflict, ItemExists):  # rolled back whole: again, each job on its own
                    results = self._attempt(jobs, savepoints=True)
                self.commits += 1
                self.committed_jobs += len(jobs)
            except Exception as e:  # database gone, pool timeout: nothing of the group is acknowledged
                err = EventStoreUnavailable(f"PostgreSQL event store {self.url}: {str(e).strip()}")
                results = [(j, None, err) for j in jobs]
            for j, out, err in results:  # replies only after COMMIT returned
                if err is None:
                    j.future.set_result(out)
                else:
                    j.future.set_exception(err)

    def _attempt(self, jobs: list[_Job], savepoints: bool) -> list[tuple[_Job, Any, BaseException | None]]:
        """Run ``jobs`` in one transaction; returns after COMMIT. Without ``savepoints`` a job's
        `EventConflict` propagates and rolls the whole transaction back."""
        results: list[tuple[_Job, Any, BaseException | None]] = []
        with self._pool.connection() as conn, conn.transaction():
            if not savepoints:  # the event batches of the group first, in one statement
                merged = [j for j in jobs if j.batch is not None]
                if len(merged) > 1:
                    counts = _append_batches(conn, [j.batch for j in merged if j.batch is not None])
                    results += [(j, c, None) for j, c in zip(merged, counts, strict=True)]
                    jobs = [j for j in jobs if j.batch is None]
            for j in jobs:
                if not (savepoints or j.savepoint):
                    results.append((j, j.fn(conn), None))
                    continue
                try:
                    with conn.transaction():  # a SAVEPOINT: this job alone rolls back
                        out = j.fn(conn)
                    results.append((j, out, None))
                except (EventConflict, ItemExists) as e:
                    results.append((j, None, e))
        return results  # leaving both blocks committed the transaction

    def submit(
        self,
        fn: Callable[[psycopg.Connection], Any],
        savepoint: bool = False,
        batch: _EventBatch | None = None,
    ) -> Future:
        fut: Future = Future()
        self._queue.put(_Job(fn, fut, savepoint, batch))
        return fut

    def close(self) -> None:
        self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=10)
        if self._listen is not None:
            self._listen.close()
        self._pool.close()

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise EventStoreUnavailable(f"PostgreSQL event store {self.url}: {str(e).strip()}") from None
        except psycopg.errors.Error as e:
            raise EventStoreUnavailable(f"PostgreSQL event store {self.url}: {str(e).strip()}") from None

    def schema_version(self) -> int:
        return int(self._read("SELECT max(version) FROM schema_version")[0][0])

    # ------------------------------------------------------------------ events
    def append_events(self, events: list[Event]) -> Future:
        now = time.time()
        rows = [
            (e.event_id, e.user_id, e.item_id, now if e.ts is None else float(e.ts), e.kind, now)
            for e in events
        ]
        batch = _EventBatch(events, rows)
        return self.submit(lambda conn: _append_batches(conn, [batch])[0], batch=batch)

    def history(self, user_id: str, limit: int, after_seq: int | None = None) -> list[str]:
        rows = self._read(
            "SELECT item_id FROM events WHERE user_id = %s AND seq > %s ORDER BY ts DESC, seq DESC LIMIT %s",
            (user_id, -1 if after_seq is None else after_seq, limit),
        )
        return [r[0] for r in reversed(rows)]

    def count_events(self) -> int:
        return int(self._read("SELECT count(*) FROM events")[0][0])

    def watch_events(self, kind: str = "watch") -> Iterator[WatchRow]:
        # a server-side cursor: millions of events stream in chunks instead of landing in memory at once
        with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor(name="linkedout_watch_events")
            cur.itersize = 10_000
            cur.execute(
                "SELECT user_id, item_id, ts, seq FROM events WHERE kind = %s ORDER BY ts, seq", (kind,)
            )
            for r in cur:
                yield WatchRow(*r)

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
        def job(conn: psycopg.Connection) -> int:
            # commit order == seq order across replicas (module docstring); held until COMMIT
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ITEM_FEED_LOCK,))
            try:
                seq = conn.execute(
                    "INSERT INTO items (item_id, bundle_id, vector, layer_weights, title, thumbnail, "
                    "source, added) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) RETURNING seq",
                    (item_id, bundle_id, vector, layer_weights, title, thumbnail, source, time.time()),
                ).fetchone()[0]
            except pg_errors.UniqueViolation:
                raise ItemExists(f"item {item_id!r} already exists") from None
            conn.execute(f"NOTIFY {CHANNEL}")  # delivered at COMMIT, not before
            return int(seq)

        return self.submit(job, savepoint=True)

    def items_after(self, bundle_id: str, seq: int = 0, limit: int = 10_000) -> list[StoredItem]:
        rows = self._read(
            "SELECT seq, item_id, vector, layer_weights, title, thumbnail, source FROM items "
            "WHERE bundle_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (bundle_id, seq, limit),
        )
        return [StoredItem(r[0], r[1], bytes(r[2]), _b(r[3]), r[4], _b(r[5]), r[6]) for r in rows]

    def wait_for_items(self, timeout: float) -> None:
        """Wait for a NOTIFY on the item channel (or ``timeout``). The LISTEN connection is this
        method's own (one poller thread calls it); lost with a database restart, it is re-made."""
        deadline = time.monotonic() + timeout
        try:
            if self._listen is None or self._listen.closed:
                self._listen = psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
                )
                self._listen.execute(f"LISTEN {CHANNEL}")
            for _ in self._listen.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            if self._listen is not None:
                self._listen.close()
            self._listen = None
            time.sleep(max(0.0, deadline - time.monotonic()))  # database down: poll at the period


def _b(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
