"""Qwen2-VL and Qwen2.5-VL (``Qwen/Qwen2-VL-{2B,7B}-Instruct``, ``Qwen/Qwen2.5-VL-{3B,7B}-Instruct``).

Video path (transformers ``Qwen2VLVideoProcessor`` + model): frames keep their aspect ratio, resized so
both sides are multiples of ``patch_size * merge_size`` (28) with the pixel count inside
``[min_pixels, max_pixels]`` (``smart_resize``); the frame count is padded to a multiple of
``temporal_patch_size`` (2) by repeating the last frame; each 2 x 14 x 14 tube becomes a patch, and 2 x 2
neighbouring patches are merged into one LLM token. So ``T`` frames of ``h x w`` give
``ceil(T / 2) * (h / 28) * (w / 28)`` tokens, laid out time-major::

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|video_pad|> x N<|vision_end|>
    {aux}{query}<|im_end|>\\n<|im_start|>assistant\\n

Time unit of a token = its temporal patch (2 frames). Positions are 3-D (M-RoPE), computed by the model
from ``mm_token_type_ids`` (2 = video) and ``video_grid_thw``; Qwen2.5-VL also spaces temporal positions
by ``second_per_grid_ts = temporal_patch_size / fps``, so pass the sampler's ``timestamps`` or
``duration`` in ``ItemInput.meta`` (else transformers' default of 24 fps is assumed).

Frame size: the checkpoint's video processor settings (``max_pixels`` per frame, default 768 * 28 * 28);
``max_pixels=`` overrides it (``qwen-vl-utils`` suggests ``360 * 420`` for video).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from linkedout.backbones.base import ItemInput
from linkedout.backbones.vllm.common import (
    BICUBIC,
    VIDEO_CONTENT,
    FamilyAdapter,
    Media,
    PreparedBatch,
    build_segments,
    encode_segments,
    find_chat_template,
    frames_to_tensor,
    left_pad,
    normalize_frames,
    pad_token_id,
    read_preprocessor_config,
    render_chat,
    resize_frames,
    sampled_fps,
    short_sha,
)

# Used only when a checkpoint ships no template; modelled on the one Qwen publishes.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_MIN_PIXELS = 128 * 28 * 28  # Qwen2VLVideoProcessor defaults
VIDEO_MAX_PIXELS = 768 * 28 * 28


def patchify(
    x: torch.Tensor, patch: int, merge: int, temporal: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Float ``[T, C, H, W]`` -> ``[grid_t * grid_h * grid_w, C * temporal * patch^2]`` in the order the
    vision tower expects (as ``Qwen2VLVideoProcessor.patchify``), and ``(grid_t, grid_h, grid_w)``."""
    if pad := -x.shape[0] % temporal:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = x.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-block, w-block, h-in, w-in, C, temporal, p, p
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), (gt, gh, gw)


class Qwen2VLAdapter(FamilyAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def __init__(
        self,
        model_id: str,
        config: Any,
        tokenizer: Any,
        revision: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(model_id, config, tokenizer, revision)
        pre, self.pixel_source = read_preprocessor_config(model_id, revision)
        vision = config.vision_config
        self.patch = int(vision.patch_size)
        self.merge = int(vision.spatial_merge_size)
        self.temporal = int(vision.temporal_patch_size)
        size = pre.get("size") or {}
        self.min_pixels = int(
            min_pixels or pre.get("min_pixels") or size.get("shortest_edge") or VIDEO_MIN_PIXELS
        )
        self.max_pixels = int(
            max_pixels or pre.get("max_pixels") or size.get("longest_edge") or VIDEO_MAX_PIXELS
        )
        self.resample = int(pre.get("resample", BICUBIC))
        self.mean = tuple(pre.get("image_mean", CLIP_MEAN))
        self.std = tuple(pre.get("image_std", CLIP_STD))
        self.rescale = float(pre.get("rescale_factor", 1 / 255))
        self.is_2_5 = config.model_type == "qwen2_5_vl"
        self.video_token_id = int(config.video_token_id)
        self.video_token = tokenizer.convert_ids_to_tokens(self.video_token_id)
        self.chat_template = find_chat_template(
            model_id, revision, tokenizer, FALLBACK_CHAT_TEMPLATE, VIDEO_CONTENT, self.video_token
        )
        self.pad_id = pad_token_id(tokenizer, config)

    @staticmethod
    def model_class(config: Any) -> type[nn.Module]:
        if config.model_type == "qwen2_5_vl":
            from transformers import Qwen2_5_VLForConditionalGeneration

            return Qwen2_5_VLForConditionalGeneration
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    def text_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    @property
    def media_token_ids(self) -> tuple[int, ...]:
        return (int(self.config.image_token_id), self.video_token_id)

    def pixels(self, frames: Any) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """uint8 ``[T, H, W, 3]`` -> flattened patches and the ``(t, h, w)`` grid, as the video processor."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        x = frames_to_tensor(frames)
        h, w = smart_resize(
            x.shape[-2],
            x.shape[-1],
            factor=self.patch * self.merge,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )
        x = normalize_frames(resize_frames(x, (h, w), self.resample), self.mean, self.std, self.rescale)
        return patchify(x, self.patch, self.merge, self.temporal)

    def prepare(self, items: Sequence[ItemInput], texts: Sequence[str]) -> PreparedBatch:
        rendered = render_chat(self.tokenizer, self.chat_template, VIDEO_CONTENT)
        rows, patches, grids = [], [], []
        for item, text in zip(items, texts, strict=True):
            flat, (gt, gh, gw) = self.pixels(item.frames)
            patches.append(flat)
            grids.append([gt, gh, gw])
            per_t = gh * gw // self.merge**2
            media = [Media(t, per_t) for t in range(gt)]
            segments = build_segments(rendered, text, {self.video_token: lambda _k, m=media: m})
            rows.append(encode_segments(self.tokenizer, segments, self.video_token_id))
        input_ids, attention_mask, unit_ids = left_pad(rows, self.pad_id)
        extra: dict[str, Any] = {
            "pixel_values_videos": torch.cat(patches),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "mm_token_type_ids": (input_ids == self.video_token_id).long() * 2,  # 0 text, 1 image, 2 video
        }
        if self.is_2_5:
            extra["second_per_grid_ts"] = torch.tensor([self.temporal / sampled_fps(i) for i in items])
        return PreparedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            unit_ids=unit_ids,
            num_units=[g[0] for g in grids],
            extra=extra,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "resample": self.resample,
            "mean": list(self.mean),
            "std": list(self.std),
            "rescale": self.rescale,
            "processor_config": self.pixel_source,
            "patch": [self.temporal, self.patch, self.merge],
            "chat_template_sha": short_sha(self.chat_template),
        }
