"""What every event store offers: `Event`, the errors, the `EventStore` protocol, and `open_event_store`.

Two backends follow the protocol: `linkedout.events.sqlite` (embedded, one file, the default) and
`linkedout.events.postgres` (shared by replicas). Both promise the same things:

- **Reply after COMMIT**: the futures returned by writes resolve only after the transaction holding
  the write committed durably, so an acknowledged event survives ``kill -9`` of the server (and, with
  PostgreSQL's default ``fsync``/``synchronous_commit``, of the database).
- **Idempotency**: ``event_id`` is unique. The same event again is a duplicate (a safe retry); the same
  id with other content raises `EventConflict` and nothing of that call is written.
- **An ordered item feed**: every item added online gets a ``seq`` that grows in *commit* order, so a
  replica that remembers the last ``seq`` it applied and asks `items_after` never skips an item
  committed later by another process with a smaller number.

The package never imports ``serve`` or ``train``: the server writes here, the trainer reads here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable


class EventConflict(ValueError):
    """An event id already stored with different content."""


class ItemExists(ValueError):
    """An item id already stored (by this process or another replica)."""


class EventStoreError(RuntimeError):
    """The event store cannot be opened or reached (bad URL, unreachable database, unreadable file)."""


class EventStoreUnavailable(EventStoreError):
    """A write or read failed because the store went away (database restarting, disk error); nothing of
    the failed call was acknowledged, and a retry with the same event ids is safe."""


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    ts: float | None  # None: stamped with the server's time when stored
    kind: str = "watch"


class StoredItem(NamedTuple):
    """One item added online, as the item feed returns it."""

    seq: int
    item_id: str
    vector: bytes  # float32, the bundle's dim
    layer_weights: bytes | None  # float32 per layer, or None (id-only / no gate)
    title: str | None
    thumbnail: bytes | None
    source: str


class WatchRow(NamedTuple):
    """One stored event as the trainer reads it."""

    user_id: str
    item_id: str
    ts: float
    seq: int


@runtime_checkable
class EventStore(Protocol):
    """Events and online items, durable before a write's future resolves (see the module docstring)."""

    url: str  # what was opened, without a password
    commits: int  # group transactions committed by this process (a metric)

    def append_events(self, events: list[Event]) -> Future:
        """Future of ``(n_new, duplicate_ids)``; fails with `EventConflict` for a changed event id."""
        ...

    def history(self, user_id: str, limit: int, after_seq: int | None = None) -> list[str]:
        """The user's last ``limit`` item ids, oldest first (``ts``, ties by arrival); with
        ``after_seq`` only events stored after that feed position (those a bundle has not seen)."""
        ...

    def count_events(self) -> int: ...

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
        """Future of the item's ``seq``; fails with `ItemExists` when the id is already stored."""
        ...

    def items_after(self, bundle_id: str, seq: int = 0, limit: int = 10_000) -> list[StoredItem]:
        """Items of ``bundle_id`` with a feed position above ``seq``, in feed order."""
        ...

    def wait_for_items(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when a backend can tell that an item was
        added (PostgreSQL LISTEN/NOTIFY); SQLite simply sleeps."""
        ...

    def watch_events(self, kind: str = "watch") -> Iterator[WatchRow]:
        """Every stored event of ``kind``, ordered by ``ts`` then ``seq`` (for retraining)."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def refuse_newer_schema(found: int, latest: int) -> None:
    """A store migrated by a newer linkedout is not written by an older one (both backends)."""
    if found > latest:
        raise EventStoreError(
            f"the event store has schema version {found}, newer than this linkedout knows ({latest}): "
            "upgrade linkedout"
        )


def apply_pending_migrations(
    execute: Callable[..., Any], found: int, migrations: Sequence[tuple[int, Sequence[str]]], record: str
) -> None:
    """Run, in order, every migration newer than version ``found`` and record each in schema_version
    with ``record`` (the backend's ``INSERT`` with its own placeholders). Both backends call this inside
    the transaction and lock they hold, so the steps and their bookkeeping have one home."""
    for version, statements in migrations:
        if version <= found:
            continue
        for sql in statements:
            execute(sql)
        execute(record, (version, time.time()))


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def sqlite_path(url_or_path: str | os.PathLike[str]) -> str:
    """The file path of ``sqlite:///abs/path`` (or of a bare path). ``sqlite://relative`` is refused:
    SQLAlchemy-style URLs put an absolute path after three slashes, and guessing would surprise."""
    text = os.fspath(url_or_path)
    if text.startswith("sqlite:"):
        if not text.startswith("sqlite:///") or len(text) <= len("sqlite:///"):
            raise EventStoreError(f"{text!r}: write a SQLite URL as sqlite:///absolute/path.sqlite")
        return "/" + text[len("sqlite:///") :].lstrip("/")
    if "://" in text:
        raise EventStoreError(
            f"{text!r}: unknown event store URL scheme (use sqlite:///path, postgresql://... or a file path)"
        )
    return text


def open_event_store(url_or_path: str | os.PathLike[str], **opts: Any) -> EventStore:
    """Open (creating and migrating as needed) the store at ``url_or_path``:

    - ``postgresql://user:pass@host:port/db`` (also ``?host=/socket/dir``): `PostgresEventStore`;
      options ``writers``, ``max_group``, ``pool_size``, ``connect_timeout``, ``io_timeout``.
    - ``sqlite:///abs/path.sqlite`` or a bare path: `SQLiteEventStore`; options ``synchronous``,
      ``max_group``.

    Options of the other backend are ignored, so a CLI can pass all it has. Raises `EventStoreError`
    with a message when the store cannot be opened."""
    text = os.fspath(url_or_path)
    if is_postgres_url(text):
        from linkedout.events.postgres import PostgresEventStore

        keys = ("writers", "max_group", "pool_size", "connect_timeout", "io_timeout")
        return PostgresEventStore(text, **{k: v for k, v in opts.items() if k in keys})
    from linkedout.events.sqlite import SQLiteEventStore

    keys = ("synchronous", "max_group")
    return SQLiteEventStore(sqlite_path(text), **{k: v for k, v in opts.items() if k in keys})


def store_identity(url_or_path: str | os.PathLike[str]) -> str:
    """One spelling per event store, to tell whether two settings name the same store: the real
    absolute path of a SQLite file (``sqlite:///p``, ``p``, a symlink to it all agree), a PostgreSQL
    URL without its password."""
    text = os.fspath(url_or_path)
    if is_postgres_url(text):
        return redact(text)
    return "sqlite://" + os.path.realpath(sqlite_path(text))


def redact(url: str) -> str:
    """``url`` without its password (for logs, errors and /healthz)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
