"""LLaVA-OneVision (``llava-hf/llava-onevision-qwen2-{0.5b,7b,72b}-ov-hf``): SigLIP + Qwen2.

Video path of the model (transformers ``LlavaOnevisionModel.get_video_features``): every frame is resized
to the vision tower's square ``image_size`` (384), encoded to ``(image_size / patch_size)^2`` patch
features (27 x 27 = 729), projected, bilinearly pooled 2x to ``ceil(27 / 2)^2 = 196`` tokens, and one
learned ``image_newline`` token is appended after the last frame. The prompt holds one ``<video>``
placeholder per such token, frame after frame::

    <|im_start|>user <video> x (T * 196 + 1)\\n{aux}{query}<|im_end|><|im_start|>assistant\\n

Time unit of a token = its frame; the newline token belongs to the last frame.
"""

from __future__ import annotations

import math
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
    short_sha,
)

# Used only when a checkpoint ships no template; modelled on the one llava-hf publishes.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # what the llava-hf OneVision processors configure


class LlavaOnevisionAdapter(FamilyAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)

    def __init__(self, model_id: str, config: Any, tokenizer: Any, revision: str | None = None) -> None:
        super().__init__(model_id, config, tokenizer, revision)
        pre, self.pixel_source = read_preprocessor_config(model_id, revision)
        vision = config.vision_config
        # The model's 2x pooling assumes a square input of exactly the tower's image_size.
        self.size = (int(vision.image_size), int(vision.image_size))
        self.resample = int(pre.get("resample", BICUBIC))
        self.mean = tuple(pre.get("image_mean", SIGLIP_MEAN))
        self.std = tuple(pre.get("image_std", SIGLIP_STD))
        self.rescale = float(pre.get("rescale_factor", 1 / 255))
        side = vision.image_size // vision.patch_size
        self.tokens_per_frame = math.ceil(side / 2) ** 2
        self.video_token_id = int(config.video_token_id)
        self.video_token = tokenizer.convert_ids_to_tokens(self.video_token_id)
        self.chat_template = find_chat_template(
            model_id, revision, tokenizer, FALLBACK_CHAT_TEMPLATE, VIDEO_CONTENT, self.video_token
        )
        self.pad_id = pad_token_id(tokenizer, config)

    @staticmethod
    def model_class(config: Any) -> type[nn.Module]:
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    def text_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    @property
    def media_token_ids(self) -> tuple[int, ...]:
        return (int(self.config.image_token_id), self.video_token_id)

    def pixels(self, frames: Any) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, S, S]`` as the LLaVA-OneVision video processor."""
        x = resize_frames(frames_to_tensor(frames), self.size, self.resample)
        return normalize_frames(x, self.mean, self.std, self.rescale)

    def prepare(self, items: Sequence[ItemInput], texts: Sequence[str]) -> PreparedBatch:
        rendered = render_chat(self.tokenizer, self.chat_template, VIDEO_CONTENT)
        rows = []
        for item, text in zip(items, texts, strict=True):
            t = item.frames.shape[0]
            media = [Media(f, self.tokens_per_frame) for f in range(t)] + [Media(t - 1, 1)]  # + newline
            segments = build_segments(rendered, text, {self.video_token: lambda _k, m=media: m})
            rows.append(encode_segments(self.tokenizer, segments, self.video_token_id))
        input_ids, attention_mask, unit_ids = left_pad(rows, self.pad_id)
        pixel_values_videos = torch.stack([self.pixels(item.frames) for item in items])
        return PreparedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            unit_ids=unit_ids,
            num_units=[item.frames.shape[0] for item in items],
            extra={"pixel_values_videos": pixel_values_videos},
        )

    def settings(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resample": self.resample,
            "mean": list(self.mean),
            "std": list(self.std),
            "rescale": self.rescale,
            "processor_config": self.pixel_source,
            "tokens_per_frame": self.tokens_per_frame,
            "chat_template_sha": short_sha(self.chat_template),
        }
