"""Retrieval: top-k items by inner product with a user vector, over a catalogue that grows online.

- `ExactIndex` (default): one matrix product ``[B, D] @ [D, N]`` and ``torch.topk`` per batch. Exact, and
  at 100k x 64 it is a 25 MB read per batch, i.e. well under a millisecond per query on one core.
- `FaissIndex`: FAISS ``flat`` (exact, for parity), ``ivf`` (IVF-Flat, ``nprobe`` lists) and ``hnsw``
  (HNSW-Flat) with inner-product metric, for catalogues where a full product per query is too slow.

Both take per-query exclusions (the user's history) and a global ``blocked`` mask (items the run
excluded from ranking). Adding an item is atomic for readers: the row is written beyond the published
size first and the size is published last (one attribute assignment), so a concurrent search sees the
catalogue either without or with the new item, never a half-written row. Growth reallocates the
online segment with doubling capacity and swaps the buffer in the same single assignment; the
bundle's own matrix is never copied or written (`ExactIndex`), so it can stay memory-mapped.
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
    base: torch.Tensor  # [N0, D] the bundle's matrix (memory-mapped from the bundle): never written
    added: torch.Tensor  # [capacity, D] items added online; rows >= m are not published yet
    blocked: torch.Tensor  # bool [N0 + capacity]
    m: int  # published rows of `added`
    any_blocked: bool  # lets a search skip the mask pass over the catalogue when nothing is blocked

    @property
    def n(self) -> int:
        return int(self.base.shape[0]) + self.m


class ExactIndex:
    """Two segments: the bundle's matrix as given (not copied: memory-mapped, its pages are shared by
    every worker process through the page cache) and a small growing buffer of items added online.
    A search takes the top k of each segment and merges the 2k candidates, so the base segment is
    never concatenated with (copied next to) the added one."""

    kind = "exact"

    def __init__(self, matrix: torch.Tensor, blocked: torch.Tensor | None = None) -> None:
        n, d = matrix.shape
        base = matrix.float().contiguous()  # a no-op for the float32 matrix of a bundle: no copy
        cap = 16
        blk = torch.zeros(n + cap, dtype=torch.bool)
        if blocked is not None:
            blk[:n] = blocked
        added = torch.zeros(cap, d, dtype=torch.float32)
        self._view = _View(base, added, blk, 0, bool(blk.any()))
        self._write = threading.Lock()  # one writer at a time; readers never take it

    @property
    def size(self) -> int:
        return self._view.n

    @property
    def dim(self) -> int:
        return int(self._view.base.shape[1])

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        v = self._view
        n0 = int(v.base.shape[0])
        if v.m == 0:
            return v.base[rows]
        if n0 == 0:
            return v.added[rows]
        online = rows >= n0
        out = v.base[rows.clamp(max=n0 - 1)]  # a gathered copy: safe to overwrite the online rows
        if bool(online.any()):
            out[online] = v.added[rows[online] - n0]
        return out

    def add(self, vectors: torch.Tensor, blocked: bool = False) -> int:
        """Append ``vectors [m, D]``; returns the first new row. Visible to searches once it returns."""
        with self._write:
            v = self._view
            n0, m = int(v.base.shape[0]), vectors.shape[0]
            added, blk = v.added, v.blocked
            if v.m + m > added.shape[0]:
                cap = max(2 * added.shape[0], v.m + m)
                added = torch.zeros(cap, self.dim, dtype=torch.float32)
                added[: v.m] = v.added[: v.m]
                blk = torch.zeros(n0 + cap, dtype=torch.bool)
                blk[: n0 + v.m] = v.blocked[: n0 + v.m]
            added[v.m : v.m + m] = vectors.float()
            blk[n0 + v.m : n0 + v.m + m] = blocked
            self._view = _View(
                v.base, added, blk, v.m + m, v.any_blocked or blocked
            )  # publish: one assignment
            return n0 + v.m

    def search(
        self, users: torch.Tensor, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``users [B, D]`` -> (scores ``[B, k']``, rows ``[B, k']``), k' = min(k, servable items);
        excluded and blocked rows come back only as ``-inf`` scores when fewer than k remain."""
        v = self._view
        n0 = int(v.base.shape[0])
        segments = [users @ v.base.T]
        if v.m:
            segments.append(users @ v.added[: v.m].T)
        if v.any_blocked:
            segments[0].masked_fill_(v.blocked[:n0][None, :], NEG_INF)
            if v.m:
                segments[1].masked_fill_(v.blocked[n0 : n0 + v.m][None, :], NEG_INF)
        if exclude is not None and any(len(rows) for rows in exclude):
            # one scatter for the whole batch instead of one indexing call per request
            batch_rows = np.repeat(np.arange(len(exclude)), [len(rows) for rows in exclude])
            item_rows = np.concatenate(exclude).astype(np.int64, copy=False)
            in_base = item_rows < n0
            segments[0][torch.from_numpy(batch_rows[in_base]), torch.from_numpy(item_rows[in_base])] = NEG_INF
            if v.m and not in_base.all():
                online = ~in_base
                segments[1][
                    torch.from_numpy(batch_rows[online]), torch.from_numpy(item_rows[online] - n0)
                ] = NEG_INF
        top = torch.topk(segments[0], min(k, n0), dim=1)
        if not v.m:
            return top.values, top.indices
        extra = torch.topk(segments[1], min(k, v.m), dim=1)
        values = torch.cat([top.values, extra.values], dim=1)  # 2k candidates, not N: cheap to merge
        rows = torch.cat([top.indices, extra.indices + n0], dim=1)
        best = torch.topk(values, min(k, v.n), dim=1)
        return best.values, rows.gather(1, best.indices)


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
