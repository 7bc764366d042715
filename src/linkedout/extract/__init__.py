"""linkedout.extract: catalog -> frames -> frozen backbone -> FeatureStore, resumable (see pipeline.py).

Public API: :func:`extract`, :func:`extract_ray` (the same on a Ray cluster, ray_engine.py),
:class:`ExtractReport`, :class:`ExtractError`, :func:`load_catalog`,
:class:`ExtractOptions` (a run's settings, checked per backbone kind), :func:`catalog_from_log` (a
text-only catalogue from a log's item metadata), :func:`encode_captions` (stage two of the caption
path: a store's generated captions -> a text encoder -> a caption store, captions.py).
A store's description (`linkedout store info`) lives with the store: `linkedout.store.info`.

Names are resolved lazily (PEP 562): decode worker processes import ``linkedout.extract.decode_worker``
and must not pull the pipeline (hence Lance and the store) in with the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_FRAME_SIZE": "pipeline",
    "ExtractError": "pipeline",
    "ExtractReport": "pipeline",
    "default_frame_size": "pipeline",
    "cpu_count": "pipeline",
    "default_workers": "pipeline",
    "extract": "pipeline",
    "load_catalog": "pipeline",
    "catalog_from_log": "pipeline",
    "encode_captions": "captions",
    "ExtractOptions": "options",
    "ENGINES": "options",
    "PARALLEL_MODES": "options",
    "ExtractorRecipe": "ray_engine",
    "extract_ray": "ray_engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'linkedout.extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"linkedout.extract.{module}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
