"""Idefics3 and SmolVLM / SmolVLM2 (``HuggingFaceM4/Idefics3-8B-Llama3``,
``HuggingFaceTB/SmolVLM2-{256M,500M,2.2B}-Video-Instruct``): SigLIP + pixel shuffle + Llama-style decoder.

The model has no video input: frames go in as images (``pixel_values [B, T, 3, S, S]`` with a
``pixel_attention_mask``), each a square of the vision tower's ``image_size`` (no image splitting, as the
video processor does), each worth ``image_seq_len = (S / patch)^2 / scale_factor^2`` ``<image>`` tokens.

* SmolVLM2 (``model_type == "smolvlm"``) is trained on video and its processor writes a video prompt,
  which is mirrored here (transformers always uses its default template for video)::

      <|im_start|>User: You are provided the following series of eight frames from a 0:00:08 [H:MM:SS] video.
      \\nFrame from 00:00:<fake_token_around_image><global-img><image> x 64<fake_token_around_image> ...(x T)
      \\n\\n{aux}{query}<end_of_utterance>\\nAssistant:

  Timestamps come from ``ItemInput.meta["timestamps"]`` / ``["duration"]`` (else frame index / 24 fps).
* Idefics3 (and SmolVLM v1, whose model_type is also ``idefics3``) sees the frames as T images in one
  user turn, each ``<fake_token_around_image><global-img><image> x N<fake_token_around_image>``.

Time unit of a token = its frame. Frame resizing follows the processors: longest edge to the processor's
``size`` (aspect kept), then to the ``S x S`` square, Lanczos (PIL) unless the config says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from linkedout.backbones.base import ItemInput
from linkedout.backbones.vllm.common import (
    LANCZOS,
    USER_TEXT_MARK,
    FamilyAdapter,
    Media,
    PreparedBatch,
    Segment,
    Text,
    build_segments,
    encode_segments,
    find_chat_template,
    frame_timestamps,
    frames_to_tensor,
    left_pad,
    normalize_frames,
    pad_token_id,
    read_preprocessor_config,
    render_chat,
    resize_frames,
    short_sha,
)

# Used only when a checkpoint ships no template; modelled on the one HuggingFaceM4 publishes.
FALLBACK_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
STANDARD_MEAN = STANDARD_STD = (0.5, 0.5, 0.5)
MAX_IMAGE_SIZE = 4096  # the processors' absolute cap on a side


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000 ("eight", "forty-two"), as ``num2words`` writes them in SmolVLM's
    video prompt; ``num2words`` is used when installed."""
    try:
        from num2words import num2words

        return num2words(n)
    except ImportError:
        pass
    ones = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    ones += "sixteen seventeen eighteen nineteen"
    small = ones.split()
    tens = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    if n < 20:
        return small[n]
    if n < 100:
        return tens[n // 10] + ("" if n % 10 == 0 else "-" + small[n % 10])
    if n < 1000:
        rest = n % 100
        return small[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    return str(n)


def smolvlm_video_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """First resize of ``SmolVLMVideoProcessor``: longest edge to ``longest``, even short edge."""
    longest = min(MAX_IMAGE_SIZE, longest)
    aspect = w / h
    if w >= h:
        w, h = longest, int(longest / aspect)
        h += h % 2
    else:
        h, w = longest, int(longest * aspect)
        w += w % 2
    return max(h, 1), max(w, 1)


class Idefics3Adapter(FamilyAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def __init__(self, model_id: str, config: Any, tokenizer: Any, revision: str | None = None) -> None:
        super().__init__(model_id, config, tokenizer, revision)
        pre, self.pixel_source = read_preprocessor_config(model_id, revision)
        vision = config.vision_config
        self.is_video_model = config.model_type == "smolvlm"
        # image_seq_len assumes exactly image_size x image_size inputs (max_image_size in real configs).
        self.side = int(vision.image_size)
        self.image_seq_len = int((vision.image_size // vision.patch_size) ** 2 / config.scale_factor**2)
        video_size = (pre.get("video_sampling") or {}).get("video_size") or {}
        size = video_size if self.is_video_model and video_size else (pre.get("size") or {})
        self.first_edge = int(size.get("longest_edge", 4 * self.side))
        self.resample = int(pre.get("resample", LANCZOS))
        self.mean = tuple(pre.get("image_mean", STANDARD_MEAN))
        self.std = tuple(pre.get("image_std", STANDARD_STD))
        self.rescale = float(pre.get("rescale_factor", 1 / 255))
        self.image_token_id = int(config.image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.fake_token = getattr(tokenizer, "fake_image_token", None) or "<fake_token_around_image>"
        self.global_token = getattr(tokenizer, "global_image_token", None) or "<global-img>"
        if self.is_video_model:
            from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

            self.chat_template = DEFAULT_CHAT_TEMPLATE
        else:
            content = [{"type": "image"}, {"type": "text", "text": USER_TEXT_MARK}]
            self.chat_template = find_chat_template(
                model_id, revision, tokenizer, FALLBACK_CHAT_TEMPLATE, content, self.image_token
            )
        self.pad_id = pad_token_id(tokenizer, config)

    @staticmethod
    def model_class(config: Any) -> type[nn.Module]:
        if config.model_type == "smolvlm":
            from transformers import SmolVLMForConditionalGeneration

            return SmolVLMForConditionalGeneration
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration

    def text_model(self, model: nn.Module) -> nn.Module:
        return model.model.text_model

    @property
    def media_token_ids(self) -> tuple[int, ...]:
        return (self.image_token_id,)

    def pixels(self, frames: Any) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, S, S]``: longest edge first, then the square."""
        x = frames_to_tensor(frames)
        h, w = x.shape[-2:]
        if self.is_video_model:
            first = smolvlm_video_size(h, w, self.first_edge)
        else:
            from transformers.models.idefics3.image_processing_pil_idefics3 import (
                get_resize_output_image_size,
            )

            first = get_resize_output_image_size(x[0], resolution_max_side=self.first_edge)
        x = resize_frames(resize_frames(x, first, self.resample), (self.side, self.side), self.resample)
        return normalize_frames(x, self.mean, self.std, self.rescale)

    def _image(self, frame: int, prefix: str = "") -> list[Segment]:
        return [
            Text(prefix + self.fake_token + self.global_token),
            Media(frame, self.image_seq_len),
            Text(self.fake_token),
        ]

    def _video(self, item: ItemInput) -> list[Segment]:
        """SmolVLM2's expansion of one ``<video>`` placeholder."""
        from transformers.models.smolvlm.processing_smolvlm import (
            DEFAULT_MEDIA_OUTTRO,
            DEFAULT_VIDEO_INTRO,
            FRAME_TIMESTAMP_MESSAGE,
        )

        stamps = frame_timestamps(item)
        duration = item.meta.get("duration")
        duration = int(duration) if duration is not None else int(stamps[-1])
        intro = DEFAULT_VIDEO_INTRO.format(
            frame_count=number_words(len(stamps)), video_duration=str(timedelta(seconds=duration))
        )
        out: list[Segment] = [Text(intro)]
        for f, s in enumerate(stamps):
            stamp = FRAME_TIMESTAMP_MESSAGE.format(timestamp=f"{int(s // 60):02d}:{int(s % 60):02d}")
            out += self._image(f, prefix=stamp)
        return [*out, Text(DEFAULT_MEDIA_OUTTRO)]

    def prepare(self, items: Sequence[ItemInput], texts: Sequence[str]) -> PreparedBatch:
        rows = []
        for item, text in zip(items, texts, strict=True):
            t = item.frames.shape[0]
            if self.is_video_model:
                content = [{"type": "video"}, {"type": "text", "text": USER_TEXT_MARK}]
                media = {"<video>": lambda _k, it=item: self._video(it)}
            else:
                content = [{"type": "image"}] * t + [{"type": "text", "text": USER_TEXT_MARK}]
                media = {self.image_token: lambda k: self._image(k)}
            rendered = render_chat(self.tokenizer, self.chat_template, content)
            segments = build_segments(rendered, text, media)
            rows.append(encode_segments(self.tokenizer, segments, self.image_token_id))
        input_ids, attention_mask, unit_ids = left_pad(rows, self.pad_id)
        pixel_values = torch.stack([self.pixels(item.frames) for item in items])
        b, t = pixel_values.shape[:2]
        return PreparedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            unit_ids=unit_ids,
            num_units=[item.frames.shape[0] for item in items],
            extra={
                "pixel_values": pixel_values,
                "pixel_attention_mask": torch.ones(b, t, self.side, self.side, dtype=torch.long),
            },
        )

    def settings(self) -> dict[str, Any]:
        return {
            "first_longest_edge": self.first_edge,
            "side": self.side,
            "resample": self.resample,
            "mean": list(self.mean),
            "std": list(self.std),
            "rescale": self.rescale,
            "processor_config": self.pixel_source,
            "image_seq_len": self.image_seq_len,
            "video_prompt": self.is_video_model,
            "chat_template_sha": short_sha(self.chat_template),
        }
