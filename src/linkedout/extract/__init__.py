"""linkedout.extract: catalog -> frames -> frozen backbone -> FeatureStore, resumable (see pipeline.py).

Public API: :func:`extract`, :class:`ExtractReport`, :class:`ExtractError`, :func:`load_catalog`,
:func:`describe_store`.
"""

from linkedout.extract.pipeline import (
    DEFAULT_FRAME_SIZE,
    ITEM_TEXT_RECIPE,
    ExtractError,
    ExtractReport,
    default_frame_size,
    default_workers,
    extract,
    item_text,
    load_catalog,
    pipeline_fingerprint_fields,
)
from linkedout.extract.storeinfo import describe_store, format_store_info

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "ITEM_TEXT_RECIPE",
    "ExtractError",
    "ExtractReport",
    "default_frame_size",
    "default_workers",
    "describe_store",
    "extract",
    "format_store_info",
    "item_text",
    "load_catalog",
    "pipeline_fingerprint_fields",
]
