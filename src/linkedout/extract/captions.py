"""The caption path, stage two: a store's generated captions -> a text encoder -> a caption store.

::

    stage one   linkedout extract --backbone vllm --new-tokens K --prompt "Describe ..." --store VLLM
                rows: item_id, LayerTokens, caption (the K greedy tokens, decoded)
                        │ captions_catalog(VLLM): id + caption per stored item, in store order
                        ▼
    stage two   linkedout extract --backbone caption --captions-from VLLM --store CAPTIONS [--model DIR]
                rows: item_id, one sentence vector [1, 1, D], the same caption (kept for display)
                        ▼
                linkedout train --item-encoder caption --features CAPTIONS

Describe What You See (arXiv 2508.09789) in two resumable extraction runs: stage two is the ordinary
extraction pipeline (`linkedout.extract.pipeline.extract`) over a catalogue built from the source
store, so it resumes, batches and records failures like any run. What is particular here:

* **Key.** The caption store's fingerprint fields are the text encoder's plus ``captions_from``, the
  source store's fingerprint: the key covers both stages (another Video-LLM, prompt or K gives another
  caption store). The source's path and fields are recorded as ``source`` in store.json (not in the
  key: a moved source store is the same source).
* **A changed source.** Resuming into a caption store whose source was re-extracted with other settings
  since (another fingerprint at the same path) is `SourceStoreChangedError`, naming both stores.
* **Missing text.** An item whose row has no or empty generated text is a recorded failure
  (``caption: no generated text ...``), never a crash; a source store without any caption at all
  (a frames store, or a Video-LLM run with ``--new-tokens 0``) is an error before anything loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from linkedout.backbones.base import Backbone
from linkedout.backbones.extractor import CaptionSource
from linkedout.data.catalog import Catalog, CatalogItem
from linkedout.extract.pipeline import ExtractReport, extract
from linkedout.store import FeatureStore, FingerprintMismatchError
from linkedout.store.feature_store import MANIFEST

__all__ = [
    "SourceStoreChangedError",
    "caption_source",
    "captions_catalog",
    "check_source_unchanged",
    "encode_captions",
    "prepare_captions",
]


class SourceStoreChangedError(FingerprintMismatchError):
    """The source store of a caption store was re-extracted with other settings since."""


def caption_source(store: FeatureStore) -> CaptionSource:
    """Stage one as stage two records it: the store's path, fingerprint and fingerprint fields."""
    return CaptionSource(str(store.path.resolve()), store.fingerprint, dict(store.meta.fingerprint_fields))


def captions_catalog(store: FeatureStore) -> Catalog:
    """A text-only catalogue of the store's items (store order), each one's ``text`` its caption
    (None when the row has no or only blank generated text: the pipeline records it as a failure)."""
    ids = store.ids()
    captions = store.captions(ids)
    if ids and not any(c and c.strip() for c in captions):
        raise ValueError(
            f"the feature store at {store.path} holds no generated text ({len(ids)} items, no caption): "
            "extract it with --backbone vllm --new-tokens K (K > 0) to keep each item's caption"
        )
    items = [
        CatalogItem(id=i, path="", text=c if c and c.strip() else None)
        for i, c in zip(ids, captions, strict=True)
    ]
    return Catalog(items, source=f"captions of {store.path}")


def check_source_unchanged(out: str | os.PathLike[str], source: CaptionSource) -> None:
    """Refuse to resume a caption store at ``out`` encoded from another version of the source store
    (a different fingerprint): its vectors would mix two Video-LLM runs' captions under one key."""
    manifest = Path(out) / MANIFEST
    if not manifest.is_file():
        return
    meta = FeatureStore.open(out).meta
    recorded = meta.fingerprint_fields.get("captions_from")
    if recorded is None:
        raise FingerprintMismatchError(
            f"the feature store at {out} was not encoded from captions (its text is "
            f"{meta.fingerprint_fields.get('item_text', 'none')!r}); use a new --store for the caption store"
        )
    if recorded != source.fingerprint:
        was = (meta.source or {}).get("store", "a store")
        raise SourceStoreChangedError(
            f"the source store {source.store} now has fingerprint {source.fingerprint}, but the caption "
            f"store {out} was encoded from fingerprint {recorded} ({was}): the source was re-extracted "
            "with other settings since. Encode into a new --store (one store = one fingerprint)."
        )


def encode_captions(
    source: str | os.PathLike[str], backbone: Backbone, out: str | os.PathLike[str], **options: Any
) -> ExtractReport:
    """Stage two: encode the captions of the store at ``source`` with ``backbone`` (``caption`` or
    ``text``) into the store at ``out`` (created, or resumed). ``options`` go to `extract` (batch_size,
    limit, retry_failed, progress, torch_threads). See the module docstring."""
    catalog, given = prepare_captions(source, out)
    return extract(catalog, backbone, out, captions_from=given, **options)


def prepare_captions(
    source: str | os.PathLike[str], out: str | os.PathLike[str]
) -> tuple[Catalog, CaptionSource]:
    """Every check stage two can make before a text encoder loads (the source store exists and has
    captions, the caption store at ``out`` was not encoded from another version of it), and what
    `extract` then needs: the captions as a catalogue and the source to record."""
    src = FeatureStore.open(source)
    given = caption_source(src)
    check_source_unchanged(out, given)
    return captions_catalog(src), given
