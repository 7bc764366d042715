"""The HTTP service (FastAPI): `create_app` wires the pieces together, `run_server` runs it with uvicorn.

Where things live: the endpoints are in `routes` (handlers on an `APIRouter`), their bodies in `schemas`,
the configuration and the shared state in `state`, the safety checks in `security`, the body limit and
request metrics in `middleware` / `metrics`. docs/serving.md describes the API.

Safety by default: write endpoints need the API key when one is configured, and `check_bind` refuses a
non-loopback address without one; video paths are read only under the configured media roots (after
resolving symlinks); bodies, histories, k and event batches have limits; CORS is off unless origins
are given.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from linkedout.serve.middleware import BodyLimitApp, Observed
from linkedout.serve.routes import router
from linkedout.serve.security import check_bind
from linkedout.serve.state import ServeConfig, State


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Every HTTP error as ``{"detail": ...}`` with the exception's headers (``WWW-Authenticate`` on 401)."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(config: ServeConfig) -> BodyLimitApp:
    """The ASGI app for ``config``: FastAPI with the routes, wrapped in metrics and the body limit.
    The bundle is loaded when the app starts (its lifespan), not here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(max(1, config.threads))
        state = State(config)
        app.state.linkedout = state
        # The catalogue's id maps are hundreds of thousands of long-lived objects; left in the
        # collector's generations, every full collection walks them all (milliseconds of p99 at 100k
        # items). Freezing moves what startup built out of the collector's sight.
        gc.collect()
        gc.freeze()
        await state.batcher.start()
        state.start_item_feed()
        try:
            yield
        finally:
            await state.stop_item_feed()
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
    # The router's routes go into the app's own route list, not through app.include_router: FastAPI
    # 0.165 keeps an included router as one nested route and dispatches through it on every request
    # (~100 more Python calls, 15-20 us per request measured), which the latency benchmark would pay.
    # Flat, matching is what it was when the handlers were closures on the app. The route objects
    # are shared by every app built here; they hold no per-app state.
    app.router.routes.extend(router.routes)
    app.add_exception_handler(HTTPException, http_error)
    return BodyLimitApp(Observed(app), config.max_body_bytes)


def run_server(
    config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"
) -> None:
    import uvicorn

    check_bind(host, config.api_key)
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
