"""Retrieval: top-k items by inner product with a user vector, over a catalogue that grows online.

- `ExactIndex` (default): one matrix product ``[B, D] @ [D, N]`` and ``torch.topk`` per batch. Exact, and
  at 100k x 64 it is a 25 MB read per batch, i.e. well under a millisecond per query on one core.
- `FaissIndex`: FAISS ``flat`` (exact, for parity), ``ivf`` (IVF-Flat, ``nprobe`` lists) and ``hnsw``
  (HNSW-Flat) with inner-product metric, for catalogues where a full product per query is too slow.

Both take per-query exclusions (the user's history) and a global ``blocked`` mask (items the run
excluded from ranking). Adding an item is atomic for readers: the row is written beyond the published
size first and the size is published last (one attribute assignment), so a concurrent search sees the
catalogue either without or with the new item, never a half-written row. Growth reallocates with
doubling capacity and swaps the buffer in the same single assignment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

NEG_INF = float("-inf")
INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class _View:
    matrix: torch.Tensor  # [capacity, D]; rows >= n are not published yet
    blocked: torch.Tensor  # bool [capacity]
    n: int
    any_blocked: bool  # lets a search skip the mask pass over the catalogue when nothing is blocked


class ExactIndex:
    kind = "exact"

    def __init__(self, matrix: torch.Tensor, blocked: torch.Tensor | None = None) -> None:
        n, d = matrix.shape
        cap = max(16, n + n // 8)  # headroom so the first cold-start additions do not copy the matrix
        buf = torch.zeros(cap, d, dtype=torch.float32)
        buf[:n] = matrix.float()
        blk = torch.zeros(cap, dtype=torch.bool)
        if blocked is not None:
            blk[:n] = blocked
        self._view = _View(buf, blk, n, bool(blk.any()))
        self._write = threading.Lock()  # one writer at a time; readers never take it

    @property
    def size(self) -> int:
        return self._view.n

    @property
    def dim(self) -> int:
        return int(self._view.matrix.shape[1])

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self._view.matrix[rows]

    def add(self, vectors: torch.Tensor, blocked: bool = False) -> int:
        """Append ``vectors [m, D]``; returns the first new row. Visible to searches once it returns."""
        with self._write:
            v = self._view
            m = vectors.shape[0]
            matrix, blk = v.matrix, v.blocked
            if v.n + m > matrix.shape[0]:
                cap = max(2 * matrix.shape[0], v.n + m)
                matrix = torch.zeros(cap, self.dim, dtype=torch.float32)
                matrix[: v.n] = v.matrix[: v.n]
                blk = torch.zeros(cap, dtype=torch.bool)
                blk[: v.n] = v.blocked[: v.n]
            matrix[v.n : v.n + m] = vectors.float()
            blk[v.n : v.n + m] = blocked
            self._view = _View(matrix, blk, v.n + m, v.any_blocked or blocked)  # publish: one assignment
            return v.n

    def search(
        self, users: torch.Tensor, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``users [B, D]`` -> (scores ``[B, k']``, rows ``[B, k']``), k' = min(k, servable items);
        excluded and blocked rows come back only as ``-inf`` scores when fewer than k remain."""
        v = self._view
        scores = users @ v.matrix[: v.n].T
        if v.any_blocked:
            scores.masked_fill_(v.blocked[: v.n][None, :], NEG_INF)
        if exclude is not None and any(len(rows) for rows in exclude):
            # one scatter for the whole batch instead of one indexing call per request
            batch_rows = np.repeat(np.arange(len(exclude)), [len(rows) for rows in exclude])
            item_rows = np.concatenate(exclude).astype(np.int64, copy=False)
            scores[torch.from_numpy(batch_rows), torch.from_numpy(item_rows)] = NEG_INF
        top = torch.topk(scores, min(k, v.n), dim=1)
        return top.values, top.indices


class FaissIndex:
    """FAISS over the same rows (ids = row numbers, so results map back like `ExactIndex`'s)."""

    def __init__(
        self,
        matrix: torch.Tensor,
        blocked: torch.Tensor | None = None,
        kind: str = "flat",
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        seed: int = 0,
    ) -> None:
        try:
            import faiss
        except ImportError:  # pragma: no cover - depends on the optional group
            raise ImportError("FAISS indexes need faiss-cpu: pip install 'linkedout[faiss]'") from None
        self.faiss = faiss
        self.kind = kind
        x = np.ascontiguousarray(matrix.float().numpy())
        n, d = x.shape
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            base = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            base = faiss.IndexHNSWFlat(d, hnsw_m, ip)
            base.hnsw.efSearch = ef_search
            base.hnsw.efConstruction = max(40, ef_search)
        elif kind == "ivf":
            # ~sqrt(N) lists, and at least 39 training points per list (FAISS warns below that)
            nlist = nlist or max(1, min(int(np.sqrt(max(n, 1))), n // 39))
            quantizer = faiss.IndexFlatIP(d)
            base = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
            rng = np.random.default_rng(seed)
            sample = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n > 64 * nlist else x
            base.train(sample)
            base.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer  # keep it alive: FAISS does not own it from Python
        else:
            raise ValueError(f"unknown FAISS index {kind!r} (flat, ivf, hnsw)")
        self.index = faiss.IndexIDMap2(base) if kind != "ivf" else base
        self._base = base
        self._n = 0
        self._vectors = ExactIndex(torch.zeros(0, d))  # row lookup for history vectors / explanations
        self._lock = threading.Lock()  # FAISS indexes are not safe to search while adding
        blk = blocked if blocked is not None else torch.zeros(n, dtype=torch.bool)
        self._n_blocked = 0
        self._add(x, blk.numpy())

    @property
    def size(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._vectors.dim

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self._vectors.vectors(rows)

    def _add(self, x: np.ndarray, blocked: np.ndarray) -> int:
        first = self._n
        ids = np.arange(first, first + len(x), dtype=np.int64)
        keep = ~blocked.astype(bool)
        # blocked rows are simply never put into FAISS: nothing to filter at search time
        if keep.any():
            self.index.add_with_ids(np.ascontiguousarray(x[keep]), ids[keep])
        self._vectors.add(torch.from_numpy(x))
        self._n += len(x)
        return first

    def add(self, vectors: torch.Tensor, blocked: bool = False) -> int:
        x = np.ascontiguousarray(vectors.float().numpy())
        with self._lock:
            return self._add(x, np.full(len(x), blocked))

    def search(
        self, users: torch.Tensor, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = np.ascontiguousarray(users.float().numpy())
        longest = max((len(e) for e in exclude), default=0) if exclude else 0
        want = min(k + longest, self._n)
        with self._lock:
            scores, ids = self.index.search(q, want)
        out_s = np.full((len(q), min(k, self._n)), NEG_INF, dtype=np.float32)
        out_i = np.zeros((len(q), min(k, self._n)), dtype=np.int64)
        for b in range(len(q)):
            valid = ids[b] >= 0
            s, i = scores[b][valid], ids[b][valid]
            if exclude is not None and len(exclude[b]):
                keep = ~np.isin(i, exclude[b])
                s, i = s[keep], i[keep]
            m = min(len(i), out_s.shape[1])
            out_s[b, :m], out_i[b, :m] = s[:m], i[:m]
        return torch.from_numpy(out_s), torch.from_numpy(out_i)


def make_index(
    matrix: torch.Tensor, blocked: torch.Tensor | None = None, kind: str = "exact", **kw
) -> ExactIndex | FaissIndex:
    if kind == "exact":
        return ExactIndex(matrix, blocked)
    if kind in ("flat", "ivf", "hnsw"):
        return FaissIndex(matrix, blocked, kind, **kw)
    raise ValueError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
