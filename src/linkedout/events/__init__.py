"""Event store: watch events and items added online, written by the server, read by the trainer.

`open_event_store(url_or_path)` opens SQLite (``sqlite:///abs/path`` or a bare path) or PostgreSQL
(``postgresql://...``); `read_watch_interactions` turns stored events into training rows.
docs/serving.md describes the semantics (reply after COMMIT, idempotency, the item feed)."""

from linkedout.events.base import (
    Event,
    EventConflict,
    EventStore,
    EventStoreError,
    EventStoreUnavailable,
    ItemExists,
    StoredItem,
    WatchRow,
    open_event_store,
)

__all__ = [
    "Event",
    "EventConflict",
    "EventStore",
    "EventStoreError",
    "EventStoreUnavailable",
    "ItemExists",
    "StoredItem",
    "WatchRow",
    "open_event_store",
]
