"""`Interactions`: every user's time-ordered item sequence as ragged arrays.

Users are rows of a CSR-like layout: user ``u`` watched ``items[offsets[u]:offsets[u + 1]]`` at
``timestamps[offsets[u]:offsets[u + 1]]``, oldest first. Nothing is expanded per prefix; a 10M-event
log costs ~10M x (4 + 8) bytes plus the id maps.

Order inside a user is (timestamp, raw item id): logs such as MovieLens tie many timestamps inside one
user, and a stable secondary key keeps every split reproducible whatever the row order of the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Interactions:
    offsets: np.ndarray  # int64 [n_users + 1]
    items: np.ndarray  # int32 [n_events], item index into item_ids
    timestamps: np.ndarray  # int64 or float64 [n_events]
    user_ids: np.ndarray  # raw user ids [n_users] (str or int)
    item_ids: np.ndarray  # raw item ids [n_items] (str or int), sorted

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.user_ids) + 1:
            raise ValueError("offsets must have n_users + 1 entries")
        if len(self.items) != len(self.timestamps) or self.offsets[-1] != len(self.items):
            raise ValueError("items, timestamps and offsets disagree on the number of events")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def user_index(self) -> dict:
        """Raw user id -> row. Built on demand: large logs rarely need it."""
        return {uid: i for i, uid in enumerate(self.user_ids.tolist())}

    def item_index(self) -> dict:
        return {iid: i for i, iid in enumerate(self.item_ids.tolist())}

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items)

    def event_users(self) -> np.ndarray:
        """User row of every event (int32 [n_events])."""
        return np.repeat(np.arange(self.n_users, dtype=np.int32), self.lengths())

    def summary(self) -> dict:
        lengths = self.lengths()
        return {
            "users": self.n_users,
            "items": self.n_items,
            "events": self.n_events,
            "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
            "density": self.n_events / max(1, self.n_users * self.n_items),
        }

    def select_events(self, keep: np.ndarray, drop_unused_items: bool = True) -> Interactions:
        """Keep the events where ``keep`` is true; users left empty are removed, and so are items
        nobody interacts with any more unless ``drop_unused_items`` is false."""
        users = self.event_users()[keep]
        items = self.items[keep]
        timestamps = self.timestamps[keep]
        user_counts = np.bincount(users, minlength=self.n_users)
        kept_users = np.flatnonzero(user_counts)
        offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
        np.cumsum(user_counts[kept_users], out=offsets[1:])
        item_ids = self.item_ids
        if drop_unused_items:
            used = np.bincount(items, minlength=self.n_items) > 0
            if not used.all():
                remap = np.cumsum(used, dtype=np.int64) - 1
                items = remap[items].astype(np.int32)
                item_ids = item_ids[used]
        # events stay grouped by user and ordered inside each user, so no re-sort is needed
        return Interactions(offsets, items, timestamps, self.user_ids[kept_users], item_ids)

    @classmethod
    def from_arrays(cls, users, items, timestamps=None) -> Interactions:
        """Build from one row per event. ``users``/``items`` are raw ids (numbers or strings, numpy or
        pyarrow arrays); ``timestamps`` defaults to the row order."""
        users_arr = _as_arrow(users)
        items_arr = _as_arrow(items)
        n = len(users_arr)
        if len(items_arr) != n:
            raise ValueError(f"users ({n}) and items ({len(items_arr)}) differ in length")
        if timestamps is None:
            ts = np.arange(n, dtype=np.int64)
        else:
            ts = _as_numpy(timestamps)
            if len(ts) != n:
                raise ValueError(f"timestamps ({len(ts)}) and users ({n}) differ in length")
            if ts.dtype.kind == "f" and np.all(np.mod(ts, 1) == 0) and np.abs(ts).max(initial=0) < 2**62:
                ts = ts.astype(np.int64)
        user_codes, user_ids = _factorize_sorted(users_arr)
        item_codes, item_ids = _factorize_sorted(items_arr)
        # (user, timestamp, item); Arrow's stable multi-key sort is ~2x faster than np.lexsort on 10M rows
        keys = pa.table({"u": user_codes, "t": ts, "i": item_codes})
        order = pc.sort_indices(keys, sort_keys=[("u", "ascending"), ("t", "ascending"), ("i", "ascending")])
        order = order.to_numpy()
        user_sorted = user_codes[order]
        counts = np.bincount(user_sorted, minlength=len(user_ids))
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            offsets=offsets,
            items=item_codes[order].astype(np.int32),
            timestamps=ts[order],
            user_ids=user_ids,
            item_ids=item_ids,
        )


def _as_arrow(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(np.asarray(values))


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_numpy(zero_copy_only=False)
    return np.asarray(values)


def _factorize_sorted(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Codes and uniques of ``values`` with uniques in ascending order (numeric order for numbers),
    so that codes, and every tie-break built on them, do not depend on the file's row order."""
    if values.null_count:
        raise ValueError(f"{values.null_count} missing ids")
    encoded = pc.dictionary_encode(values)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    # Arrow sorts strings by code point like Python, and far faster than numpy's object argsort
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes], encoded.dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False)
