"""The serving `Bundle`: everything the online service needs, and nothing that trains.

Layout of a bundle directory (written to a temporary sibling, then renamed into place, so a reader
never sees half a bundle)::

    bundle.json               format version, model config, protocol, model card (metrics it was
                              trained to), extractor fingerprint + fields, backbone spec, layer names
    items.json                item ids (strings, row order of the matrix), titles, thumbnail flags
    items.safetensors         item_matrix float32 [N, D] (the item encoder's output, precomputed),
                              layer_weights float32 [N, L] (per-item explanation; content encoders),
                              blocked bool [N] (items the run excluded from ranking)
    user_encoder.safetensors  user encoder weights (SASRec / GRU4Rec / mean)
    item_encoder.safetensors  content item encoder weights without the ID table: encodes new items
                              from their LayerTokens (cold start); absent for id-only models
    thumbs/<row>.jpg          one frame per clip when the export was given a catalogue

`export_bundle` reads a run directory (it imports the trainer's `load_run`, lazily); `load_bundle` and
everything the server touches import models only, never linkedout.train ("nothing flows backwards").
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

BUNDLE_FORMAT = 1
BUNDLE_JSON = "bundle.json"
THUMB_SIZE = 128  # short side of thumbnails, pixels: enough for a catalogue grid


class BundleError(ValueError):
    """A bundle is missing, malformed, or cannot do what was asked (e.g. encode items id-only)."""


@dataclass
class Bundle:
    meta: dict[str, Any]
    item_ids: list[str]
    titles: list[str | None]
    item_matrix: torch.Tensor  # float32 [N, D]
    layer_weights: torch.Tensor | None  # float32 [N, L]
    blocked: torch.Tensor  # bool [N]
    user_state: dict[str, torch.Tensor]
    item_state: dict[str, torch.Tensor] | None
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # row -> JPEG
    path: Path | None = None

    @property
    def n_items(self) -> int:
        return int(self.item_matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_matrix.shape[1])

    @property
    def max_len(self) -> int:
        return int(self.meta["max_len"])

    @property
    def layer_names(self) -> list[str]:
        return list(self.meta.get("layer_names") or [])

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint") or "")

    @property
    def bundle_id(self) -> str:
        """Identifies this export: state (added items) saved for one bundle is not replayed onto another."""
        return str(self.meta["bundle_id"])

    @property
    def can_encode_items(self) -> bool:
        return self.item_state is not None

    # ------------------------------------------------------------------ modules
    def user_encoder(self) -> nn.Module:
        from linkedout.models.user_encoders import build_user_encoder

        cfg = self.meta["model_config"]
        module = build_user_encoder(
            cfg["name"],
            cfg["dim"],
            self.max_len,
            blocks=cfg.get("blocks", 2),
            heads=cfg.get("heads", 2),
            dropout=cfg.get("dropout", 0.2),
        )
        module.load_state_dict(self.user_state)
        return module.eval().requires_grad_(False)

    def item_encoder(self) -> nn.Module:
        """The content item encoder (no ID table: a new item has no trained ID, so it is scored from
        content alone - exactly what the trained model does for an item with no training events)."""
        if self.item_state is None:
            raise BundleError(
                f"this bundle's item encoder is {self.meta['model_config'].get('item_encoder')!r}: new "
                "items need a content item encoder (last, mean, dff, linkedout, caption)"
            )
        from linkedout.models import ModelConfig, build_item_encoder
        from linkedout.models.features import ItemFeatures

        cfg = dict(self.meta["model_config"])
        cfg["id_fusion"] = False
        n_layers, n_tokens, d_in = self.meta["feature_shape"]
        dummy = ItemFeatures(
            torch.zeros(1, n_layers, n_tokens, d_in, dtype=torch.float16),
            torch.ones(1, dtype=torch.bool),
            tuple(self.meta["token_kinds"]),
            tuple(self.layer_names),
        )
        known = {f.name for f in ModelConfig.__dataclass_fields__.values()}
        config = ModelConfig(**{k: v for k, v in cfg.items() if k in known})
        encoder = build_item_encoder(config, 1, dummy, None)
        encoder.fusion = None  # content path only (DFF builds the gate regardless); see the docstring
        encoder.load_state_dict(self.item_state)
        return encoder.eval().requires_grad_(False)

    # ------------------------------------------------------------------ disk
    def save(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {"item_matrix": self.item_matrix.float().contiguous(), "blocked": self.blocked.contiguous()}
        if self.layer_weights is not None:
            tensors["layer_weights"] = self.layer_weights.float().contiguous()
        save_file(tensors, str(tmp / "items.safetensors"))
        save_file(
            {k: v.contiguous() for k, v in self.user_state.items()}, str(tmp / "user_encoder.safetensors")
        )
        if self.item_state is not None:
            save_file(
                {k: v.contiguous() for k, v in self.item_state.items()}, str(tmp / "item_encoder.safetensors")
            )
        if self.thumbnails:
            (tmp / "thumbs").mkdir()
            for row, jpeg in self.thumbnails.items():
                (tmp / "thumbs" / f"{row}.jpg").write_bytes(jpeg)
        items = {"ids": self.item_ids, "titles": self.titles}
        (tmp / "items.json").write_text(json.dumps(items))
        (tmp / BUNDLE_JSON).write_text(json.dumps(self.meta, indent=1, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        self.path = out
        return out


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    p = Path(path)
    if not (p / BUNDLE_JSON).is_file():
        raise BundleError(f"no bundle at {p} (missing {BUNDLE_JSON}); write one with `linkedout export`")
    meta = json.loads((p / BUNDLE_JSON).read_text())
    if meta.get("format_version") != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle format {meta.get('format_version')} at {p}; this server reads {BUNDLE_FORMAT}"
        )
    items = json.loads((p / "items.json").read_text())
    tensors = load_file(str(p / "items.safetensors"))
    item_path = p / "item_encoder.safetensors"
    thumbs: dict[int, bytes] = {}
    if (p / "thumbs").is_dir():
        for f in (p / "thumbs").glob("*.jpg"):
            thumbs[int(f.stem)] = f.read_bytes()
    return Bundle(
        meta=meta,
        item_ids=[str(x) for x in items["ids"]],
        titles=list(items["titles"]),
        item_matrix=tensors["item_matrix"],
        layer_weights=tensors.get("layer_weights"),
        blocked=tensors["blocked"].bool(),
        user_state=load_file(str(p / "user_encoder.safetensors")),
        item_state=load_file(str(item_path)) if item_path.exists() else None,
        thumbnails=thumbs,
        path=p,
    )


# ---------------------------------------------------------------------- building
def backbone_spec(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    """How the server can rebuild the extractor from a store's fingerprint fields, or None when it
    cannot (then new items must arrive as LayerTokens). The server checks that the rebuilt backbone
    has the same fingerprint before using it, so a wrong guess here fails loudly, never silently."""
    if not fields or fields.get("backbone") != "frames":
        return None
    pool = fields.get("temporal_pool") or {}
    seed = re.search(r"seed=(\d+)", str(fields.get("narrow") or ""))
    sampler = dict(fields.get("sampler") or {})
    return {
        "name": "frames",
        "options": {
            "layers": list(fields["layers"]),
            "time_groups": int(pool.get("contiguous_group_means", 4)),
            "temporal_max": bool(pool.get("max_over_all", True)),
            "dim": int(fields["dim"]),
            "projection_seed": int(seed.group(1)) if seed else 0,
            "sampler": sampler,
        },
        "sampler": {
            "num_frames": int(sampler.get("num_frames", 8)),
            "size": sampler.get("size"),
            "mode": sampler.get("mode", "uniform"),
        },
    }


def thumbnail_jpeg(video_path: str | os.PathLike[str], size: int = THUMB_SIZE) -> bytes:
    """One frame from the middle of a clip as a small JPEG (raises VideoDecodeError)."""
    from PIL import Image

    from linkedout.video import sample_frames

    clip = sample_frames(video_path, 1, size=size, mode="keyframe")
    buf = io.BytesIO()
    Image.fromarray(clip.frames[0]).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@torch.no_grad()
def bundle_from_model(
    model: nn.Module,
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
    from linkedout.explain import layer_weights

    if not hasattr(model, "user_encoder") or not hasattr(model, "item_encoder"):
        raise BundleError(
            f"{type(model).__name__} is not a sequential recommender (item + user encoder); "
            "pop / itemknn runs cannot be served from a bundle"
        )
    model.eval()
    matrix = model.item_encoder.all_items().detach().float().clone()
    n = matrix.shape[0]
    if len(item_ids) != n:
        raise BundleError(f"{len(item_ids)} item ids for an item matrix of {n} rows")
    lw = layer_weights(model, torch.arange(n))
    item_state = None
    encoder = model.item_encoder
    if hasattr(encoder, "content"):  # a content encoder: keep it to encode new items
        item_state = {
            k: v.detach().clone() for k, v in encoder.state_dict().items() if not k.startswith("fusion.")
        }
    blocked_t = torch.zeros(n, dtype=torch.bool)
    if blocked is not None and len(blocked):
        blocked_t[torch.as_tensor(blocked, dtype=torch.long)] = True
    store_meta = store_meta or {}
    fields = store_meta.get("fingerprint_fields")
    feature_shape = list(store_meta.get("shape") or [])
    if item_state is not None and not feature_shape:
        prepared = getattr(encoder, "prepared", None)  # [N, L, S, D], the shape of raw tokens
        feature_shape = list(prepared.shape[1:]) if prepared is not None else []
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
        "fingerprint_fields": fields,
        "backbone": backbone_spec(fields),
        "layer_names": list(getattr(encoder, "layer_names", ()) or store_meta.get("layer_names") or []),
        "token_kinds": list(getattr(encoder, "token_kinds", ()) or store_meta.get("token_kinds") or []),
        "feature_shape": feature_shape,
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
    from linkedout.train.run import DatasetSpec, load_run  # offline step: the server never runs this

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
        from linkedout.video import VideoDecodeError

        cat = load_catalog(catalog)
        for row, item_id in enumerate(item_ids):
            if item_id in cat and cat[item_id].local_path is not None:
                try:
                    thumbs[row] = thumbnail_jpeg(cat[item_id].local_path)
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
