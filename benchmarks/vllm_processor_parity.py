"""Hand-built Video-LLM pixel inputs vs transformers' own *video* processors (which need torchvision).

linkedout builds video pixel inputs without torchvision (`linkedout.backbones.vllm`); the unit tests
compare them with the PIL *image* processors. This script compares them with the real video processors
at the real checkpoints' default sizes, and so needs a Python environment that has torchvision, e.g.::

    python3.11 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        transformers==5.24.0 pillow numpy
    PYTHONPATH=src /tmp/tv/bin/python benchmarks/vllm_processor_parity.py

It prints, per family, the shapes and the largest difference in grey levels (after undoing the
normalisation), for a few frame sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from linkedout.backbones.vllm.common import (
    BICUBIC,
    LANCZOS,
    frames_to_tensor,
    normalize_frames,
    resize_frames,
)
from linkedout.backbones.vllm.idefics3 import smolvlm_video_size
from linkedout.backbones.vllm.qwen2_vl import (
    CLIP_MEAN,
    CLIP_STD,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    patchify,
)

SIZES = [(360, 640), (480, 480), (720, 1280), (240, 180)]


def grey_levels(diff: torch.Tensor, std: float) -> float:
    return float(diff.abs().max()) * 255 * std


def llava_onevision(frames: np.ndarray) -> tuple[tuple, float]:
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor,
    )

    # llava-hf's OneVision checkpoints configure SigLIP's 0.5 mean/std and 384 x 384
    proc = LlavaOnevisionVideoProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ref = proc(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
    mine = normalize_frames(
        resize_frames(frames_to_tensor(frames), (384, 384), BICUBIC), [0.5] * 3, [0.5] * 3
    )
    return tuple(ref.shape), grey_levels(mine - ref, 0.5)


def qwen2_vl(frames: np.ndarray) -> tuple[tuple, float]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    ref = Qwen2VLVideoProcessor()(videos=[frames], return_tensors="pt", cap_pixels_per_frame=False)
    x = frames_to_tensor(frames)
    h, w = smart_resize(x.shape[-2], x.shape[-1], 28, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    x = normalize_frames(resize_frames(x, (h, w), BICUBIC), CLIP_MEAN, CLIP_STD)
    flat, grid = patchify(x, 14, 2, 2)
    assert list(grid) == ref["video_grid_thw"][0].tolist(), (grid, ref["video_grid_thw"])
    return tuple(ref["pixel_values_videos"].shape), grey_levels(flat - ref["pixel_values_videos"], 0.27)


def smolvlm(frames: np.ndarray) -> tuple[tuple, float]:
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    proc = SmolVLMVideoProcessor()  # longest edge 4 * 364, then 364 x 364, Lanczos
    ref = proc(videos=[frames], return_tensors="pt")["pixel_values"][0]
    x = frames_to_tensor(frames)
    first = smolvlm_video_size(x.shape[-2], x.shape[-1], 4 * 364)
    x = resize_frames(resize_frames(x, first, LANCZOS), (364, 364), LANCZOS)
    mine = normalize_frames(x, [0.5] * 3, [0.5] * 3)
    return tuple(ref.shape), grey_levels(mine - ref, 0.5)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| family | frames (T, H, W) | processor output | max diff (grey levels) |")
    print("|---|---|---|---|")
    for h, w in SIZES:
        # smooth-ish content (noise upsampled) rather than pure noise, closer to real frames
        small = rng.integers(0, 256, size=(8, h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        frames = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)[:, :h, :w].copy()
        frames = np.clip(frames.astype(np.int16) + rng.integers(-20, 21, frames.shape), 0, 255).astype(
            np.uint8
        )
        for name, fn in (("llava_onevision", llava_onevision), ("qwen2_vl", qwen2_vl), ("smolvlm", smolvlm)):
            shape, diff = fn(frames)
            print(f"| {name} | {frames.shape[:3]} | {shape} | {diff:.2f} |")


if __name__ == "__main__":
    main()
