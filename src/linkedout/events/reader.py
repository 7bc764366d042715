"""Logged watch events as training data: the reader behind ``linkedout train --events``.

Events name raw item ids of the catalogue the bundle was exported from (the server refuses unknown
ids), so they share the id space of the training log: appended to a base log, a user's events
continue that user's history and an item's events land on the same item.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from linkedout.events.base import EventStoreError, open_event_store


def read_watch_rows(url_or_path: str | os.PathLike[str], kind: str = "watch") -> pa.Table:
    """Columns user, item (str), ts (float64), seq (int64) of every stored event of ``kind``, ordered
    by ``ts`` then ``seq`` (arrival). Raises `EventStoreError` when the store cannot be opened and
    ValueError when it holds no such event."""
    text = os.fspath(url_or_path)
    if "://" not in text and not Path(text).exists():  # opening would create an empty file
        raise EventStoreError(f"event store {text} does not exist")
    store = open_event_store(text)
    try:
        users, items, ts, seq = [], [], [], []
        for row in store.watch_events(kind):
            users.append(row.user_id)
            items.append(row.item_id)
            ts.append(row.ts)
            seq.append(row.seq)
    finally:
        store.close()
    if not users:
        raise ValueError(f"the event store {store.url} holds no {kind!r} events")
    return pa.table(
        {
            "user": pa.array(users, pa.string()),
            "item": pa.array(items, pa.string()),
            "ts": pa.array(ts, pa.float64()),
            "seq": pa.array(seq, pa.int64()),
        }
    )


def as_ids_like(values: pa.Array, like: np.ndarray | None) -> pa.Array:
    """Event ids (strings) in the id type of a base log: integers when the base log's ids are
    integers (MovieLens), or - with no base log - when every id is a decimal integer, as a CSV
    reader would infer them. Raises ValueError when an id cannot be one of the base log's."""
    if like is not None and like.dtype.kind not in "iu":
        return values
    try:
        return pa.array(np.asarray(values.to_pylist(), dtype=object).astype(np.int64))
    except (ValueError, OverflowError):
        if like is None:
            return values
        bad = next(v for v in values.to_pylist() if not _is_int(v))
        raise ValueError(
            f"event id {bad!r} is not an id of the base log (whose ids are integers): "
            "events must name the catalogue's raw ids"
        ) from None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def dataset_with_events(base, rows: pa.Table, source: str):
    """A `LoadedDataset` of the base log's events (``base``, or None for events only) followed by
    ``rows`` (from `read_watch_rows`). User ids become strings when the two disagree on their type
    (a base log of integer users, events from users named ``u1``): they are only labels."""
    from linkedout.data.formats import LoadedDataset
    from linkedout.data.interactions import Interactions
    from linkedout.data.itemtable import ItemTable

    items = as_ids_like(
        rows.column("item").combine_chunks(), None if base is None else base.interactions.item_ids
    )
    users = rows.column("user").combine_chunks()
    ts = rows.column("ts").to_numpy()
    name = "events"
    notes = [f"{len(rows)} events from the event store {source}"]
    meta = ItemTable.empty(items.type)
    if base is not None:
        data = base.interactions
        base_users = data.user_ids[data.event_users()]
        base_items = data.item_ids[data.items]
        try:
            users_arr = as_ids_like(users, base_users)
            if not pa.types.is_integer(users_arr.type):
                raise ValueError
            all_users = np.concatenate([base_users, users_arr.to_numpy()])
        except ValueError:
            all_users = np.concatenate([base_users.astype(str), np.asarray(users.to_pylist(), dtype=object)])
            all_users = all_users.astype(str)
        all_items = np.concatenate([base_items, np.asarray(items.to_numpy(zero_copy_only=False))])
        all_ts = np.concatenate([data.timestamps.astype(np.float64), ts])
        interactions = Interactions.from_arrays(all_users, all_items, all_ts)
        name, meta = f"{base.name}+events", base.item_meta
        notes = [*base.notes, *notes]
    else:
        interactions = Interactions.from_arrays(users, items, ts)
    return LoadedDataset(
        interactions=interactions,
        item_meta=meta,
        name=name,
        source=Path(source),
        format="events" if base is None else f"{base.format}+events",
        notes=tuple(notes),
    )
