"""The serving core: history -> user vector -> top-k -> explanations, plus online item addition.

Scoring at serving time is exactly the trained model's ``score_all_items`` with the item encoder
replaced by its precomputed output: the user encoder (same module class, bundle weights) runs on the
item-matrix rows of the history, and the scores are ``user @ item_matrix.T`` (tests/test_serve_engine.py
checks this against the full model). Pairwise bundles (bpr, lightgcn) score a request that names a
user of the training log with that user's trained vector, and any other history with its fold-in
(the mean of its item rows, `FoldInUsers`); tests/test_collaborative.py checks both against the model.
Explanations:

- per recommended item, its layer weights (precomputed in the bundle, computed on add for new items);
- per recommended item, the history items that contributed: the drop in its score when that item is
  removed from the history (occlusion, as `linkedout.explain`), all variants in one batched forward.
  A known user of a pairwise bundle has a vector that no history item changes: occlusion then runs
  on its history's fold-in, i.e. which watched items the recommendation is most similar to.
  Occlusion costs one user-encoder pass per history item; the server limits it to the most recent
  ``explain_window`` items (default 20), which keeps a 50-item SASRec history affordable.

`MicroBatcher` groups concurrent requests: while the worker thread computes one batch, newly arrived
requests queue up and go together in the next one (no added wait when idle, one matrix product for
many users when busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from linkedout.backbones.extractor import Extractor
from linkedout.data.batches import PAD, left_pad
from linkedout.explain import occlusions
from linkedout.models import ItemEncoder
from linkedout.serve.bundle import Bundle, BundleError
from linkedout.serve.index import NEG_INF, make_index
from linkedout.video import frame_jpeg


@dataclass
class RecRequest:
    history: np.ndarray  # int64 rows, oldest first, at most max_len long, non-empty
    exclude: np.ndarray  # int64 rows never to return
    k: int
    explain: bool = True
    explain_top: int = 5
    explain_window: int | None = None  # occlude only the most recent items (None: all of them)
    user: int | None = None  # a pairwise bundle's known user (histories row): scored with its vector


@dataclass
class RecResult:
    rows: list[int]
    scores: list[float]
    contributions: list[list[tuple[int, float]]] | None  # per recommended item: (history row, drop)


class Engine:
    def __init__(self, bundle: Bundle, index: str = "exact", device: str = "cpu", **index_kw: Any) -> None:
        self.bundle = bundle
        self.device = device  # where a rebuilt extractor runs (new videos)
        self.max_len = bundle.max_len
        self.user_encoder = bundle.user_encoder()
        self.user_table = bundle.user_table()  # pairwise bundles: the known users' vectors
        pairwise = bundle.pairwise or {}
        # pairwise bundles with an item bias: a new item's row ends in the bias of an untrained item
        self.new_item_bias = pairwise.get("cold_bias") if pairwise.get("bias_column") else None
        self.new_item_scale = float(pairwise.get("new_item_scale", 1.0))  # lightgcn: alpha_0
        self.index = make_index(bundle.item_matrix, bundle.blocked, index, **index_kw)
        self.ids: list[str] = list(bundle.item_ids)
        self.row_of: dict[str, int] = {item_id: i for i, item_id in enumerate(self.ids)}
        self.titles: list[str | None] = list(bundle.titles)
        # what the Video-LLM wrote about each clip, when the bundle's store kept it (None otherwise)
        self.captions: list[str | None] = list(bundle.captions or [None] * bundle.n_items)
        self.thumbnails: dict[int, bytes] = dict(bundle.thumbnails)
        self.base_layer_weights = bundle.layer_weights
        self.added_layer_weights: dict[int, list[float]] = {}
        self.added_source: dict[int, str] = {}
        self._item_encoder: ItemEncoder | None = None
        self._extractor: Extractor | None = None
        self._add_lock = threading.Lock()

    @property
    def n_items(self) -> int:
        return self.index.size

    # ------------------------------------------------------------------ recommend
    @torch.no_grad()
    def user_vectors(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Left-padded to the longest history of the batch (positions count from the right, so the
        padding width does not change a SASRec user vector) -> ``[B, D]``."""
        rows = torch.from_numpy(left_pad(histories))  # >= 1 column: occluding a 1-item history empties it
        valid = rows != PAD
        x = self.index.vectors(rows.clamp(min=0)) * valid[..., None]
        return self.user_encoder(x, valid)[:, -1]

    @torch.no_grad()
    def recommend_batch(self, requests: list[RecRequest]) -> list[RecResult]:
        from_history = self.user_vectors([r.history for r in requests])
        users = self._known_users(requests, from_history)
        kmax = max(r.k for r in requests)
        scores, rows = self.index.search(users, kmax, [r.exclude for r in requests])
        # to Python once for the batch (per-request tensor ops cost more than the lists)
        all_scores, all_rows = scores.tolist(), rows.tolist()
        results = []
        for r, s, i in zip(requests, all_scores, all_rows, strict=True):
            # fewer servable items than k: drop the -inf fillers (they sort last)
            n = sum(1 for x in s[: r.k] if x != NEG_INF)
            results.append(RecResult(i[:n], s[:n], None))
        explained = [b for b, r in enumerate(requests) if r.explain and results[b].rows]
        if explained:
            # occlusion changes the history-based vector; a known pairwise user's own vector does not
            # depend on the history, so its explanation is that of its history's fold-in
            self._explain(requests, results, from_history, explained)
        return results

    def _known_users(self, requests: list[RecRequest], from_history: torch.Tensor) -> torch.Tensor:
        """``from_history`` with the rows of known users of a pairwise bundle replaced by their vectors."""
        if self.user_table is None:
            return from_history
        vectors, trained = self.user_table
        users = from_history.clone()
        for b, r in enumerate(requests):
            if r.user is not None and 0 <= r.user < len(trained) and trained[r.user]:
                users[b] = vectors[r.user]
        return users

    def _explain(
        self, requests: list[RecRequest], results: list[RecResult], users: torch.Tensor, which: list[int]
    ) -> None:
        variants: list[np.ndarray] = []
        spans = []
        for b in which:
            h, window = requests[b].history, requests[b].explain_window
            first = 0 if window is None else max(0, len(h) - window)
            start = len(variants)
            variants += occlusions(h, first)
            spans.append((start, len(variants)))
        occluded = self.user_vectors(variants)  # one forward for every variant of every request
        for b, (start, end) in zip(which, spans, strict=True):
            r, res = requests[b], results[b]
            top = self.index.vectors(torch.as_tensor(res.rows, dtype=torch.long))  # [k, D]
            full = users[b] @ top.T  # [k]
            drops = (full[None, :] - occluded[start:end] @ top.T).numpy()  # [window, k]
            first = len(r.history) - (end - start)
            contributions = []
            for j in range(len(res.rows)):
                order = np.argsort(-drops[:, j], kind="stable")[: r.explain_top]
                contributions.append([(int(r.history[first + t]), float(drops[t, j])) for t in order])
            res.contributions = contributions

    def layer_weights(self, row: int) -> list[float] | None:
        if row in self.added_layer_weights:
            return self.added_layer_weights[row]
        if self.base_layer_weights is not None and row < len(self.base_layer_weights):
            return self.base_layer_weights[row].tolist()
        return None

    # ------------------------------------------------------------------ new items (cold start)
    @property
    def item_encoder(self) -> ItemEncoder:
        if self._item_encoder is None:
            self._item_encoder = self.bundle.item_encoder()
        return self._item_encoder

    @torch.no_grad()
    def encode_tokens(self, tokens: np.ndarray) -> tuple[torch.Tensor, list[float] | None]:
        """LayerTokens ``[L, S, D]`` -> (item vector ``[D]``, layer weights or None)."""
        enc = self.item_encoder
        want = tuple(self.bundle.meta.get("feature_shape") or ())
        if tuple(tokens.shape) != want:
            raise BundleError(
                f"tokens must have shape {list(want)} (layers, tokens, dim), got {list(tokens.shape)}"
            )
        t = torch.as_tensor(np.asarray(tokens, dtype=np.float16)).float()[None]
        if not torch.isfinite(t).all():
            raise BundleError("tokens contain NaN or infinity (or values beyond float16 range)")
        weights = enc.content_layer_weights(t)
        vector = enc.content_vectors(t)[0] * self.new_item_scale
        if self.new_item_bias is not None:
            vector = torch.cat([vector, vector.new_tensor([self.new_item_bias])])
        return vector, weights[0].tolist() if weights is not None else None

    def extractor(self) -> Extractor:
        """The bundle's extractor, rebuilt from the spec its feature store recorded and checked against
        the whole pipeline fingerprint (backbone, sampler, input recipe) of the bundle's features."""
        if self._extractor is None:
            spec = self.bundle.extractor_spec
            if spec is None:
                raise BundleError(
                    "this bundle records no extractor the server can rebuild (its feature store predates "
                    "the recorded spec, or its backbone was not built by name); send the item's LayerTokens"
                )
            extractor = Extractor.from_spec(spec, device=self.device)
            got = extractor.fingerprint()
            if got != self.bundle.fingerprint:
                raise BundleError(
                    f"the rebuilt extractor has fingerprint {got}, the bundle's features "
                    f"{self.bundle.fingerprint}: refusing to mix features of two extractors"
                )
            self._extractor = extractor
        return self._extractor

    def extract_video(
        self, item_id: str, path: str, title: str | None = None
    ) -> tuple[np.ndarray, bytes | None]:
        """(LayerTokens, thumbnail JPEG) of a local clip, built exactly as `linkedout extract` builds
        the item's input (same `Extractor`); no thumbnail when the extractor reads only the audio."""
        tokens, clip = self.extractor().extract_one(item_id, path, title=title)
        frames = getattr(clip, "frames", None)  # a DecodedAudio has none
        thumbnail = frame_jpeg(frames[len(frames) // 2]) if frames is not None and len(frames) else None
        return np.asarray(tokens.tokens), thumbnail

    def add_item(
        self,
        item_id: str,
        vector: torch.Tensor,
        layer_weights: list[float] | None,
        title: str | None = None,
        thumbnail: bytes | None = None,
        source: str = "tokens",
    ) -> int:
        """Append to the index; the item is recommendable when this returns (no restart)."""
        with self._add_lock:
            if item_id in self.row_of:
                raise KeyError(item_id)
            row = self.index.size
            self.ids.append(item_id)  # before publishing: a search result row always has an id
            self.titles.append(title)
            self.captions.append(None)  # added online: no generated text reaches the server
            if thumbnail:
                self.thumbnails[row] = thumbnail
            if layer_weights is not None:
                self.added_layer_weights[row] = layer_weights
            self.added_source[row] = source
            got = self.index.add(vector.reshape(1, -1))
            assert got == row, "rows are assigned under the add lock"
            self.row_of[item_id] = row  # after publishing: a history never points at an unwritten row
        return row


_RETIRE = object()  # queue sentinel: score what came before it, then end the loop


class MicroBatcher:
    """Opportunistic batching of `RecRequest`s onto one worker thread (see the module docstring).

    ``observe(batch_size, seconds)`` is called after each batch (the server's metrics). A batcher
    whose bundle was swapped out is *retired*: it scores what is queued and ends; a request that took
    the old snapshot before the swap and submits after it is scored alone, on the old engine, so
    in-flight requests finish on the bundle they started with."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 64,
        inline: bool = True,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.observe = observe
        self.retired = False
        # inline: score on the event-loop thread. A batch takes ~1 ms and blocks the loop that long,
        # but there is no thread hand-off per batch: on a busy machine every wake-up of another
        # thread waits for a time slice (milliseconds), which dominated p99 in benchmarks/serve_latency.py.
        # Requests that arrive meanwhile wait in the socket buffers and form the next batch.
        self.inline = inline
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="recommend")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0
        self.batch_sizes: dict[int, int] = {}
        self.compute_seconds = 0.0  # time inside recommend_batch: the rest of a request's latency is HTTP

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def retire(self) -> None:
        """Stop taking requests into batches: what is queued is scored, then the loop ends (no
        cancellation: a queued request must not fail because a new bundle came in)."""
        if not self.retired and self._queue is not None:
            self.retired = True
            self._queue.put_nowait(_RETIRE)

    async def submit(self, request: RecRequest) -> RecResult:
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        if self.retired:  # took this snapshot before a swap: finish on the old engine, alone
            return self._score([request])[0]
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, fut))
        return await fut

    def _score(self, requests: list[RecRequest]) -> list[RecResult]:
        started = time.perf_counter()
        results = self.engine.recommend_batch(requests)
        self._account(len(requests), time.perf_counter() - started)
        return results

    def _account(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.requests += size
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
        self.compute_seconds += seconds
        if self.observe is not None:
            self.observe(size, seconds)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        ending = False
        while not ending:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if _RETIRE in batch:  # nothing is queued after the sentinel (submit checks `retired`)
                batch.remove(_RETIRE)
                ending = True
            batch = [(r, f) for r, f in batch if not f.cancelled()]  # client went away
            if not batch:
                continue
            try:
                requests = [r for r, _ in batch]
                started = time.perf_counter()
                if self.inline:
                    results = self.engine.recommend_batch(requests)
                else:
                    results = await loop.run_in_executor(
                        self._executor, self.engine.recommend_batch, requests
                    )
                self._account(len(batch), time.perf_counter() - started)
            except Exception as e:  # a bug must fail these requests, not kill the batching loop
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), res in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(res)
