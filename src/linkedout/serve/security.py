"""Safety defaults of the service, in one place: no open bind beyond loopback without an API key, the
API key on write endpoints, and video paths only under the configured media roots."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from fastapi import HTTPException, Request

from linkedout.serve.state import get_state


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


async def require_key(request: Request) -> None:
    """Dependency of the write endpoints: 401 unless the configured API key is given (``X-API-Key`` or
    ``Authorization: Bearer``); open when none is configured (`check_bind` keeps that on loopback)."""
    # get_state called, not declared as a sub-dependency: FastAPI's solving of a nested dependency
    # costs ~60 Python calls per write request, this direct call three
    state = await get_state(request)
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:]
    # constant-time comparison: the time to reject must not leak how much of the key was right
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise HTTPException(
            401, "missing or wrong API key (X-API-Key header)", {"WWW-Authenticate": "Bearer"}
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
