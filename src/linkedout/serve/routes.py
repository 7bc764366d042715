"""The HTTP endpoints, as module-level handlers on one `APIRouter` (docs/serving.md has examples)::

    POST /v1/recommend       {history: [ids] | user_id, k, exclude_seen, explain} -> items + explanations
    POST /v1/events          {events: [{event_id, user_id, item_id, ts?, kind?}]}  durable before the reply
    POST /v1/items           {item_id, title?, tokens | video_path}                 encoded, indexed at once
    GET  /v1/items           catalogue page (offset, limit, q)
    GET  /v1/items/{id}      one item (title, layer weights, added online or not)
    GET  /v1/items/{id}/thumbnail
    POST /v1/admin/reload    {bundle?}   load, warm and swap a bundle with no downtime (API key)
    GET  /healthz   GET /metrics (Prometheus text)   GET / (demo page)

Each handler takes its body and the `State` (via the `get_state` dependency; limits from
``state.config``), so it can be called without an HTTP client. A handler reads ``state.serving`` (bundle,
engine, batcher) once and keeps that snapshot: a reload swaps it, and a request must not mix two.
`app.create_app` includes the router.
Every bad input is a 4xx with a message (schemathesis runs against the OpenAPI spec in
tests/test_serve_api.py to keep it so).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import StringConstraints

from linkedout.events import Event, EventConflict, EventStoreUnavailable, ItemExists
from linkedout.serve.bundle import BundleError
from linkedout.serve.engine import Engine, RecRequest
from linkedout.serve.histories import trained_upto, user_history_rows
from linkedout.serve.schemas import (
    Contribution,
    EventsRequest,
    EventsResponse,
    ItemInfo,
    ItemList,
    NewItem,
    Recommended,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    WatchEvent,
    WorkerState,
)
from linkedout.serve.security import require_key, resolve_media_path
from linkedout.serve.state import Serving, State, get_state

STATIC = Path(__file__).with_name("static")

router = APIRouter()


# ---------------------------------------------------------------------- helpers
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


def item_info(state: State, row: int, serving: Serving | None = None) -> ItemInfo:
    """The `ItemInfo` of one index row (catalogue or added online), as every item endpoint returns it;
    ``serving``: the snapshot the row came from (default: the current one)."""
    serving = serving or state.serving
    engine = serving.engine
    item_id = engine.ids[row]
    source = engine.added_source.get(row, "bundle")
    return ItemInfo(
        item_id=item_id,
        title=engine.titles[row],
        caption=engine.captions[row],
        row=row,
        added_online=row in engine.added_source,
        source=source,
        blocked=bool(row < serving.bundle.n_items and serving.bundle.blocked[row]),
        # an item added online has no training events either
        cold=bool(row >= serving.bundle.n_items or serving.bundle.cold[row]),
        layer_names=serving.bundle.layer_names,
        layer_weights=engine.layer_weights(row),
        thumbnail=_thumb_url(engine, row),
    )


# ---------------------------------------------------------------------- recommend
@router.post(
    "/v1/recommend", response_model=RecommendResponse, responses={404: {}, 413: {}, 422: {}, 503: {}}
)
async def recommend(body: RecommendRequest, state: State = Depends(get_state)) -> RecommendResponse:
    serving, config = state.serving, state.config
    engine = serving.engine
    if (body.history is None) == (body.user_id is None):
        raise HTTPException(422, "give exactly one of `history` (item ids) or `user_id`")
    if body.k > config.max_k:
        raise HTTPException(422, f"k={body.k} is over the limit of {config.max_k}")
    if body.history is not None:
        ids = [str(x) for x in body.history]
        if len(ids) > config.max_history:
            raise HTTPException(422, f"history of {len(ids)} items is over the limit of {config.max_history}")
        rows, unknown = _rows(engine, ids)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10])
            raise HTTPException(422, f"unknown item ids in history: {shown} ({len(unknown)} unknown)")
    else:
        try:
            found = await asyncio.to_thread(
                user_history_rows,
                serving.bundle.histories,
                state.log,
                engine.row_of,
                body.user_id,
                config.max_history,
                trained_upto(serving.bundle.meta, state.events_identity),
            )
        except EventStoreUnavailable as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        if found is None:
            raise HTTPException(404, f"no watch events stored for user {body.user_id!r}")
        rows = found
    if not rows:
        raise HTTPException(422, "history is empty: give at least one item id")
    used = np.asarray(rows[-engine.max_len :], dtype=np.int64)  # the model's window: most recent last
    exclude = np.unique(np.asarray(rows, dtype=np.int64)) if body.exclude_seen else np.zeros(0, np.int64)
    # a pairwise bundle scores a user of its training log with that user's vector, others by fold-in
    histories = serving.bundle.histories
    user = histories.row(body.user_id) if body.user_id is not None and histories is not None else None
    result = await serving.batcher.submit(
        RecRequest(used, exclude, body.k, body.explain, explain_window=config.explain_window, user=user)
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
                caption=engine.captions[row],
                score=score,
                thumbnail=_thumb_url(engine, row),
                layer_weights=engine.layer_weights(row),
                because=because,
            )
        )
    return RecommendResponse(
        items=items,
        layer_names=serving.bundle.layer_names,
        history_used=[engine.ids[r] for r in used.tolist()],
        truncated=len(rows) > len(used),
    )


# ---------------------------------------------------------------------- events
@router.post(
    "/v1/events",
    response_model=EventsResponse,
    dependencies=[Depends(require_key)],
    responses={401: {}, 409: {}, 413: {}, 422: {}, 503: {}},
)
async def events(body: EventsRequest, state: State = Depends(get_state)) -> EventsResponse:
    config = state.config
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
    except EventStoreUnavailable as e:  # not stored, not acknowledged: a retry with the same ids is safe
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    state.n_events += new
    return EventsResponse(accepted=new, duplicates=dup)


# ---------------------------------------------------------------------- items
@router.post(
    "/v1/items",
    response_model=ItemInfo,
    status_code=201,
    dependencies=[Depends(require_key)],
    responses={401: {}, 403: {}, 409: {}, 413: {}, 422: {}, 503: {}},
)
async def add_item(body: NewItem, state: State = Depends(get_state)) -> ItemInfo:
    serving = state.serving
    engine = serving.engine
    if (body.tokens is None) == (body.video_path is None):
        raise HTTPException(422, "give exactly one of `tokens` (LayerTokens [L, S, D]) or `video_path`")
    if body.item_id in engine.row_of:
        raise HTTPException(409, f"item {body.item_id!r} already exists")
    if not serving.bundle.can_encode_items:
        raise HTTPException(
            409,
            f"this bundle's item encoder ({serving.bundle.model_config.item_encoder}) is "
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
                    state.extract_pool, engine.extract_video, body.item_id, str(path), body.title
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
                body.item_id, serving.bundle.bundle_id, vec.tobytes(), lw, body.title, thumb, source
            )
        )
    except ItemExists:
        raise HTTPException(409, f"item {body.item_id!r} already exists") from None
    except EventStoreUnavailable as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    # the store accepted the id, so it is ours; the item feed poller may have added it already
    row = engine.row_of.get(body.item_id)
    if row is None:
        row = engine.add_item(body.item_id, torch.from_numpy(vec), weights, body.title, thumb, source)
    state.metrics.set_catalogue(engine.n_items, len(engine.added_source))
    return item_info(state, row, serving)


@router.get("/v1/items", response_model=ItemList)
async def list_items(
    state: State = Depends(get_state),
    # Annotated rather than `= Query(0, ...)`: a direct call (a test) then gets the real defaults
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 60,
    q: Annotated[str, StringConstraints(max_length=200)] | None = None,
) -> ItemList:
    serving = state.serving
    engine = serving.engine
    n = engine.n_items
    if q:
        needle = q.lower()
        rows = [r for r in range(n) if needle in (engine.titles[r] or engine.ids[r]).lower()]
    else:
        rows = range(n)
    page = rows[offset : offset + limit]
    return ItemList(total=len(rows), items=[item_info(state, r, serving) for r in page])


@router.get("/v1/items/{item_id}", response_model=ItemInfo, responses={404: {}})
async def get_item(item_id: str, state: State = Depends(get_state)) -> ItemInfo:
    serving = state.serving
    row = serving.engine.row_of.get(item_id)
    if row is None:
        raise HTTPException(404, f"unknown item {item_id!r}")
    return item_info(state, row, serving)


@router.get("/v1/items/{item_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
async def thumbnail(item_id: str, state: State = Depends(get_state)) -> Response:
    engine = state.engine
    row = engine.row_of.get(item_id)
    if row is None or row not in engine.thumbnails:
        raise HTTPException(404, f"no thumbnail for item {item_id!r}")
    return Response(engine.thumbnails[row], media_type="image/jpeg")


# ---------------------------------------------------------------------- ops
@router.get("/healthz")
async def healthz(state: State = Depends(get_state)) -> dict:
    serving = state.serving
    bundle, engine = serving.bundle, serving.engine
    card = bundle.meta.get("card") or {}
    return {
        "status": "ok",
        "items": engine.n_items,
        "items_added_online": len(engine.added_source),
        "events": state.n_events,
        "bundle_id": bundle.bundle_id,
        "generation": serving.generation,
        "worker_pid": os.getpid(),  # which worker answered (several share the port)
        "fingerprint": bundle.fingerprint,
        "model": bundle.model_config.name,
        "item_encoder": bundle.model_config.item_encoder,
        "index": engine.index.kind,
        "protocol": card.get("protocol_line"),
        "metrics": card.get("metrics"),
        "uptime_s": round(time.time() - state.started, 3),
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State = Depends(get_state)) -> Response:
    # the event count is read from the store, not kept per process: with several workers (or
    # replicas on one database) no single process has seen every event
    state.n_events = await asyncio.to_thread(state.log.count_events)
    state.metrics.events.set(state.n_events)
    state.refresh_gauges()
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


@router.post(
    "/v1/admin/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(require_key)],
    responses={401: {}, 403: {}, 422: {}},
)
async def reload(body: ReloadRequest | None = None, state: State = Depends(get_state)) -> ReloadResponse:
    """Load the named bundle (default: the served bundle's directory again), score once with it,
    then swap. A broken bundle is refused with 422 and the old one keeps serving. With several
    workers the reply waits until every worker serves it (or reload_wait_s passed: all_workers false)."""
    try:
        path = state.resolve_bundle(body.bundle if body else None)
    except PermissionError as e:
        raise HTTPException(403, str(e)) from None
    except BundleError as e:
        raise HTTPException(422, str(e)) from None
    try:
        outcome = await state.reload(path)
    except BundleError as e:
        raise HTTPException(422, f"bundle refused, still serving {state.bundle.bundle_id}: {e}") from None
    serving = outcome.serving
    return ReloadResponse(
        bundle_id=serving.bundle.bundle_id,
        bundle=str(path),
        previous_bundle_id=outcome.previous_bundle_id,
        generation=serving.generation,
        items=serving.engine.n_items,
        load_seconds=round(outcome.load_seconds, 4),
        warm_seconds=round(outcome.warm_seconds, 4),
        all_workers=outcome.all_workers,
        workers=(
            {
                str(pid): WorkerState(**{k: r.get(k) for k in WorkerState.model_fields})
                for pid, r in outcome.workers.items()
            }
            if outcome.workers is not None
            else None
        ),
    )


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
