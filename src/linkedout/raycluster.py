"""Connecting to a Ray cluster, for every engine that runs on one (extraction's Ray Data pipeline,
training's Ray Train launcher): fail fast on an address that does not answer, start a local Ray when
no address is given, and leave a caller's own connection alone."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

# A cluster address that does not answer is a user error to report, not something to wait on:
# ray.init retries an unreachable GCS for minutes.
CONNECT_TIMEOUT_S = 5.0


def check_reachable(address: str, error: type[Exception]) -> None:
    """Raise ``error`` for a ``host:port`` (or ``ray://host:port``) that nothing listens on."""
    if address == "auto" or address.startswith(("local", "anyscale")):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise error(f"--address must be auto or host:port, not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise error(
            f"cannot reach the Ray cluster at {address} ({e}); start one with `ray start --head` "
            "and pass the address it prints, or leave out --address to start a local one"
        ) from None


@contextlib.contextmanager
def connected(
    ray: Any, address: str | None, runtime_env: dict[str, Any] | None, error: type[Exception]
) -> Iterator[None]:
    """Connect to ``address`` (None: start a local Ray for this run), unless already connected (a
    caller's own ``ray.init``, which it also shuts down). A cluster we started is stopped after.
    Connection failures raise ``error`` with the address."""
    if address is not None:  # also when connected already: a wrong address is still a wrong address
        check_reachable(address, error)
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, logging_level="WARNING")
    except ConnectionError as e:  # e.g. --address auto with no cluster running on this machine
        raise error(f"cannot connect to a Ray cluster at {address}: {e}") from None
    try:
        yield
    finally:
        ray.shutdown()
