"""The serving `Bundle`: everything the online service needs, and nothing that trains.

Layout of a bundle directory (written to a temporary sibling, then renamed into place, so a reader
never sees half a bundle)::

    bundle.json               format version, model config, protocol, model card (metrics it was
                              trained to), extractor fingerprint + fields, backbone spec, layer names
    items.json                item ids (strings, row order of the matrix), titles, captions (the
                              feature store's generated text, when it has any; absent in older
                              bundles and in bundles of stores without captions)
    items.safetensors         item_matrix float32 [N, D] (the item encoder's output, precomputed),
                              layer_weights float32 [N, L] (per-item explanation; content encoders),
                              blocked bool [N] (items the run excluded from ranking),
                              cold bool [N] (no training events: scored from content alone);
                              the float tensors are memory-mapped when read (`map_safetensors`),
                              so worker processes of one server share one copy in the page cache
    user_encoder.safetensors  user encoder weights (SASRec / GRU4Rec / mean); pairwise families (bpr,
                              lightgcn): user_vectors float32 [U, D] of the training users (rows =
                              the histories' rows) + trained_users bool [U] (the others are folded
                              in); bundle.json's ``pairwise`` says whether D ends in a bias column
    item_encoder.safetensors  content item encoder weights without the ID table: encodes new items
                              from their LayerTokens (cold start); absent for id-only models
    histories.safetensors     the training log's users: offsets int64 [U + 1] + items int32 (rows)
    users.json                raw user ids of those histories (serve/histories.py); absent in
                              bundles exported before them (users are then known by events only)
    thumbs/<row>.jpg          one frame per clip when the export was given a catalogue

The optional parts (``cold``, histories, captions) were added without a format change: a reader of
format 1 that predates them ignores them, and this reader treats their absence as "none cold, no
histories, no captions".

Bundles are written by `linkedout.export` (offline, from a trained run); this module is the format
and its reader, and imports models only, never linkedout.train or linkedout.extract ("nothing flows
backwards").
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from linkedout.backbones.extractor import ExtractorSpec
from linkedout.models import ItemEncoder, ModelConfig, build_content_encoder
from linkedout.models.user_encoders import build_user_encoder
from linkedout.serve.histories import Histories, HistoryError

BUNDLE_FORMAT = 1
BUNDLE_JSON = "bundle.json"


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
    cold: torch.Tensor | None = None  # bool [N]: no training events (None -> all False)
    histories: Histories | None = None  # the training log's users, when the export carried them
    captions: list[str | None] | None = None  # per row: the store's generated text (None: no captions)
    model_config: ModelConfig = field(init=False)

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
    def __post_init__(self) -> None:
        try:  # checked once, when the bundle is read: a server must not fail later, at first use
            self.model_config = ModelConfig.from_dict(self.meta["model_config"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(
                f"bundle{f' at {self.path}' if self.path else ''}: bad model config: {e}"
            ) from None
        if self.cold is None:
            self.cold = torch.zeros(self.n_items, dtype=torch.bool)
        where = f" at {self.path}" if self.path else ""
        if self.cold.shape != (self.n_items,) or self.blocked.shape != (self.n_items,):
            raise BundleError(f"bundle{where}: cold/blocked masks do not have one entry per item")
        if len(self.item_ids) != self.n_items or len(self.titles) != self.n_items:
            raise BundleError(f"bundle{where}: {len(self.item_ids)} ids for {self.n_items} item rows")
        if self.captions is not None and len(self.captions) != self.n_items:
            raise BundleError(f"bundle{where}: {len(self.captions)} captions for {self.n_items} item rows")
        if self.histories is not None:
            try:
                self.histories.check_rows(self.n_items)
            except HistoryError as e:
                raise BundleError(f"bundle{where}: {e}") from None
        if self.pairwise is not None:
            vectors, trained = self.user_state.get("user_vectors"), self.user_state.get("trained_users")
            users = self.histories.n_users if self.histories is not None else -1
            if (
                vectors is None
                or trained is None
                or vectors.shape != (users, self.dim)
                or len(trained) != users
            ):
                raise BundleError(
                    f"bundle{where}: a pairwise bundle needs user_vectors [users, {self.dim}] and "
                    f"trained_users [users] for the {max(users, 0)} users of its histories"
                )

    @property
    def extractor_spec(self) -> ExtractorSpec | None:
        """How to rebuild the extractor of the bundle's features (recorded in the feature store at
        extraction time), or None: then new items must arrive as LayerTokens."""
        spec = self.meta.get("extractor")
        return ExtractorSpec.from_json(spec) if spec else None

    @property
    def pairwise(self) -> dict[str, Any] | None:
        """``{"bias_column", "cold_bias", "new_item_scale"}`` for a family with a vector per user (bpr,
        lightgcn), else None."""
        return self.meta.get("pairwise")

    def user_table(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(vectors ``[U, D]``, trained ``[U]``) of the known users of a pairwise bundle, rows aligned with
        the histories' users; None for other families (a user is its history there)."""
        if self.pairwise is None:
            return None
        return self.user_state["user_vectors"].float(), self.user_state["trained_users"].bool()

    def user_encoder(self) -> nn.Module:
        if self.pairwise is not None:  # a history's vector is its fold-in (models/bpr.py)
            from linkedout.models.bpr import FoldInUsers

            return FoldInUsers(bool(self.pairwise["bias_column"])).eval()
        module = build_user_encoder(self.model_config, self.max_len)
        module.load_state_dict(self.user_state)
        return module.eval().requires_grad_(False)

    def item_encoder(self) -> ItemEncoder:
        """The content item encoder (no ID table: a new item has no trained ID, so it is scored from
        content alone - exactly what the trained model does for an item with no training events)."""
        if self.item_state is None:
            raise BundleError(
                f"this bundle's item encoder is {self.model_config.item_encoder!r}: new "
                "items need a content item encoder (last, mean, dff, linkedout, caption)"
            )
        shape = tuple(self.meta["feature_shape"])
        encoder = build_content_encoder(
            self.model_config, shape, tuple(self.meta["token_kinds"]), self.layer_names
        )
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
        tensors = {
            "item_matrix": self.item_matrix.float().contiguous(),
            "blocked": self.blocked.contiguous(),
            "cold": self.cold.contiguous(),
        }
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
        if self.histories is not None:
            self.histories.save(tmp)
        if self.thumbnails:
            (tmp / "thumbs").mkdir()
            for row, jpeg in self.thumbnails.items():
                (tmp / "thumbs" / f"{row}.jpg").write_bytes(jpeg)
        items: dict[str, Any] = {"ids": self.item_ids, "titles": self.titles}
        if self.captions is not None and any(self.captions):
            items["captions"] = self.captions
        (tmp / "items.json").write_text(json.dumps(items))
        (tmp / BUNDLE_JSON).write_text(json.dumps(self.meta, indent=1, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        self.path = out
        return out


def map_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, float32 ones memory-mapped copy-on-write (``MAP_PRIVATE``).

    Why not `safetensors.torch.load_file`: it maps the file but writes every page once while loading
    (measured: a 51 MB matrix is 51 MB of *private dirty* memory per process), so N worker processes
    would hold N copies. Mapped here, the pages stay clean and file-backed: every process that maps
    the file shares the OS page cache's one copy, and a page becomes private only if someone writes
    to it (nothing in serving does). The file format is unchanged, so every older bundle maps too.
    Other dtypes (the small ``blocked`` mask) are read normally."""
    path = str(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    start = 8 + header_len
    mapped: dict[str, torch.Tensor] = {}
    rest = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "F32" and end > begin and (start + begin) % 4 == 0:
            array = np.memmap(path, dtype=np.float32, mode="c", offset=start + begin, shape=shape)
            mapped[name] = torch.from_numpy(array)  # mode "c" is writable: no read-only warning
        else:
            rest.append(name)
    if rest:
        loaded = load_file(path)
        mapped.update({name: loaded[name] for name in rest})
    return mapped


def _check_shapes(p: Path, items: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a bundle whose files disagree (a server must fail at load, e.g. when reloading, not at
    the first request that touches a row beyond the id list)."""
    if "item_matrix" not in tensors or "blocked" not in tensors:
        raise BundleError(f"bundle at {p}: items.safetensors lacks item_matrix or blocked")
    matrix = tensors["item_matrix"]
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise BundleError(f"bundle at {p}: item_matrix must be [N >= 1, D], got {list(matrix.shape)}")
    n = int(matrix.shape[0])
    ids, titles = items.get("ids"), items.get("titles")
    if not isinstance(ids, list) or not isinstance(titles, list):
        raise BundleError(f"bundle at {p}: items.json needs the lists `ids` and `titles`")
    lw = tensors.get("layer_weights")
    sizes = {
        "ids": len(ids),
        "titles": len(titles),
        "blocked": int(tensors["blocked"].shape[0]),
        "layer_weights": n if lw is None else int(lw.shape[0]),
        "captions": len(items["captions"]) if isinstance(items.get("captions"), list) else n,
        "cold": n if "cold" not in tensors else int(tensors["cold"].shape[0]),
    }
    wrong = {k: v for k, v in sizes.items() if v != n}
    if wrong:
        raise BundleError(f"bundle at {p}: item_matrix has {n} rows but {wrong}")


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle directory; a malformed one (missing file, bad JSON, shapes that disagree) is a
    `BundleError`. The item matrix and layer weights are memory-mapped (`map_safetensors`)."""
    p = Path(path)
    if not (p / BUNDLE_JSON).is_file():
        raise BundleError(f"no bundle at {p} (missing {BUNDLE_JSON}); write one with `linkedout export`")
    reading = BUNDLE_JSON  # named in the error: "which file is broken" is the first question
    try:
        meta = json.loads((p / BUNDLE_JSON).read_text())
        if not isinstance(meta, dict):
            raise BundleError(f"{p / BUNDLE_JSON} is not a JSON object")
        if meta.get("format_version") != BUNDLE_FORMAT:
            raise BundleError(
                f"bundle format {meta.get('format_version')} at {p}; this server reads {BUNDLE_FORMAT}"
            )
        reading = "items.json"
        items = json.loads((p / "items.json").read_text())
        if not isinstance(items, dict):
            raise BundleError(f"{p / 'items.json'} is not a JSON object")
        reading = "items.safetensors"
        tensors = map_safetensors(p / "items.safetensors")
        _check_shapes(p, items, tensors)
        reading = "user_encoder.safetensors"
        user_state = load_file(str(p / "user_encoder.safetensors"))
        item_path = p / "item_encoder.safetensors"
        reading = item_path.name
        item_state = load_file(str(item_path)) if item_path.exists() else None
        reading = "histories"
        histories = Histories.load(p)
    except BundleError:
        raise
    except Exception as e:  # OSError, JSONDecodeError, struct.error, safetensors' own SafetensorError
        raise BundleError(f"bundle at {p}: cannot read {reading}: {type(e).__name__}: {e}") from None
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
        user_state=user_state,
        item_state=item_state,
        thumbnails=thumbs,
        path=p,
        cold=tensors["cold"].bool() if "cold" in tensors else None,
        histories=histories,
        captions=list(items["captions"]) if isinstance(items.get("captions"), list) else None,
    )
