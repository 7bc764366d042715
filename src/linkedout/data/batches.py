"""Vectorised views of ragged sequences: padded history matrices and training windows.

Conventions shared by every model: a history is a LongTensor ``[B, L]`` of item indices, LEFT-padded
with ``PAD = -1`` (the most recent item sits in the last column), so position ``L-1`` is always "now".
Nothing here loops over users in Python: 10M events and 1M users index in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD = -1


def padded_windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """``out[b]`` = the last ``length`` entries of ``items[starts[b]:ends[b]]``, left-padded with PAD."""
    idx = ends[:, None] - length + np.arange(length)[None, :]
    valid = idx >= starts[:, None]
    out = np.where(valid, items[np.clip(idx, 0, max(len(items) - 1, 0))], PAD)
    return out.astype(np.int64, copy=False)


def count_targets(inputs: np.ndarray, targets: np.ndarray) -> int:
    """Training target positions of a window batch: a target with an input before it, as the losses
    count them (what "events per second" of training counts)."""
    return int(((inputs != PAD) & (targets != PAD)).sum())


def left_pad(histories: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Histories of different lengths as one ``[B, length]`` int64 matrix, LEFT-padded with PAD
    (``length`` defaults to the longest, at least 1; a longer history keeps its most recent items)."""
    width = max(1, max((len(h) for h in histories), default=0)) if length is None else length
    out = np.full((len(histories), width), PAD, dtype=np.int64)
    for b, h in enumerate(histories):
        n = min(len(h), width)
        if n:
            out[b, width - n :] = np.asarray(h)[len(h) - n :]
    return out


def ragged_positions(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row id and absolute index of every element of the ranges ``[starts[b], ends[b])``."""
    lengths = np.maximum(ends - starts, 0)
    rows = np.repeat(np.arange(len(starts)), lengths)
    first = np.cumsum(lengths) - lengths
    index = np.arange(int(lengths.sum())) - np.repeat(first, lengths) + np.repeat(starts, lengths)
    return rows, index


@dataclass(frozen=True)
class TrainWindows:
    """Training samples as (user, end) pairs: the sample for window w is
    ``items[end - L - 1 : end]`` clipped at the user's start, giving L inputs and L next-item targets.

    Windows tile each user's training sequence from its end backwards without overlap, so every
    training event is a target exactly once per epoch and nothing is expanded per prefix. With
    ``jitter`` the tiling is shifted by a random offset per user each epoch, so an event is not always
    predicted from the same amount of context.
    """

    starts: np.ndarray  # int64 [n_users]
    ends: np.ndarray  # int64 [n_users]
    length: int

    def sample(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(window_starts, window_ends) for one epoch, shuffled when ``rng`` is given.

        The first window of a user always ends at the user's last training event; the others tile the
        rest from the end with phase ``shift`` (0 without ``rng``), each holding at least one target.
        """
        usable = self.ends - self.starts >= 2
        starts, ends = self.starts[usable], self.ends[usable]
        shift = np.zeros_like(ends)
        if rng is not None:
            shift = rng.integers(0, self.length, size=len(ends))
        k0 = (shift == 0).astype(np.int64)  # with no shift the block at k=0 is the first window itself
        room = ends - shift - starts - 2  # a window end e' needs e' >= start + 2
        k_max = np.where(room >= 0, room // self.length, -1)
        count = 1 + np.maximum(k_max - k0 + 1, 0)
        user = np.repeat(np.arange(len(ends)), count)
        j = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        w_end = np.where(j == 0, ends[user], ends[user] - shift[user] - (j - 1 + k0[user]) * self.length)
        w_start = starts[user]
        if rng is not None:
            order = rng.permutation(len(w_end))
            w_start, w_end = w_start[order], w_end[order]
        return w_start, w_end

    def batch(
        self, items: np.ndarray, w_start: np.ndarray, w_end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), both ``[B, L]`` left-padded with PAD."""
        window = padded_windows(items, w_start, w_end, self.length + 1)
        return window[:, :-1], window[:, 1:]
