"""The `Backbone` contract: a frozen model that turns items (frames + prompt + aux text) into
`LayerTokens` ``[L, S, D]`` float16 per item, plus an optional generated caption.

L = selected layers (in the order of ``layers``), S = summary tokens per layer, D = common width.
``token_kinds`` names the S axis so that item encoders can tell "old" prefill tokens (video, prompt)
from "new" generated ones without guessing: e.g. ``("video", "video", "video", "video", "prompt", "new")``.

A backbone never touches the feature store and the store never imports a backbone: the extraction
pipeline moves `ItemTokens` from one to the other, keyed by the backbone's `fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ItemInput:
    """One item to extract. ``frames`` is uint8 RGB ``[T, H, W, 3]`` (None for text-only backbones);
    ``audio`` is the clip's sound, mono float32 ``[N]`` at ``meta["sample_rate"]`` Hz (audio backbones)."""

    item_id: str
    frames: np.ndarray | None = None
    text: str | None = None  # auxiliary text: title, tags, ASR, ...
    meta: dict[str, Any] = field(default_factory=dict)
    audio: np.ndarray | None = None


@dataclass
class ItemTokens:
    item_id: str
    tokens: np.ndarray  # float16 [L, S, D]
    caption: str | None = None


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    """SHA-256 of a weights file, for fingerprints (cached: the same file is hashed once a process)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(fields: dict[str, Any]) -> str:
    """Stable short hash of everything that changes the extracted tokens."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@runtime_checkable
class Backbone(Protocol):
    name: str
    layers: tuple[int, ...]
    token_kinds: tuple[str, ...]
    dim: int
    # Optional, not a protocol member (a backbone of one's own need not have it): ``build_spec``,
    # set by `get_backbone` to {"name": ..., "options": ...}, how to build the same backbone again.

    def fingerprint_fields(self) -> dict[str, Any]:
        """Backbone id + revision, prompt, frame sampler, layers, pooling, dtype, new-token count."""
        ...

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        """Tokens for each input, same order. Raises only for programming errors; a bad item is the
        caller's to skip (the pipeline decodes and validates before calling)."""
        ...
