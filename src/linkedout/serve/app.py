"""The HTTP service (FastAPI): `create_app` wires the pieces together, `run_server` runs it with uvicorn.

Where things live: the endpoints are in `routes` (handlers on an `APIRouter`), their bodies in `schemas`,
the configuration and the shared state in `state`, the safety checks in `security`, the body limit and
request metrics in `middleware` / `metrics`. docs/serving.md describes the API.

Safety by default: write endpoints need the API key when one is configured, and `check_bind` refuses a
non-loopback address without one; video paths are read only under the configured media roots (after
resolving symlinks); bodies, histories, k and event batches have limits; CORS is off unless origins
are given.

Worker processes (``run_server(..., workers=N)``): uvicorn's own multiprocess mode. The parent binds
the port and supervises N spawned workers that accept on the same socket; each worker builds its app
from the import string ``linkedout.serve.app:app_from_env`` (a factory reading the configuration the
parent wrote to a private file). docs/serving.md says why uvicorn's mode and not gunicorn.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from linkedout.serve.bundle import Bundle
from linkedout.serve.metrics import MULTIPROC_ENV, Metrics
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
        await state.start()
        try:
            yield
        finally:
            await state.stop()
            state.close()
            Metrics.mark_dead()  # this worker's live gauges leave the aggregate with it

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


CONFIG_ENV = "LINKEDOUT_SERVE_CONFIG"  # path of the JSON configuration a worker reads


def write_config(config: ServeConfig, path: Path) -> None:
    """The configuration as JSON for the workers, readable by this user only (it holds the API key:
    a file, not an environment variable, which other tools print more readily)."""
    if isinstance(config.bundle, Bundle):
        raise ValueError("worker processes load the bundle themselves: give its path, not a Bundle")
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
    data = {k: [str(x) for x in v] if isinstance(v, list) else v for k, v in data.items()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def app_from_env() -> BodyLimitApp:
    """The app factory uvicorn calls in each worker process (``linkedout.serve.app:app_from_env``)."""
    data = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
    return create_app(ServeConfig(**data))


def run_server(
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    workers: int = 1,
) -> None:
    """Serve until interrupted. ``workers > 1``: that many processes on one port (uvicorn spawns and
    supervises them, restarting one that dies), with a fresh control directory for this start
    (metrics files, reload generation, configuration) that is removed when the server exits."""
    import uvicorn

    check_bind(host, config.api_key)
    if workers <= 1:
        app = create_app(config)
        uvicorn.run(
            app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5
        )
        return
    run_dir = Path(tempfile.mkdtemp(prefix="linkedout-serve-"))  # 0700: metrics, reload and config
    try:
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir()
        control = run_dir / "control"
        control.mkdir()
        worker_config = dataclasses.replace(config, control_dir=str(control), workers=workers)
        write_config(worker_config, run_dir / "config.json")
        # set before the workers are spawned: they inherit the environment, and prometheus_client
        # chooses its multiprocess value store when it is first imported
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
        os.environ[CONFIG_ENV] = str(run_dir / "config.json")
        uvicorn.run(
            "linkedout.serve.app:app_from_env",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        os.environ.pop(CONFIG_ENV, None)
        shutil.rmtree(run_dir, ignore_errors=True)
