"""Offline export: a trained run -> the serving `Bundle` (`linkedout export`).

Everything that needs the trainer, the dataset or the extraction stack to build a bundle lives here;
`linkedout.serve` only reads bundles (``serve`` never imports ``train`` or ``extract``: data flows one
way, run -> export -> bundle -> server).

What is trained is deployed whole:

- every item the content item encoder can encode from the feature store, not only the items of the
  run's id map: store items the dataset does not have (or that the protocol filtered out) are encoded
  from their LayerTokens alone - exactly what the model does for an item with no training events (no
  ID to fuse) - and appended after the dataset's rows, flagged ``cold`` like every other item without
  training events. Items the run excluded from ranking stay blocked.
- the training log's users and what they watched (`linkedout.serve.histories`), so a known user is
  served by id.
- pairwise families (bpr, lightgcn: a vector per user): the final item vectors (LightGCN: propagated)
  and the trained users' vectors, aligned with those histories; the item bias rides along as an extra
  column (`ServingVectors`), so the index's plain inner product is the model's score. A request naming
  a known user is scored with its vector, an anonymous history with the fold-in (mean of its items).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linkedout.models.bpr import BPRMF
from linkedout.models.sequential import SequentialRecommender
from linkedout.serve.bundle import BUNDLE_FORMAT, Bundle, BundleError
from linkedout.serve.histories import Histories


@dataclass
class StoreItems:
    """Items encoded from the feature store alone (rows appended after the dataset's)."""

    ids: list[str]
    vectors: torch.Tensor  # float32 [M, D]
    layer_weights: torch.Tensor | None  # float32 [M, L]
    unencodable: list[str]  # store items whose tokens gave a non-finite vector: left out


@torch.no_grad()
def encode_store_items(
    model: SequentialRecommender | BPRMF, store_path: str, skip: set[str], chunk: int = 4096
) -> StoreItems:
    """Every item of the feature store at ``store_path`` whose id is not in ``skip``, encoded by the
    model's content path, in chunks (the store may hold far more items than fit in memory as tokens)."""
    from linkedout.store import FeatureStore

    encoder = model.item_encoder
    if not encoder.encodes_content:
        raise BundleError(f"{type(encoder).__name__} cannot encode items from the feature store")
    store = FeatureStore.open(store_path)
    if tuple(store.shape) != tuple(encoder.feature_shape or ()):
        raise BundleError(
            f"feature store {store_path} holds tokens of shape {store.shape}, the run's item encoder "
            f"reads {encoder.feature_shape}: export with the store the run was trained on"
        )
    ids = [i for i in store.ids() if i not in skip]
    kept: list[str] = []
    vectors: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    bad: list[str] = []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        tokens = torch.from_numpy(store.read(part)).float()
        v = encoder.content_vectors(tokens)
        lw = encoder.content_layer_weights(tokens)
        ok = torch.isfinite(v).all(dim=1)
        kept += [i for i, good in zip(part, ok.tolist(), strict=True) if good]
        bad += [i for i, good in zip(part, ok.tolist(), strict=True) if not good]
        vectors.append(v[ok].float())
        if lw is not None:
            weights.append(lw[ok].float())
    dim = int(model.item_encoder.dim)
    return StoreItems(
        ids=kept,
        vectors=torch.cat(vectors) if vectors else torch.zeros(0, dim),
        layer_weights=torch.cat(weights) if weights else None,
        unencodable=bad,
    )


@torch.no_grad()
def bundle_from_model(
    model: SequentialRecommender | BPRMF,
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
    cold: np.ndarray | None = None,
    store_items: StoreItems | None = None,
    histories: Histories | None = None,
    captions: list[str | None] | None = None,
) -> Bundle:
    """A bundle from a `SequentialRecommender` or a pairwise `BPRMF` / `LightGCN` in memory (the export
    path; also used by tests). A pairwise model needs ``histories``: one per user row of the model.

    ``cold``: bool per model item, True for items without training events; ``store_items`` are appended
    after the model's items (all cold); ``histories`` name rows of the model's items; ``captions``: one
    per row of the finished bundle (model items, then store items), like ``titles``."""
    if not isinstance(model, SequentialRecommender | BPRMF):
        raise BundleError(
            f"{type(model).__name__} is neither a sequential recommender (item + user encoder) nor a "
            "pairwise one (user + item vectors); pop / itemknn runs cannot be served from a bundle"
        )
    model.eval()
    encoder = model.item_encoder
    pairwise: dict[str, Any] = {}
    if isinstance(model, BPRMF):
        served = model.serving_vectors()
        if histories is None or histories.n_users != len(served.users):
            raise BundleError(
                f"a {type(model).__name__} bundle needs the histories of its {len(served.users)} users "
                "(their rows are the user vectors' rows)"
            )
        matrix = served.items
        user_state = {"user_vectors": served.users, "trained_users": served.trained_users}
        pairwise = {
            "bias_column": served.bias_column,
            "cold_bias": served.cold_bias,
            "new_item_scale": served.new_item_scale,
        }
    else:
        matrix = encoder.all_items().detach().float().clone()
        user_state = {k: v.detach().clone() for k, v in model.user_encoder.state_dict().items()}
    n = matrix.shape[0]
    if len(item_ids) != n:
        raise BundleError(f"{len(item_ids)} item ids for an item matrix of {n} rows")
    lw = model.layer_weights(torch.arange(n))
    # a content encoder is kept to encode new items (cold start); its ID table is not
    item_state = encoder.content_state_dict() if encoder.encodes_content else None
    blocked_t = torch.zeros(n, dtype=torch.bool)
    if blocked is not None and len(blocked):
        blocked_t[torch.as_tensor(blocked, dtype=torch.long)] = True
    cold_t = torch.zeros(n, dtype=torch.bool) if cold is None else torch.as_tensor(cold, dtype=torch.bool)
    if cold_t.shape != (n,):
        raise BundleError(f"cold mask of {tuple(cold_t.shape)} for {n} items")
    titles = list(titles) if titles is not None else [None] * n
    item_ids = [str(x) for x in item_ids]
    if store_items is not None and store_items.ids:
        m = len(store_items.ids)
        if len(titles) == n:
            titles += [None] * m
        if len(titles) != n + m:
            raise BundleError(f"{len(titles)} titles for {n} + {m} items")
        clash = set(item_ids) & set(store_items.ids)
        if clash:
            raise BundleError(f"store items repeat dataset ids, e.g. {sorted(clash)[:5]}")
        item_ids += store_items.ids
        store_vectors = store_items.vectors.float() * pairwise.get("new_item_scale", 1.0)
        if pairwise.get("bias_column"):  # a store item has no training events: an untrained item's bias
            column = torch.full((m, 1), pairwise["cold_bias"])
            store_vectors = torch.cat([store_vectors, column], dim=1)
        matrix = torch.cat([matrix, store_vectors])
        if lw is not None:
            if store_items.layer_weights is None:
                raise BundleError("store items have no layer weights, the dataset's items do")
            lw = torch.cat([lw.float(), store_items.layer_weights.float()])
        blocked_t = torch.cat([blocked_t, torch.zeros(m, dtype=torch.bool)])
        cold_t = torch.cat([cold_t, torch.ones(m, dtype=torch.bool)])
        n += m
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
        "cold_items": int(cold_t.sum()),
        "store_items": len(store_items.ids) if store_items is not None else 0,
        "known_users": histories.n_users if histories is not None else 0,
    }
    if pairwise:
        meta["pairwise"] = pairwise
    return Bundle(
        meta=meta,
        item_ids=item_ids,
        titles=titles,
        item_matrix=matrix,
        layer_weights=lw.float().clone() if lw is not None else None,
        blocked=blocked_t,
        user_state=user_state,
        item_state=item_state,
        thumbnails=dict(thumbnails or {}),
        cold=cold_t,
        histories=histories,
        captions=list(captions) if captions is not None else None,
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
    if saved.model == "tiger":
        raise BundleError(
            f"{run_dir} is a tiger run: generative retrieval (beam search over semantic IDs) has no "
            "bundle format or serving endpoint yet; re-score it with `linkedout evaluate --run`"
        )
    item_ids = [str(x) for x in data_split.data.item_ids.tolist()]
    store_meta = None
    store_items = None
    features = saved.model_config.get("features")
    if features and saved.model_config.get("item_encoder", "id") != "id":
        from linkedout.store import FeatureStore

        store_meta = FeatureStore.open(features).meta.to_json()
        if isinstance(model, SequentialRecommender | BPRMF):
            store_items = encode_store_items(model, features, set(item_ids))
    all_ids = item_ids + (store_items.ids if store_items is not None else [])
    captions = None
    if store_meta is not None:
        from linkedout.explain import store_captions

        found = store_captions(features, all_ids)  # the Video-LLM's text, shown on the page
        captions = [found.get(i) for i in all_ids] if found else None
    titles: list[str | None] = [None] * len(all_ids)
    try:
        meta = {str(k): v for k, v in DatasetSpec(**saved.dataset_spec).load().item_meta.items()}
        for i, raw in enumerate(all_ids):
            row = meta.get(raw) or {}
            titles[i] = row.get("title") or None
    except (FileNotFoundError, ValueError, KeyError):
        pass  # titles are a nicety for the demo page; a bundle without them still serves
    thumbs: dict[int, bytes] = {}
    if catalog is not None:
        from linkedout.extract import load_catalog
        from linkedout.video import VideoDecodeError, clip_thumbnail

        cat = load_catalog(catalog)
        for row, item_id in enumerate(all_ids):
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
        cold=data_split.train_item_counts() == 0,
        store_items=store_items,
        histories=training_histories(data_split),
        captions=captions,
    )
    events = saved.dataset_spec.get("events")
    if events is not None:
        # its histories already hold the store's events up to ``upto``: a server logging to the same
        # store adds only later ones (serve/histories.py `trained_upto`), not the same views twice
        from linkedout.events.base import store_identity

        upto = saved.dataset_spec.get("events_upto")
        bundle.meta["trained_on_events"] = {"store": store_identity(events), "upto": upto}
    if store_items is not None and store_items.unencodable:
        bundle.meta["unencodable_store_items"] = store_items.unencodable[:100]
    bundle.save(out, overwrite=overwrite)
    return bundle


def training_histories(data_split) -> Histories:
    """Every user of the run's processed log (protocol filters and keep-last applied) with their whole
    sequence: the test split's history followed by its test target, as bundle rows (the split's item
    indices are the bundle's first rows)."""
    data = data_split.data
    starts, ends = data.offsets[:-1], data.offsets[1:]
    sequences = [data.items[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    return Histories.from_sequences(data.user_ids.tolist(), sequences)
