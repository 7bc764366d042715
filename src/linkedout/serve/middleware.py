"""Pure ASGI middleware around the FastAPI app: the body limit (outermost, so nothing reads an
oversized body) and per-route status/latency for `GET /metrics`. Plain ASGI callables, not Starlette's
``BaseHTTPMiddleware``: see `Observed` for the cost that avoids."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI


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
