"""linkedout.store: the FeatureStore (Lance on local disk), keyed by item id + extractor fingerprint, and
its description for `linkedout store info` (`describe_store`, `format_store_info`)."""

from linkedout.store.feature_store import FeatureStore, FingerprintMismatchError, StoreMeta
from linkedout.store.info import describe_store, format_store_info, human_bytes

__all__ = [
    "FeatureStore",
    "FingerprintMismatchError",
    "StoreMeta",
    "describe_store",
    "format_store_info",
    "human_bytes",
]
