"""The HTTP service (FastAPI): recommendations with explanations, watch events, cold-start items, a page.

Endpoints (docs/serving.md has examples)::

    POST /v1/recommend       {history: [ids] | user_id, k, exclude_seen, explain} -> items + explanations
    POST /v1/events          {events: [{event_id, user_id, item_id, ts?, kind?}]}  durable before the reply
    POST /v1/items           {item_id, title?, tokens | video_path}                 encoded, indexed at once
    GET  /v1/items           catalogue page (offset, limit, q)
    GET  /v1/items/{id}      one item (title, layer weights, added online or not)
    GET  /v1/items/{id}/thumbnail
    GET  /healthz   GET /metrics (Prometheus text)   GET / (demo page)

Safety by default: write endpoints need the API key when one is configured, and `check_bind` refuses a
non-loopback address without one; video paths are read only under the configured media roots (after
resolving symlinks); bodies, histories, k and event batches have limits; CORS is off unless origins
are given. Every bad input is a 4xx with a message (schemathesis runs against the OpenAPI spec in
tests/test_serve_api.py to keep it so).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from linkedout.serve.bundle import Bundle, BundleError, load_bundle
from linkedout.serve.engine import Engine, MicroBatcher, RecRequest
from linkedout.serve.events import Event, EventConflict, EventLog

STATIC = Path(__file__).with_name("static")


@dataclass
class ServeConfig:
    bundle: str | Path | Bundle
    events: str | Path | None = None  # SQLite file; default: <bundle>/state.sqlite
    api_key: str | None = None
    media_roots: list[str | Path] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024  # a frames-backbone LayerTokens JSON is ~0.5 MB
    max_history: int = 1000
    max_k: int = 100
    max_events: int = 1000  # per request
    explain_window: int = 20  # occlusion over the most recent items only: one user forward per item
    index: str = "exact"
    threads: int = 1  # torch intra-op threads for the batch worker
    max_batch: int = 64
    synchronous: str = "FULL"  # SQLite: FULL = fsync per group commit


# ---------------------------------------------------------------------- request / response schemas
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[ItemId | int] | None = Field(
        None, description="Item ids, oldest first. Exactly one of history / user_id."
    )
    user_id: UserId | None = Field(None, description="Use this user's stored watch events as the history.")
    k: int = Field(10, ge=1, description="How many items (at most the server's max_k).")
    exclude_seen: bool = Field(True, description="Never recommend an item of the history.")
    explain: bool = Field(True, description="Add contributing history items (occlusion) per result.")


class Contribution(BaseModel):
    item_id: str
    title: str | None
    score_drop: float


class Recommended(BaseModel):
    item_id: str
    title: str | None
    score: float
    thumbnail: str | None
    layer_weights: list[float] | None
    because: list[Contribution] | None


class RecommendResponse(BaseModel):
    items: list[Recommended]
    layer_names: list[str]
    history_used: list[str]
    truncated: bool


class WatchEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    user_id: UserId
    item_id: ItemId | int
    ts: float | None = Field(None, allow_inf_nan=False, description="Seconds since the epoch; default now.")
    kind: Annotated[str, StringConstraints(min_length=1, max_length=32)] = "watch"


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[WatchEvent] = Field(..., min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    duplicates: list[str]


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    title: Annotated[str, StringConstraints(max_length=512)] | None = None
    tokens: list[list[list[float]]] | None = Field(
        None, description="LayerTokens [L, S, D] of the bundle's extractor."
    )
    video_path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        None,
        description="A clip under one of the server's media roots; extracted with the bundle's backbone.",
    )


class ItemInfo(BaseModel):
    item_id: str
    title: str | None
    row: int
    added_online: bool
    source: str
    blocked: bool
    layer_names: list[str]
    layer_weights: list[float] | None
    thumbnail: str | None


class ItemList(BaseModel):
    total: int
    items: list[ItemInfo]


# ---------------------------------------------------------------------- helpers
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key (write endpoints would be open)."""
    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"refusing to bind {host!r} without an API key: anyone on the network could write events and "
            "items. Set --api-key (or LINKEDOUT_API_KEY), or bind 127.0.0.1."
        )


def resolve_media_path(path: str, roots: list[Path]) -> Path:
    """The real file for ``path`` if (after resolving every symlink and ``..``) it lies under one of
    ``roots``; `PermissionError` otherwise. Relative paths are taken relative to each root in turn."""
    if not roots:
        raise PermissionError("video paths are disabled on this server (no media roots configured)")
    if "\x00" in path:
        raise PermissionError("invalid path")
    candidates = [Path(path)] if os.path.isabs(path) else [r / path for r in roots]
    for cand in candidates:
        real = Path(os.path.realpath(cand))
        for root in roots:
            if real.is_relative_to(root) and real.is_file():
                return real
    raise PermissionError(f"{path!r} is not a file under the server's media roots")


class Metrics:
    """Prometheus text exposition, by hand (no client library needed for counters and a histogram)."""

    BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.latency.setdefault(route, [0] * len(self.BUCKETS))
        for i, b in enumerate(self.BUCKETS):
            if seconds <= b:
                buckets[i] += 1
        self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds
        self.latency_count[route] = self.latency_count.get(route, 0) + 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        out = [
            "# HELP linkedout_http_requests_total HTTP requests by route and status.",
            "# TYPE linkedout_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(
                f'linkedout_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}'
            )
        out += [
            "# HELP linkedout_http_request_seconds Request latency.",
            "# TYPE linkedout_http_request_seconds histogram",
        ]
        for route, buckets in sorted(self.latency.items()):
            for b, n in zip(self.BUCKETS, buckets, strict=True):
                out.append(f'linkedout_http_request_seconds_bucket{{route="{route}",le="{b}"}} {n}')
            count = self.latency_count[route]
            out.append(f'linkedout_http_request_seconds_bucket{{route="{route}",le="+Inf"}} {count}')
            out.append(f'linkedout_http_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
            out.append(f'linkedout_http_request_seconds_count{{route="{route}"}} {count}')
        for name, (help_text, value) in gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(out) + "\n"


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, declared or streamed (chunked)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_json(send, 400, "invalid Content-Length header")
            if size > self.limit:
                return await _send_json(send, 413, f"request body over the limit of {self.limit} bytes")
        # buffer the body (at most `limit` bytes) so a lying or absent Content-Length cannot get past
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await _send_json(send, 413, f"request body over the limit of {self.limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- the app
class State:
    """Everything a request handler needs; built in the app's lifespan."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        bundle = config.bundle if isinstance(config.bundle, Bundle) else load_bundle(config.bundle)
        self.bundle = bundle
        self.engine = Engine(bundle, config.index)
        events = config.events
        if events is None:
            if bundle.path is None:
                raise ValueError("an in-memory bundle needs an explicit events path")
            events = bundle.path / "state.sqlite"
        self.log = EventLog(events, synchronous=config.synchronous)
        self.media_roots = [Path(os.path.realpath(r)) for r in config.media_roots]
        self.batcher = MicroBatcher(self.engine, config.max_batch)
        self.extract_pool = ThreadPoolExecutor(1, thread_name_prefix="extract")
        self.metrics = Metrics()
        self.started = time.time()
        self.n_events = self.log.count_events()
        self.replayed = self._replay_items()

    def _replay_items(self) -> int:
        n = 0
        for item_id, vec, lw, title, thumb, source in self.log.items(self.bundle.bundle_id):
            if item_id in self.engine.row_of:
                continue
            weights = np.frombuffer(lw, dtype=np.float32).tolist() if lw else None
            vector = torch.from_numpy(np.frombuffer(vec, dtype=np.float32).copy())
            self.engine.add_item(item_id, vector, weights, title, thumb, source)
            n += 1
        return n

    def close(self) -> None:
        self.extract_pool.shutdown(wait=True)
        self.log.close()


def _rows(engine: Engine, ids: list[str]) -> tuple[list[int], list[str]]:
    rows, unknown = [], []
    for i in ids:
        row = engine.row_of.get(i)
        if row is None:
            unknown.append(i)
        else:
            rows.append(row)
    return rows, unknown


def _thumb_url(engine: Engine, row: int) -> str | None:
    if row not in engine.thumbnails:
        return None
    from urllib.parse import quote

    return f"/v1/items/{quote(engine.ids[row], safe='')}/thumbnail"


def create_app(config: ServeConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(max(1, config.threads))
        state = State(config)
        app.state.linkedout = state
        # The catalogue's id maps are hundreds of thousands of long-lived objects; left in the
        # collector's generations, every full collection walks them all (milliseconds of p99 at 100k
        # items). Freezing moves what startup built out of the collector's sight.
        gc.collect()
        gc.freeze()
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()
            state.close()

    app = FastAPI(
        title="linkedout",
        version="1",
        summary="Knowledge-aware video recommendation: store-and-retrieve serving of a linkedout bundle.",
        lifespan=lifespan,
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )

    async def st(request: Request) -> State:  # async: a sync dependency costs a thread hop
        return request.app.state.linkedout

    async def require_key(request: Request) -> None:
        key = config.api_key
        if not key:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:]
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(
                401, "missing or wrong API key (X-API-Key header)", {"WWW-Authenticate": "Bearer"}
            )

    # ------------------------------------------------------------------ recommend
    @app.post("/v1/recommend", response_model=RecommendResponse, responses={404: {}, 413: {}, 422: {}})
    async def recommend(body: RecommendRequest, state: State = Depends(st)) -> RecommendResponse:
        engine = state.engine
        if (body.history is None) == (body.user_id is None):
            raise HTTPException(422, "give exactly one of `history` (item ids) or `user_id`")
        if body.k > config.max_k:
            raise HTTPException(422, f"k={body.k} is over the limit of {config.max_k}")
        if body.history is not None:
            ids = [str(x) for x in body.history]
            if len(ids) > config.max_history:
                raise HTTPException(
                    422, f"history of {len(ids)} items is over the limit of {config.max_history}"
                )
            rows, unknown = _rows(engine, ids)
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:10])
                raise HTTPException(422, f"unknown item ids in history: {shown} ({len(unknown)} unknown)")
        else:
            ids = await asyncio.to_thread(state.log.history, body.user_id, config.max_history)
            if not ids:
                raise HTTPException(404, f"no watch events stored for user {body.user_id!r}")
            rows, _ = _rows(engine, ids)
        if not rows:
            raise HTTPException(422, "history is empty: give at least one item id")
        used = np.asarray(rows[-engine.max_len :], dtype=np.int64)  # the model's window: most recent last
        exclude = np.unique(np.asarray(rows, dtype=np.int64)) if body.exclude_seen else np.zeros(0, np.int64)
        result = await state.batcher.submit(
            RecRequest(used, exclude, body.k, body.explain, explain_window=config.explain_window)
        )
        items = []
        for j, (row, score) in enumerate(zip(result.rows, result.scores, strict=True)):
            because = None
            if result.contributions is not None:
                because = [
                    Contribution(item_id=engine.ids[h], title=engine.titles[h], score_drop=d)
                    for h, d in result.contributions[j]
                ]
            items.append(
                Recommended(
                    item_id=engine.ids[row],
                    title=engine.titles[row],
                    score=score,
                    thumbnail=_thumb_url(engine, row),
                    layer_weights=engine.layer_weights(row),
                    because=because,
                )
            )
        return RecommendResponse(
            items=items,
            layer_names=state.bundle.layer_names,
            history_used=[engine.ids[r] for r in used.tolist()],
            truncated=len(rows) > len(used),
        )

    # ------------------------------------------------------------------ events
    @app.post(
        "/v1/events",
        response_model=EventsResponse,
        dependencies=[Depends(require_key)],
        responses={401: {}, 409: {}, 413: {}, 422: {}},
    )
    async def events(body: EventsRequest, state: State = Depends(st)) -> EventsResponse:
        if len(body.events) > config.max_events:
            raise HTTPException(
                413, f"{len(body.events)} events in one request; the limit is {config.max_events}"
            )
        batch, unknown = [], []
        seen: dict[str, WatchEvent] = {}
        for e in body.events:
            item = str(e.item_id)
            if item not in state.engine.row_of:
                unknown.append(item)
            if e.event_id in seen and seen[e.event_id] != e:
                raise HTTPException(409, f"event id {e.event_id!r} appears twice with different content")
            seen[e.event_id] = e
            batch.append(Event(e.event_id, e.user_id, item, e.ts, e.kind))
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10])
            raise HTTPException(422, f"unknown item ids: {shown}; nothing of this request was stored")
        try:
            new, dup = await asyncio.wrap_future(state.log.append_events(batch))
        except EventConflict as e:
            raise HTTPException(409, str(e)) from None
        state.n_events += new
        return EventsResponse(accepted=new, duplicates=dup)

    # ------------------------------------------------------------------ items
    def item_info(state: State, row: int) -> ItemInfo:
        engine = state.engine
        item_id = engine.ids[row]
        source = engine.added_source.get(row, "bundle")
        return ItemInfo(
            item_id=item_id,
            title=engine.titles[row],
            row=row,
            added_online=row in engine.added_source,
            source=source,
            blocked=bool(row < state.bundle.n_items and state.bundle.blocked[row]),
            layer_names=state.bundle.layer_names,
            layer_weights=engine.layer_weights(row),
            thumbnail=_thumb_url(engine, row),
        )

    @app.post(
        "/v1/items",
        response_model=ItemInfo,
        status_code=201,
        dependencies=[Depends(require_key)],
        responses={401: {}, 403: {}, 409: {}, 413: {}, 422: {}},
    )
    async def add_item(body: NewItem, state: State = Depends(st)) -> ItemInfo:
        engine = state.engine
        if (body.tokens is None) == (body.video_path is None):
            raise HTTPException(422, "give exactly one of `tokens` (LayerTokens [L, S, D]) or `video_path`")
        if body.item_id in engine.row_of:
            raise HTTPException(409, f"item {body.item_id!r} already exists")
        if not state.bundle.can_encode_items:
            raise HTTPException(
                409,
                f"this bundle's item encoder ({state.bundle.meta['model_config'].get('item_encoder')}) is "
                "id-only: new items need a bundle exported from a content item encoder",
            )
        thumb = None
        source = "tokens"
        try:
            if body.tokens is not None:
                try:
                    # values beyond float32 become inf here, which encode_tokens refuses with a 422
                    with np.errstate(over="ignore"):
                        tokens = np.asarray(body.tokens, dtype=np.float32)
                except ValueError:
                    raise HTTPException(
                        422, "tokens must be a regular [L, S, D] array (rows of equal length)"
                    ) from None
            else:
                try:
                    path = resolve_media_path(body.video_path, state.media_roots)
                except PermissionError as e:
                    raise HTTPException(403, str(e)) from None
                from linkedout.video import VideoDecodeError

                loop = asyncio.get_running_loop()
                try:
                    tokens, thumb = await loop.run_in_executor(
                        state.extract_pool, engine.extract_video, body.item_id, str(path)
                    )
                except VideoDecodeError as e:
                    raise HTTPException(422, f"could not decode {body.video_path!r}: {e.reason}") from None
                source = "video"
            with np.errstate(over="ignore"):
                vector, weights = engine.encode_tokens(tokens)
        except BundleError as e:
            raise HTTPException(422, str(e)) from None
        lw = np.asarray(weights, dtype=np.float32).tobytes() if weights is not None else None
        vec = vector.detach().float().numpy().astype(np.float32)
        try:  # durable first: an acknowledged item survives a crash (replayed at startup)
            await asyncio.wrap_future(
                state.log.add_item(
                    body.item_id, state.bundle.bundle_id, vec.tobytes(), lw, body.title, thumb, source
                )
            )
        except sqlite3.IntegrityError:
            raise HTTPException(409, f"item {body.item_id!r} already exists") from None
        try:
            row = engine.add_item(body.item_id, torch.from_numpy(vec), weights, body.title, thumb, source)
        except KeyError:
            raise HTTPException(409, f"item {body.item_id!r} already exists") from None
        return item_info(state, row)

    @app.get("/v1/items", response_model=ItemList)
    async def list_items(
        state: State = Depends(st),
        offset: int = Query(0, ge=0),
        limit: int = Query(60, ge=1, le=500),
        q: Annotated[str, StringConstraints(max_length=200)] | None = None,
    ) -> ItemList:
        engine = state.engine
        n = engine.n_items
        if q:
            needle = q.lower()
            rows = [r for r in range(n) if needle in (engine.titles[r] or engine.ids[r]).lower()]
        else:
            rows = range(n)
        page = rows[offset : offset + limit]
        return ItemList(total=len(rows), items=[item_info(state, r) for r in page])

    @app.get("/v1/items/{item_id}", response_model=ItemInfo, responses={404: {}})
    async def get_item(item_id: str, state: State = Depends(st)) -> ItemInfo:
        row = state.engine.row_of.get(item_id)
        if row is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return item_info(state, row)

    @app.get("/v1/items/{item_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
    async def thumbnail(item_id: str, state: State = Depends(st)) -> Response:
        row = state.engine.row_of.get(item_id)
        if row is None or row not in state.engine.thumbnails:
            raise HTTPException(404, f"no thumbnail for item {item_id!r}")
        return Response(state.engine.thumbnails[row], media_type="image/jpeg")

    # ------------------------------------------------------------------ ops
    @app.get("/healthz")
    async def healthz(state: State = Depends(st)) -> dict:
        card = state.bundle.meta.get("card") or {}
        return {
            "status": "ok",
            "items": state.engine.n_items,
            "items_added_online": len(state.engine.added_source),
            "events": state.n_events,
            "bundle_id": state.bundle.bundle_id,
            "fingerprint": state.bundle.fingerprint,
            "model": state.bundle.meta["model_config"].get("name"),
            "item_encoder": state.bundle.meta["model_config"].get("item_encoder"),
            "index": state.engine.index.kind,
            "protocol": card.get("protocol_line"),
            "metrics": card.get("metrics"),
            "uptime_s": round(time.time() - state.started, 3),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(state: State = Depends(st)) -> PlainTextResponse:
        b = state.batcher
        gauges = {
            "linkedout_catalogue_items": ("Items in the index.", state.engine.n_items),
            "linkedout_items_added_online": ("Items added since export.", len(state.engine.added_source)),
            "linkedout_events_stored": ("Watch events stored.", state.n_events),
            "linkedout_recommend_batches_total": ("Micro-batches run.", b.batches),
            "linkedout_recommend_batched_requests_total": ("Requests in micro-batches.", b.requests),
            "linkedout_eventlog_commits_total": ("SQLite group commits.", state.log.commits),
            "linkedout_recommend_compute_seconds_total": ("Time scoring batches.", b.compute_seconds),
        }
        text = state.metrics.render(gauges)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return BodyLimitApp(Observed(app), config.max_body_bytes)


class Observed:
    """Pure ASGI middleware recording status and latency per route template (Starlette's
    ``@app.middleware("http")`` costs about a millisecond per request on a busy core)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = getattr(self.app.state, "linkedout", None)
            if state is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.observe(scope["method"], route, status, time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


class BodyLimitApp(BodyLimit):
    """The FastAPI app wrapped in the body limit (outermost, so nothing reads an oversized body);
    attribute access falls through to the FastAPI app (``.state``, ``.openapi()``, routes)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


def run_server(
    config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"
) -> None:
    import uvicorn

    check_bind(host, config.api_key)
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
