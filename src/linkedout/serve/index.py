"""Retrieval: top-k items by inner product with a user vector, over a catalogue that grows online.

- `ExactIndex` (default): one matrix product ``[B, D] @ [D, N]`` per batch, then an exact top-k in two
  stages (`chunked_topk`: the maxima of 64-item chunks give a threshold that the true k-th score cannot
  be below, and only the chunks that reach it are sorted) - ``torch.topk`` over a [B, 1M] score matrix
  cost more than the product itself. ``precision="bf16"`` (``--index exact-bf16``) scores in bfloat16
  (3x faster than float32 on AVX512-BF16 CPUs, half the bytes read) and re-ranks in float32: a
  bound on the bfloat16 rounding error (`BF16_ERROR`) widens the candidate threshold so that the true
  top-k is provably among the candidates, whose float32 scores are what is returned. Same rows and
  scores as float32 scoring (tests/test_serve_engine.py), at 6 bytes per dimension per item instead of 4.
  ``precision="int8"`` (``--index exact-int8``) does the same with 8-bit rows (one scale per item) and
  torch's int8 GEMM (fbgemm/oneDNN, VNNI where the CPU has it): a quarter of the float32 bytes per
  request, about half the float32 search time for one user at 100k items here (docs/benchmarks.md,
  "third round"); `Int8Scores` says why its error bound holds.
- `FaissIndex`: FAISS ``flat`` (exact, for parity), ``ivf`` (IVF-Flat, ``nprobe`` lists), ``ivfpq``
  (IVF with product-quantised codes, ``pq_m`` bytes per vector, re-ranked in float32) and ``hnsw``
  (HNSW-Flat) with inner-product metric, for catalogues where a full product per query is too slow.

Both take per-query exclusions (the user's history) and a global ``blocked`` mask (items the run
excluded from ranking). Adding an item is atomic for readers: the row is written beyond the published
size first and the size is published last (one attribute assignment), so a concurrent search sees the
catalogue either without or with the new item, never a half-written row. Growth reallocates the
online segment with doubling capacity and swaps the buffer in the same single assignment; the
bundle's own matrix is never copied or written (`ExactIndex`), so it can stay memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NEG_INF = float("-inf")
INDEX_KINDS = ("exact", "exact-bf16", "exact-int8", "flat", "ivf", "ivfpq", "hnsw")
CHUNK = 64  # items per chunk of the two-stage top-k: 1M items -> 15,625 chunk maxima per query
# Unit roundoff of bfloat16 (8 significant bits, round to nearest).
BF16_UNIT = 2.0**-8


def bf16_error_bound(dim: int) -> float:
    """``c`` such that ``|bf16_score - score| <= c * |u| * |m|`` for one inner product of length ``dim``.

    Rounding u and m to bfloat16 changes each product u_i m_i by at most (2r + r^2)|u_i m_i|; the
    product is accumulated in float32 (AVX512-BF16 ``vdpbf16ps``, and oneDNN's reference path, both
    accumulate in fp32: at most ~dim * 2^-24 relative), and the sum is rounded to bfloat16 once more
    (r). Sum_i |u_i m_i| <= |u| |m| (Cauchy-Schwarz). ``ExactIndex`` checks this bound against the
    machine's actual bfloat16 product when it is built, and refuses to run bf16 if it does not hold."""
    r = BF16_UNIT
    accumulate = dim * 2.0**-24
    return (2 * r + r * r) + (1 + r) ** 2 * (accumulate + r * (1 + accumulate)) + 1e-6


def chunked_topk(scores: torch.Tensor, k: int, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, k, dim=1)`` (same values; rows of equal scores may come in another order),
    in two stages. The k largest chunk maxima are k distinct scores, so the k-th largest score is at
    least the k-th largest chunk maximum ``t``: every top-k score lies in a chunk whose maximum is
    ``>= t`` (or in the tail that does not fill a chunk). Those few chunks are gathered and sorted.
    Falls back to one ``torch.topk`` when the threshold selects too much (ties, -inf, tiny N)."""
    b, n = scores.shape
    k = min(k, n)
    n_chunks = n // chunk
    if n_chunks < 8 * k:
        return _topk(scores, k)
    maxima = scores[:, : n_chunks * chunk].reshape(b, n_chunks, chunk).amax(-1)
    threshold = torch.topk(maxima, k, dim=1).values[:, -1:]
    cols = _candidate_columns(maxima, maxima >= threshold, n, chunk)
    if cols is None:
        return _topk(scores, k)
    top = torch.topk(scores.gather(1, cols), k, dim=1)
    return top.values, cols.gather(1, top.indices)


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.topk(scores, k, dim=1)
    return top.values, top.indices


def _candidate_columns(
    maxima: torch.Tensor, selected: torch.Tensor, n: int, chunk: int
) -> torch.Tensor | None:
    """Columns ``[B, C]`` of every chunk ``selected`` marks in its row (plus the tail past the last whole
    chunk), or None when that is more than an eighth of the catalogue (a plain sort is then cheaper).
    Rows select different numbers of chunks; each takes its ``m`` largest maxima, m the largest count,
    which contains every chunk it selected (they are the ones with the largest maxima)."""
    b, n_chunks = maxima.shape
    m = int(selected.sum(1).max())
    if m * chunk * 8 > n:
        return None
    which = torch.topk(maxima, m, dim=1).indices  # [B, m]
    cols = (which[..., None] * chunk + torch.arange(chunk)).reshape(b, m * chunk)
    if n > n_chunks * chunk:
        tail = torch.arange(n_chunks * chunk, n).expand(b, -1)
        cols = torch.cat([cols, tail], dim=1)
    return cols


@dataclass(frozen=True)
class _View:
    base: torch.Tensor  # [N0, D] the bundle's matrix (memory-mapped from the bundle): never written
    added: torch.Tensor  # [capacity, D] items added online; rows >= m are not published yet
    blocked: torch.Tensor  # bool [N0 + capacity]
    m: int  # published rows of `added`
    any_blocked: bool  # lets a search skip the mask pass over the catalogue when nothing is blocked
    low: Bf16Scores | Int8Scores | None = None  # first pass over ``base`` (precision bf16 / int8)

    @property
    def n(self) -> int:
        return int(self.base.shape[0]) + self.m


class ExactIndex:
    """Exact inner-product top-k (see the module docstring); ``precision`` = fp32 | bf16 | int8.

    Two segments: the bundle's matrix as given (not copied: memory-mapped, its pages are shared by
    every worker process through the page cache) and a small growing buffer of items added online.
    A search takes the top k of each segment and merges the 2k candidates, so the base segment is
    never concatenated with (copied next to) the added one. With bf16 / int8 only the base segment is
    scored in low precision (and re-ranked in float32); the few online rows are scored in float32."""

    def __init__(
        self, matrix: torch.Tensor, blocked: torch.Tensor | None = None, precision: str = "fp32"
    ) -> None:
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"unknown precision {precision!r} (fp32, bf16, int8)")
        self.precision = precision
        self.kind = "exact" if precision == "fp32" else f"exact-{precision}"
        n, d = matrix.shape
        base = matrix.float().contiguous()  # a no-op for the float32 matrix of a bundle: no copy
        cap = 16
        blk = torch.zeros(n + cap, dtype=torch.bool)
        if blocked is not None:
            blk[:n] = blocked
        added = torch.zeros(cap, d, dtype=torch.float32)
        low = {"fp32": None, "bf16": Bf16Scores, "int8": Int8Scores}[precision]
        # searches whose bound admitted too much (or tiny catalogues): scored in float32 instead
        self.full_rescores = 0
        self._view = _View(base, added, blk, 0, bool(blk.any()), low(base) if low else None)
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
            # publish: one assignment
            self._view = _View(v.base, added, blk, v.m + m, v.any_blocked or blocked, v.low)
            return n0 + v.m

    def search(
        self, users: torch.Tensor, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``users [B, D]`` -> (scores ``[B, k']``, rows ``[B, k']``), k' = min(k, servable items);
        excluded and blocked rows come back only as ``-inf`` scores when fewer than k remain."""
        v = self._view
        n0 = int(v.base.shape[0])
        base_exclude, added_exclude = _split_exclusions(exclude, n0)
        if v.low is None:
            scores = users @ v.base.T
            self._mask(scores, v.blocked[:n0] if v.any_blocked else None, base_exclude)
            values, rows = chunked_topk(scores, k)
        else:
            low = v.low.scores(users)
            self._mask(low, v.blocked[:n0] if v.any_blocked else None, base_exclude)
            values, rows = self._rerank(users, low, k, v, base_exclude)
        if not v.m:
            return values, rows
        online = users @ v.added[: v.m].T  # few rows: float32 whatever the precision
        self._mask(online, v.blocked[n0 : n0 + v.m] if v.any_blocked else None, added_exclude)
        extra = torch.topk(online, min(k, v.m), dim=1)
        values = torch.cat([values, extra.values], dim=1)  # 2k candidates, not N: cheap to merge
        rows = torch.cat([rows, extra.indices + n0], dim=1)
        best = torch.topk(values, min(k, v.n), dim=1)
        return best.values, rows.gather(1, best.indices)

    @staticmethod
    def _mask(
        scores: torch.Tensor, blocked: torch.Tensor | None, exclude: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        """-inf on ``blocked`` columns and on the (batch row, column) pairs of ``exclude``."""
        if blocked is not None:
            scores.masked_fill_(blocked[None, :], NEG_INF)
        if exclude is not None:
            # one scatter for the whole batch instead of one indexing call per request
            batch_rows, item_rows = exclude
            scores[torch.from_numpy(batch_rows), torch.from_numpy(item_rows)] = NEG_INF

    def _rerank(
        self,
        users: torch.Tensor,
        low: torch.Tensor,
        k: int,
        v: _View,
        exclude: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float32 top-k of the base segment from its low-precision scores ``low`` (masked at
        -inf; bfloat16 or int8, "low" below).

        With ``eps`` the per-user bound on |low - fp32| and ``t`` the k-th largest low chunk maximum:
        the k items behind the k largest maxima have fp32 scores >= t - eps, so the k-th best fp32
        score is >= t - eps, and an item of the true top-k has a low score >= t - 2 eps. Every chunk
        whose low maximum reaches t - 2 eps holds every candidate; of those chunks only the items whose
        own low score reaches t - 2 eps are re-scored in float32 (tens of rows, not whole chunks: the
        float32 matrix is mostly out of cache, so each re-scored row is a memory read); the top-k of
        those is the top-k."""
        b, n = low.shape
        k = min(k, n)
        n_chunks = n // CHUNK
        cols = floor = None
        if n_chunks >= 8 * k:
            # float32 before the reductions: amax over bfloat16 is ~7x slower here than the conversion
            # plus a float32 amax (torch 2.13, AVX512 CPU); the values are the same
            low = low.float()
            maxima = low[:, : n_chunks * CHUNK].reshape(b, n_chunks, CHUNK).amax(-1)
            threshold = torch.topk(maxima, k, dim=1).values[:, -1:]
            assert v.low is not None
            eps = v.low.error(users)
            floor = threshold - 2 * eps
            cols = _candidate_columns(maxima, maxima >= floor, n, CHUNK)
        if cols is None or floor is None:  # small catalogue, or the bound admits too much: all in fp32
            self.full_rescores += 1
            scores = users @ v.base.T
            self._mask(scores, v.blocked[:n] if v.any_blocked else None, exclude)
            return chunked_topk(scores, k)
        approx = low.gather(1, cols)
        # the c largest low scores of a row contain every item at or above its floor (c = the largest
        # such count in the batch, at least k); a row with fewer fills up with items below its floor,
        # which are re-scored too and cannot displace a true top-k item
        c = max(int((approx >= floor).sum(1).max()), k)
        best = torch.topk(approx, c, dim=1)
        cols = cols.gather(1, best.indices)
        exact = torch.einsum("bd,bcd->bc", users.float(), v.base[cols])
        exact.masked_fill_(best.values == NEG_INF, NEG_INF)  # blocked / excluded stay out
        top = torch.topk(exact, k, dim=1)
        return top.values, cols.gather(1, top.indices)


def _split_exclusions(
    exclude: list[np.ndarray] | None, n0: int
) -> tuple[tuple[np.ndarray, np.ndarray] | None, tuple[np.ndarray, np.ndarray] | None]:
    """Per-request excluded rows as (batch rows, columns) pairs for the base segment and for the
    online segment (its columns counted from its first row)."""
    if exclude is None or not any(len(rows) for rows in exclude):
        return None, None
    batch_rows = np.repeat(np.arange(len(exclude)), [len(rows) for rows in exclude])
    item_rows = np.concatenate(exclude).astype(np.int64, copy=False)
    in_base = item_rows < n0
    base = (batch_rows[in_base], item_rows[in_base]) if in_base.any() else None
    online = ~in_base
    added = (batch_rows[online], item_rows[online] - n0) if online.any() else None
    return base, added


def check_bf16_error_model(dim: int, bound: float, n: int = 4096, seed: int = 0) -> None:
    """The re-rank's exactness rests on `bf16_error_bound`; check it against this machine's bfloat16
    matrix product (some BLAS could accumulate in bfloat16) on random data before serving with it."""
    g = torch.Generator().manual_seed(seed)
    m, u = torch.randn(n, dim, generator=g), torch.randn(8, dim, generator=g)
    err = ((u.bfloat16() @ m.bfloat16().T).float() - u.double().matmul(m.double().T).float()).abs()
    worst = float((err / (u.norm(dim=1)[:, None] * m.norm(dim=1)[None, :])).max())
    if worst > bound:
        raise RuntimeError(
            f"this machine's bfloat16 matrix product errs by {worst:.2e} x |u||m|, over the bound "
            f"{bound:.2e} the exact re-rank assumes: use --index exact (float32)"
        )


class Bf16Scores:
    """First pass of ``exact-bf16``: a bfloat16 copy of the rows; ``|score - exact| <= c |u| max|m|``."""

    def __init__(self, base: torch.Tensor) -> None:
        d = int(base.shape[1])
        c = bf16_error_bound(d)
        check_bf16_error_model(d, c)
        self.rows = base.to(torch.bfloat16)  # per process (half the float32 bytes): not shared by workers
        self._c = c * (float(base.norm(dim=1).max()) if len(base) else 0.0)
        self.nbytes = self.rows.numel() * self.rows.element_size()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        return users.to(torch.bfloat16) @ self.rows.T

    def error(self, users: torch.Tensor) -> torch.Tensor:
        return self._c * users.float().norm(dim=1, keepdim=True)


class Int8Scores:
    """First pass of ``exact-int8``: rows quantised to int8 with one scale per row (symmetric:
    ``w = s_i q``, ``s_i = max|m_i| / 127``, so ``|m_ij - w_ij| <= s_i / 2``), scored by torch's dynamic
    int8 linear: the users are quantised per batch to 7-bit unsigned codes (``reduce_range``, which keeps
    the int16 pair sums of the AVX2 kernel from saturating) with step ``s_u <= (max(u, 0) - min(u, 0)) /
    127``, so ``|u_j - v_j| <= s_u / 2``; products accumulate exactly in int32 and are scaled back in
    float32. With ``u.m - v.w = u.(m - w) + (u - v).w``:
    ``|error| <= |u|_1 max_i s_i / 2 + s_u / 2 max_i |w_i|_1``, plus float32 rounding of the scaling
    (``1e-5 (|u| max|m| + bound)``, generous). `check_error_model` tests that on this machine's kernel
    before serving. torch 2.13 marks quantized tensors as deprecated (to move to torchao); without them
    this precision is refused with that reason, the float32 and bfloat16 ones still work."""

    def __init__(self, base: torch.Tensor) -> None:
        if not hasattr(torch.ops.quantized, "linear_dynamic"):  # pragma: no cover - depends on the build
            raise RuntimeError("--index exact-int8 needs torch's quantized CPU kernels (fbgemm/oneDNN)")
        n, d = base.shape
        scale = (base.abs().amax(dim=1) / 127).double()
        scale[scale == 0] = 1.0  # an all-zero row: codes 0, exact
        with warnings.catch_warnings():  # the deprecation note above; it would repeat in every log
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(base, scale, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, None)
        w = q.dequantize()
        self._half_step = float(scale.max()) / 2 if n else 0.0
        self._w1 = float(w.abs().sum(1).max()) if n else 0.0
        self._max_norm = float(base.norm(dim=1).max()) if n else 0.0
        self.nbytes = n * d + n * 8  # codes + a float64 scale per row (what the packed weight holds)
        check_error_model(self, base, d)

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(users.float().contiguous(), self._packed, True)

    def error(self, users: torch.Tensor) -> torch.Tensor:
        u = users.float()
        step = (float(u.max().clamp(min=0)) - float(u.min().clamp(max=0))) / 127
        bound = u.abs().sum(1, keepdim=True) * self._half_step + (step / 2) * self._w1
        return bound + 1e-5 * (u.norm(dim=1, keepdim=True) * self._max_norm + bound)


def check_error_model(scorer: Int8Scores, base: torch.Tensor, dim: int, seed: int = 0) -> None:
    """An index's first-pass bound must hold for this machine's kernel: its error on users of several
    kinds (centred, shifted, one large coordinate) against the index's own rows (at most 4,096 of
    them) is compared with ``scorer.error``; a kernel that breaks it (another quantisation scheme, a
    saturating sum) is refused before serving instead of silently returning a wrong top-k."""
    g = torch.Generator().manual_seed(seed)
    users = torch.cat(
        [
            torch.randn(4, dim, generator=g),
            torch.randn(2, dim, generator=g) + 3.0,
            torch.nn.functional.one_hot(torch.tensor([0, dim - 1]), dim).float() * 40.0,
        ]
    )
    n = min(len(base), 4096)
    if n == 0:
        return
    for group in (users[:4], users[4:6], users[6:]):  # the bound depends on the batch: one per kind
        approx = scorer.scores(group)[:, :n].double()
        over = (approx - group.double() @ base[:n].double().T).abs() - scorer.error(group).double()
        if float(over.max()) > 0:
            raise RuntimeError(
                f"this machine's int8 kernel errs by more than the bound the exact re-rank assumes (by "
                f"{float(over.max()):.2e}): use --index exact (float32)"
            )


class FaissIndex:
    """FAISS over the same rows (ids = row numbers, so results map back like `ExactIndex`'s).

    Two segments, like `ExactIndex`: the bundle's rows in a FAISS index that is never written after it
    is built, and items added online in a small exact segment (searched in full and merged). Built
    once per (rows, kind, build options) and kept in ``cache_dir`` (default: `default_index_cache`):
    the first server process builds and writes it under a file lock, the others and later starts read
    it memory-mapped (``IO_FLAG_MMAP_IFC``), so worker processes share its vectors through the page
    cache instead of each building (HNSW at 100k: tens of seconds) and holding its own.
    ``cache_dir=False`` builds in memory only. Row lookups (history vectors,
    explanations) read the bundle's float32 matrix itself: memory-mapped, not copied."""

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
        pq_m: int = 16,
        rerank: int = 10,
        seed: int = 0,
        cache_dir: Path | bool | None = None,
    ) -> None:
        try:
            import faiss
        except ImportError:  # pragma: no cover - depends on the optional group
            raise ImportError("FAISS indexes need faiss-cpu: pip install 'linkedout[faiss]'") from None
        if kind not in ("flat", "ivf", "ivfpq", "hnsw"):
            raise ValueError(f"unknown FAISS index {kind!r} (flat, ivf, ivfpq, hnsw)")
        self.faiss = faiss
        self.kind = kind
        base = matrix.float().contiguous()  # a no-op for a bundle's float32 matrix: still mapped
        n, d = base.shape
        if kind == "ivfpq" and d % pq_m:
            raise ValueError(f"ivfpq: pq_m={pq_m} must divide the item dimension {d}")
        blk = blocked.numpy().astype(bool) if blocked is not None else np.zeros(n, dtype=bool)
        # ~sqrt(N) lists, and at least 39 training points per list (FAISS warns below that)
        self.nlist = nlist or max(1, min(int(np.sqrt(max(n, 1))), n // 39))
        build = dict(kind=kind, nlist=self.nlist, hnsw_m=hnsw_m, pq_m=pq_m, seed=seed)
        if cache_dir is False:
            self._base = self._build(base.numpy(), blk, **build)
            self.cache_path: Path | None = None
        else:
            folder = Path(cache_dir) if isinstance(cache_dir, (str, Path)) else default_index_cache()
            self.cache_path = folder / f"{kind}-{_index_key(base, blk, build)}.faiss"
            self._base = self._cached(base.numpy(), blk, build)
        self.set_search(ef_search=ef_search, nprobe=nprobe)
        # PQ scores are approximate: fetch rerank*k candidates and score those in float32 (the rows are
        # kept for history lookups anyway), so the returned scores are exact and recall recovers
        self.rerank = rerank if kind == "ivfpq" else 1
        self._n0 = n
        self._vectors = ExactIndex(base)  # rows of both segments; its online segment is ours
        self._write = threading.Lock()

    def set_search(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Search-time knobs of the built index (no rebuild): HNSW's efSearch, IVF's nprobe (at most
        nlist); a knob the index kind does not have is ignored."""
        if nprobe is not None:
            self.nprobe = min(nprobe, self.nlist)
            if self.kind in ("ivf", "ivfpq"):
                self.faiss.extract_index_ivf(self._base).nprobe = self.nprobe
        if ef_search is not None and self.kind == "hnsw":
            self.faiss.downcast_index(self._base.index).hnsw.efSearch = ef_search

    @staticmethod
    def _build(
        x: np.ndarray, blocked: np.ndarray, *, kind: str, nlist: int, hnsw_m: int, pq_m: int, seed: int
    ):
        import faiss

        n, d = x.shape
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            inner = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, hnsw_m, ip)
            inner.hnsw.efConstruction = 128
        else:
            quantizer = faiss.IndexFlatIP(d)
            # 8-bit codes: 256 centroids per sub-quantiser, so at least 256 x 39 training points
            inner = (
                faiss.IndexIVFFlat(quantizer, d, nlist, ip)
                if kind == "ivf"
                else faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, ip)
            )
            inner.own_fields = True  # the IVF index owns its quantizer (kept alive with it, saved with it)
            quantizer.this.disown()
            rng = np.random.default_rng(seed)
            want = max(64 * nlist, 256 * 39 if kind == "ivfpq" else 0)
            inner.train(x[rng.choice(n, size=want, replace=False)] if n > want else x)
        index = faiss.IndexIDMap(inner)  # ids = row numbers (blocked rows are left out); no reverse map
        index.own_fields = True
        inner.this.disown()
        keep = ~blocked
        # blocked rows are simply never put into FAISS: nothing to filter at search time
        if keep.any():
            index.add_with_ids(np.ascontiguousarray(x[keep]), np.flatnonzero(keep).astype(np.int64))
        return index

    def _cached(self, x: np.ndarray, blocked: np.ndarray, build: dict):
        """The base index from the cache file, built and written first when it is missing (one process
        builds under an exclusive lock; the others wait for it and read what it wrote)."""
        import fcntl

        path = self.cache_path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                index = self._build(x, blocked, **build)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                self.faiss.write_index(index, str(tmp))
                os.replace(tmp, path)  # readers see a whole file or none
        flags = self.faiss.IO_FLAG_MMAP_IFC | self.faiss.IO_FLAG_READ_ONLY
        return self.faiss.read_index(str(path), flags)

    @property
    def size(self) -> int:
        return self._vectors.size

    @property
    def dim(self) -> int:
        return self._vectors.dim

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        return self._vectors.vectors(rows)

    def add(self, vectors: torch.Tensor, blocked: bool = False) -> int:
        """Online items go to the exact segment (the FAISS base is read-only, maybe shared)."""
        with self._write:
            return self._vectors.add(vectors, blocked=blocked)

    def search(
        self, users: torch.Tensor, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = np.ascontiguousarray(users.float().numpy())
        longest = max((len(e) for e in exclude), default=0) if exclude else 0
        want = min(self.rerank * k + longest, self._n0)
        scores, ids = self._base.search(q, want) if want else (np.zeros((len(q), 0)), np.zeros((len(q), 0)))
        ids = ids.astype(np.int64)
        if self.rerank > 1 and want:
            scores, ids = self._exact_order(users, scores, ids)
        view = self._vectors._view  # the online segment: scored exactly, merged below
        online = None
        if view.m:
            scored = users.float() @ view.added[: view.m].T
            scored.masked_fill_(view.blocked[self._n0 : self._n0 + view.m][None, :], NEG_INF)
            online = scored.numpy()
        kk = min(k, self.size)
        out_s = np.full((len(q), kk), NEG_INF, dtype=np.float32)
        out_i = np.zeros((len(q), kk), dtype=np.int64)
        for b in range(len(q)):
            valid = ids[b] >= 0
            s, i = scores[b][valid], ids[b][valid]
            if online is not None:
                s = np.concatenate([s, online[b]])
                i = np.concatenate([i, np.arange(self._n0, self._n0 + view.m)])
            if exclude is not None and len(exclude[b]):
                keep = ~np.isin(i, exclude[b])
                s, i = s[keep], i[keep]
            keep = np.isfinite(s)
            s, i = s[keep], i[keep]
            order = np.argsort(-s, kind="stable")[:kk]
            out_s[b, : len(order)], out_i[b, : len(order)] = s[order], i[order]
        return torch.from_numpy(out_s), torch.from_numpy(out_i)

    def _exact_order(
        self, users: torch.Tensor, scores: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's candidates re-scored in float32 from the kept rows, best first (-1 = no candidate)."""
        valid = ids >= 0
        rows = torch.from_numpy(np.where(valid, ids, 0))
        exact = torch.einsum("bd,bcd->bc", users.float(), self._vectors.vectors(rows))
        exact.masked_fill_(torch.from_numpy(~valid), NEG_INF)
        order = torch.argsort(exact, dim=1, descending=True, stable=True)
        out_s = exact.gather(1, order).numpy()
        out_i = np.take_along_axis(ids, order.numpy(), axis=1)
        return out_s, out_i


def default_index_cache() -> Path:
    """``$LINKEDOUT_INDEX_CACHE``, else ``index/`` in linkedout's cache (``$LINKEDOUT_CACHE``)."""
    if os.environ.get("LINKEDOUT_INDEX_CACHE"):
        return Path(os.environ["LINKEDOUT_INDEX_CACHE"])
    from linkedout.samples.cache import cache_dir

    return cache_dir() / "index"


def _index_key(matrix: torch.Tensor, blocked: np.ndarray, build: dict) -> str:
    """What the built index depends on: the rows, which are blocked, the kind and build options
    (search-time knobs such as nprobe are not part of it). blake2b reads ~1 GB/s: 0.25 s at 1M x 64."""
    h = hashlib.blake2b(digest_size=16)
    h.update(
        json.dumps({**build, "shape": list(matrix.shape), "faiss": FAISS_FORMAT}, sort_keys=True).encode()
    )
    h.update(memoryview(matrix.numpy()).cast("B"))
    h.update(np.packbits(blocked).tobytes())
    return h.hexdigest()


FAISS_FORMAT = 2  # bump when what `_build` writes changes


# FAISS knobs `linkedout serve --index-option KEY=VALUE` may set (FaissIndex's keyword arguments)
INDEX_OPTIONS = ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "rerank", "seed")


def parse_index_options(kind: str, pairs: list[str]) -> dict[str, int]:
    """``["nprobe=32", "ef_search=256"]`` -> keyword arguments for a FAISS index of ``kind``; an
    unknown key, a non-integer value or an option given to an exact index is a ValueError."""
    out: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in INDEX_OPTIONS:
            raise ValueError(
                f"index option {pair!r}: write KEY=VALUE with KEY one of {', '.join(INDEX_OPTIONS)}"
            )
        try:
            out[key] = int(value)
        except ValueError:
            raise ValueError(f"index option {pair!r}: the value must be an integer") from None
        if out[key] < 0 or (out[key] == 0 and key != "seed"):
            raise ValueError(f"index option {pair!r}: the value must be positive")
    if out and kind not in ("flat", "ivf", "ivfpq", "hnsw"):
        raise ValueError(f"index options {sorted(out)} only apply to FAISS indexes, not --index {kind}")
    return out


def make_index(
    matrix: torch.Tensor, blocked: torch.Tensor | None = None, kind: str = "exact", **kw
) -> ExactIndex | FaissIndex:
    if kind == "exact":
        return ExactIndex(matrix, blocked)
    if kind in ("exact-bf16", "exact-int8"):
        return ExactIndex(matrix, blocked, precision=kind.removeprefix("exact-"))
    if kind in ("flat", "ivf", "ivfpq", "hnsw"):
        return FaissIndex(matrix, blocked, kind, **kw)
    raise ValueError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
