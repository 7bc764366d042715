"""linkedout.store: the FeatureStore (Lance on local disk), keyed by item id + extractor fingerprint."""

from linkedout.store.feature_store import FeatureStore, FingerprintMismatchError, StoreMeta

__all__ = ["FeatureStore", "FingerprintMismatchError", "StoreMeta"]
