"""Offline export: a trained run -> the serving `Bundle` (`linkedout export`).

Everything that needs the trainer, the dataset or the extraction stack to build a bundle lives here;
`linkedout.serve` only reads bundles (``serve`` never imports ``train`` or ``extract``: data flows one
way, run -> export -> bundle -> server).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linkedout.models.sequential import SequentialRecommender
from linkedout.serve.bundle import BUNDLE_FORMAT, Bundle, BundleError


@torch.no_grad()
def bundle_from_model(
    model: SequentialRecommender,
    item_ids: list[str],
    *,
    max_len: int,
    model_config: dict[str, Any],
    protocol: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    titles: list[str | None] | None = None,
    blocked: np.ndarray | None = None,
    store_meta: dict[str, Any] | None = None,
    thumbnails: dict[int, bytes] | None = None,
) -> Bundle:
    """A bundle from a `SequentialRecommender` in memory (the export path; also used by tests)."""
    if not isinstance(model, SequentialRecommender):
        raise BundleError(
            f"{type(model).__name__} is not a sequential recommender (item + user encoder); "
            "pop / itemknn runs cannot be served from a bundle"
        )
    model.eval()
    encoder = model.item_encoder
    matrix = encoder.all_items().detach().float().clone()
    n = matrix.shape[0]
    if len(item_ids) != n:
        raise BundleError(f"{len(item_ids)} item ids for an item matrix of {n} rows")
    lw = model.layer_weights(torch.arange(n))
    # a content encoder is kept to encode new items (cold start); its ID table is not
    item_state = encoder.content_state_dict() if encoder.encodes_content else None
    blocked_t = torch.zeros(n, dtype=torch.bool)
    if blocked is not None and len(blocked):
        blocked_t[torch.as_tensor(blocked, dtype=torch.long)] = True
    store_meta = store_meta or {}
    meta = {
        "format_version": BUNDLE_FORMAT,
        "bundle_id": f"{int(time.time() * 1000):x}-{os.urandom(4).hex()}",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_items": n,
        "dim": int(matrix.shape[1]),
        "max_len": int(max_len),
        "model_config": dict(model_config),
        "protocol": protocol or {},
        "card": card or {},
        "fingerprint": store_meta.get("fingerprint", ""),
        "fingerprint_fields": store_meta.get("fingerprint_fields"),
        "extractor": store_meta.get("extractor"),
        "layer_names": list(encoder.layer_names or store_meta.get("layer_names") or []),
        "token_kinds": list(encoder.token_kinds or store_meta.get("token_kinds") or []),
        "feature_shape": list(encoder.feature_shape or ()),
    }
    return Bundle(
        meta=meta,
        item_ids=[str(x) for x in item_ids],
        titles=list(titles) if titles is not None else [None] * n,
        item_matrix=matrix,
        layer_weights=lw.float().clone() if lw is not None else None,
        blocked=blocked_t,
        user_state={k: v.detach().clone() for k, v in model.user_encoder.state_dict().items()},
        item_state=item_state,
        thumbnails=dict(thumbnails or {}),
    )


def export_bundle(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    catalog: str | None = None,
    overwrite: bool = False,
) -> Bundle:
    """`linkedout export`: a run directory (``linkedout train --run-dir``) -> a bundle directory.

    ``catalog`` (a folder, manifest or samples:<tier>) adds a thumbnail per item whose id it knows."""
    from linkedout.train.run import DatasetSpec, load_run

    model, data_split, saved = load_run(Path(run_dir))
    item_ids = [str(x) for x in data_split.data.item_ids.tolist()]
    titles: list[str | None] = [None] * len(item_ids)
    try:
        meta = DatasetSpec(**saved.dataset_spec).load().item_meta
        for i, raw in enumerate(data_split.data.item_ids.tolist()):
            row = meta.get(raw) or {}
            titles[i] = row.get("title") or None
    except (FileNotFoundError, ValueError, KeyError):
        pass  # titles are a nicety for the demo page; a bundle without them still serves
    store_meta = None
    features = saved.model_config.get("features")
    if features and saved.model_config.get("item_encoder", "id") != "id":
        from linkedout.store import FeatureStore

        store_meta = FeatureStore.open(features).meta.to_json()
    thumbs: dict[int, bytes] = {}
    if catalog is not None:
        from linkedout.extract import load_catalog
        from linkedout.video import VideoDecodeError, clip_thumbnail

        cat = load_catalog(catalog)
        for row, item_id in enumerate(item_ids):
            if item_id in cat and cat[item_id].local_path is not None:
                try:
                    thumbs[row] = clip_thumbnail(cat[item_id].local_path)
                except VideoDecodeError:
                    continue  # a clip that does not decode gets the title tile on the page
                if titles[row] is None:
                    titles[row] = cat[item_id].title
    card = {
        "run": str(run_dir),
        "dataset": saved.dataset,
        "model": saved.model,
        "item_encoder": saved.item_encoder,
        "seed": saved.seed,
        "metrics": saved.metrics,
        "valid_metrics": saved.valid_metrics,
        "best_epoch": saved.best_epoch,
        "protocol_line": data_split.protocol.describe(),
        "data": saved.data,
    }
    bundle = bundle_from_model(
        model,
        item_ids,
        max_len=data_split.protocol.max_seq_len,
        model_config=saved.model_config,
        protocol=asdict(data_split.protocol),
        card=card,
        titles=titles,
        blocked=data_split.excluded_items,
        store_meta=store_meta,
        thumbnails=thumbs,
    )
    bundle.save(out, overwrite=overwrite)
    return bundle
