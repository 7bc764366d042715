"""The training log's users, carried by the bundle: who the model already knows, and what they watched.

``histories.safetensors`` holds ``offsets`` int64 ``[U + 1]`` and ``items`` int32 (bundle rows, oldest
first); ``users.json`` the raw user ids (strings) in the same order. User ``u`` watched
``items[offsets[u]:offsets[u + 1]]``: the protocol-processed sequence of the run's split (filters and
keep-last applied), i.e. the test split's history followed by its test target - everything the log says
the user watched, so the first recommendation does not offer the item they watched last.

Whole sequences are kept, not only the last ``max_len``: the user encoder reads ``max_len`` items, but
``exclude_seen`` masks up to ``--max-history`` of them. At 4 bytes per training event that is 40 MB
for a 10M-event log, beside 256 MB of item matrix for 1M items at 64 dimensions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HISTORIES_FILE = "histories.safetensors"
USERS_FILE = "users.json"


class HistoryError(ValueError):
    """Histories that do not fit their bundle (malformed offsets, rows outside the catalogue)."""


@dataclass
class Histories:
    user_ids: list[str]
    offsets: np.ndarray  # int64 [U + 1]
    items: np.ndarray  # int32 [events], bundle rows
    _row_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int32)
        if len(self.offsets) != len(self.user_ids) + 1 or (len(self.offsets) and self.offsets[0] != 0):
            raise HistoryError(f"{len(self.offsets)} offsets for {len(self.user_ids)} users")
        if np.any(np.diff(self.offsets) < 0) or self.offsets[-1] != len(self.items):
            raise HistoryError("history offsets must rise from 0 to the number of events")
        self._row_of = {u: i for i, u in enumerate(self.user_ids)}
        if len(self._row_of) != len(self.user_ids):
            raise HistoryError("a user id appears twice in the bundle's histories")

    @classmethod
    def from_sequences(cls, user_ids: Sequence[object], sequences: Sequence[np.ndarray]) -> Histories:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.concatenate(sequences) if len(sequences) else np.zeros(0, np.int32)
        return cls([str(u) for u in user_ids], offsets, items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def row(self, user_id: str) -> int | None:
        """The user's row (what a pairwise bundle's user vectors are indexed by), None when unknown."""
        return self._row_of.get(user_id)

    def get(self, user_id: str) -> np.ndarray | None:
        """The user's rows, oldest first, or None for a user the training log does not have."""
        u = self._row_of.get(user_id)
        return None if u is None else self.items[self.offsets[u] : self.offsets[u + 1]]

    def check_rows(self, n_items: int) -> None:
        if len(self.items) and (int(self.items.min()) < 0 or int(self.items.max()) >= n_items):
            raise HistoryError(f"histories name rows outside the bundle's {n_items} items")

    def save(self, directory: Path) -> None:
        tensors = {"offsets": torch.from_numpy(self.offsets), "items": torch.from_numpy(self.items)}
        save_file(tensors, str(directory / HISTORIES_FILE))
        (directory / USERS_FILE).write_text(json.dumps(self.user_ids))

    @classmethod
    def load(cls, directory: Path) -> Histories | None:
        """The bundle's histories, or None for a bundle exported before bundles carried them."""
        if not (directory / HISTORIES_FILE).exists():
            return None
        tensors = load_file(str(directory / HISTORIES_FILE))
        users = json.loads((directory / USERS_FILE).read_text())
        return cls([str(u) for u in users], tensors["offsets"].numpy(), tensors["items"].numpy())


def trained_upto(meta: Mapping[str, object], store: str) -> int | None:
    """The feed position of ``store`` (a `store_identity`) up to which the bundle's training read its
    events, or None when the bundle was not trained on that store: its events are then all new to it."""
    trained = meta.get("trained_on_events")
    if not isinstance(trained, Mapping) or trained.get("store") != store:
        return None
    upto = trained.get("upto")
    return int(upto) if isinstance(upto, int) else None


class StoredHistory(Protocol):
    def history(self, user_id: str, limit: int, after_seq: int | None = None) -> list[str]: ...


def user_history_rows(
    histories: Histories | None,
    log: StoredHistory,
    row_of: Mapping[str, int],
    user_id: str,
    limit: int,
    trained_upto: int | None = None,
) -> list[int] | None:
    """What ``POST /v1/recommend {"user_id": ...}`` serves: the user's training history from the bundle
    followed by the events stored since, the most recent ``limit`` of them; None when neither knows the
    user. Stored events naming items this catalogue does not have are skipped, as before.

    ``trained_upto``: the bundle was trained on this very store's events up to that feed position
    (``linkedout train --events``), so its histories already hold them; only later events are added."""
    stored = log.history(user_id, limit, trained_upto)
    known = histories.get(user_id) if histories is not None else None
    if known is None and not stored:
        return None
    rows = known[-limit:].tolist() if known is not None else []
    rows += [row_of[i] for i in stored if i in row_of]
    return rows[-limit:]
