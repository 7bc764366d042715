"""What every Video-LLM family adapter shares: the prepared batch, chat rendering, token splicing, padding,
checkpoint files, and frame preprocessing that mirrors transformers' (torchvision-based) video processors
without needing torchvision.

A family adapter turns items into a list of *segments* per item:

* ``Text(s)``       template text: its control tokens (``<|im_start|>``...) are encoded as such;
* ``UserText(s)``   prompt / title / ASR: control-token strings in it (``<video>``, ``<|im_end|>``) are
                    broken up first, so a title cannot inject a placeholder or end the turn;
* ``Media(unit, n)``  ``n`` copies of the media placeholder id for time unit ``unit`` (a frame, or a
                    temporal patch), which the model's forward replaces with vision features.

`encode_segments` tokenises them and records each position's time unit, which is what the pooling
matrix needs (`capture.pooling_matrix`). Text between two media runs is tokenised as one string, so
the ids equal the processor's tokenising of the fully expanded prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from linkedout.backbones.base import ItemInput

# Private-use characters: no tokenizer or template produces them, so they mark where the user text goes.
USER_TEXT_MARK = "\ue000linkedout-user-text\ue000"

# One user turn: the video, then the user's text (aux + query) as a mark to cut at.
VIDEO_CONTENT = [{"type": "video"}, {"type": "text", "text": USER_TEXT_MARK}]

# PIL resample codes used in preprocessor configs (PILImageResampling).
NEAREST, LANCZOS, BILINEAR, BICUBIC = 0, 1, 2, 3


@dataclass
class Text:
    text: str


@dataclass
class UserText:
    text: str


@dataclass
class Media:
    unit: int
    count: int


Segment = Text | UserText | Media


@dataclass
class PreparedBatch:
    """Model inputs for one batch plus the token layout that pooling needs (all on the CPU)."""

    input_ids: torch.Tensor  # [B, P] left-padded
    attention_mask: torch.Tensor  # [B, P]
    unit_ids: torch.Tensor  # [B, P] time unit of each media token, -1 elsewhere
    num_units: list[int]  # time units per item
    extra: dict[str, Any] = field(default_factory=dict)  # pixel_values*, grids, mm_token_type_ids...

    def model_inputs(self, device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
        """kwargs for ``model(...)`` / ``model.generate(...)``; pixel tensors are cast to ``dtype``."""
        out: dict[str, Any] = {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
        }
        for k, v in self.extra.items():
            if isinstance(v, torch.Tensor):
                # only pixels take the model's dtype; e.g. Qwen2.5-VL's seconds per grid stay float32
                v = v.to(device=device, dtype=dtype) if k.startswith("pixel_values") else v.to(device)
            out[k] = v
        return out


class FamilyAdapter:
    """One model family: which class to load, where its decoder is, how to build its inputs."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter handles

    def __init__(self, model_id: str, config: Any, tokenizer: Any, revision: str | None = None) -> None:
        self.model_id = model_id
        self.config = config
        self.tokenizer = tokenizer
        self.revision = revision

    @staticmethod
    def model_class(config: Any) -> type[nn.Module]:
        raise NotImplementedError

    def text_model(self, model: nn.Module) -> nn.Module:
        """The language model inside the VLM: has ``.layers`` (decoder layers) and ``.norm``."""
        raise NotImplementedError

    def prepare(self, items: Sequence[ItemInput], texts: Sequence[str]) -> PreparedBatch:
        """Pixel inputs + chat-formatted, left-padded token ids for items with equal frame counts."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Preprocessing settings that change the inputs (part of the fingerprint)."""
        raise NotImplementedError

    @property
    def media_token_ids(self) -> tuple[int, ...]:
        """Placeholder ids that must never be generated as text (they would be read as media)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- text


def compose_user_text(prompt: str, aux: str | None, aux_template: str, max_aux_chars: int) -> str:
    """The user turn's text: auxiliary text (title, ASR...) first, then the query, so that the query is
    the last thing the model reads before answering."""
    if aux and aux.strip() and max_aux_chars > 0:
        return aux_template.format(text=aux.strip()[:max_aux_chars]) + prompt
    return prompt


def render_chat(tokenizer: Any, template: str, content: list[dict[str, Any]]) -> str:
    """One user message rendered with the checkpoint's chat template and the assistant prompt."""
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


def split_rendered(rendered: str, markers: Sequence[str]) -> list[str]:
    """Cut a rendered chat around each occurrence of the markers (media placeholders,
    `USER_TEXT_MARK`); marker occurrences come back as their own pieces, empty pieces are dropped."""
    pattern = "(" + "|".join(re.escape(m) for m in markers) + ")"
    return [piece for piece in re.split(pattern, rendered) if piece]


def build_segments(
    rendered: str, user_text: str, media: dict[str, Callable[[int], list[Segment]]]
) -> list[Segment]:
    """Segments of a chat rendered with `USER_TEXT_MARK` as the user's text: the mark becomes
    ``UserText(user_text)``, the k-th occurrence of media placeholder m becomes ``media[m](k)``."""
    counts = dict.fromkeys(media, 0)
    out: list[Segment] = []
    for piece in split_rendered(rendered, [*media, USER_TEXT_MARK]):
        if piece == USER_TEXT_MARK:
            out.append(UserText(user_text))
        elif piece in media:
            out += media[piece](counts[piece])
            counts[piece] += 1
        else:
            out.append(Text(piece))
    if sum(isinstance(s, UserText) for s in out) != 1 or not any(counts.values()):
        raise ValueError(f"chat template lost the text or the media placeholder: {rendered!r}")
    return out


def neutralize_control_tokens(text: str, tokenizer: Any) -> str:
    """User text with every added token string (``<video>``, ``<|im_end|>``...) broken by a zero-width
    space after its first character, so the tokenizer reads it as plain text and a title cannot inject a
    placeholder or end the turn. Text without such strings is returned unchanged."""
    for token in control_token_strings(tokenizer):
        if token in text:
            text = text.replace(token, token[0] + "\u200b" + token[1:])
    return text


def control_token_strings(tokenizer: Any) -> list[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    strings = {str(t) for t in added.values()} | set(getattr(tokenizer, "all_special_tokens", []))
    return sorted((t for t in strings if len(t) > 1), key=len, reverse=True)  # longest first


def encode_segments(
    tokenizer: Any, segments: Sequence[Segment], media_id: int
) -> tuple[list[int], list[int]]:
    """Token ids and per-token time units (-1 for text) of one item's segments.

    Adjacent text segments are joined and tokenised together, as the processor tokenises the whole
    expanded prompt (BPE pre-tokenisers may merge across a template/user-text boundary, e.g. a blank line
    before a word); text runs are cut only at media placeholders, which are special tokens, so cutting
    there changes nothing.
    """
    ids: list[int] = []
    units: list[int] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            piece = tokenizer("".join(run), add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            units.extend([-1] * len(piece))
            run.clear()

    for seg in segments:
        if isinstance(seg, Media):
            flush()
            ids.extend([media_id] * seg.count)
            units.extend([seg.unit] * seg.count)
        elif isinstance(seg, UserText):
            run.append(neutralize_control_tokens(seg.text, tokenizer))
        else:
            run.append(seg.text)
    flush()
    return ids, units


def left_pad(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left padding (generation appends on the right, so every row's last token must be real)."""
    p = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), p), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), p), dtype=torch.long)
    unit_ids = torch.full((len(rows), p), -1, dtype=torch.long)
    for i, (ids, units) in enumerate(rows):
        n = len(ids)
        input_ids[i, p - n :] = torch.tensor(ids, dtype=torch.long)
        attention[i, p - n :] = 1
        unit_ids[i, p - n :] = torch.tensor(units, dtype=torch.long)
    return input_ids, attention, unit_ids


def short_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pad_token_id(tokenizer: Any, config: Any) -> int:
    for cand in (
        tokenizer.pad_token_id,
        getattr(getattr(config, "text_config", config), "pad_token_id", None),
        tokenizer.eos_token_id,
    ):
        if cand is not None:
            return int(cand)
    return 0


# ------------------------------------------------------------------------------ checkpoint files


def read_checkpoint_file(model_id: str, filename: str, revision: str | None = None) -> str | None:
    """Text of a file in a local folder or a hub repo (hub cache / offline mode respected), or None."""
    from transformers.utils import cached_file

    try:
        path = cached_file(
            model_id,
            filename,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return None
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_preprocessor_config(model_id: str, revision: str | None = None) -> tuple[dict[str, Any], str]:
    """The video processor's settings if the checkpoint has them, else the image processor's (which is
    what ``AutoVideoProcessor`` falls back to); ``({}, "defaults")`` if neither exists."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        text = read_checkpoint_file(model_id, name, revision)
        if text:
            return json.loads(text), name
    return {}, "defaults"


def find_chat_template(
    model_id: str,
    revision: str | None,
    tokenizer: Any,
    fallback: str,
    content: list[dict[str, Any]],
    placeholder: str,
) -> str:
    """The first chat template that renders ``content`` with both ``placeholder`` and the user text:
    the processor's (it knows video/image parts; ``chat_template.jinja``, ``chat_template.json`` or
    ``processor_config.json``), then the tokenizer's, then the family's built-in one. A text-only
    template (which would silently drop the video) is skipped."""
    candidates = [read_checkpoint_file(model_id, "chat_template.jinja", revision)]
    for name in ("chat_template.json", "processor_config.json"):
        text = read_checkpoint_file(model_id, name, revision)
        candidates.append(json.loads(text).get("chat_template") if text else None)
    candidates += [getattr(tokenizer, "chat_template", None), fallback]
    for template in candidates:
        if not isinstance(template, str) or not template:
            continue
        try:
            rendered = render_chat(tokenizer, template, content)
        except Exception:  # a template written for another message format
            continue
        if placeholder in rendered and USER_TEXT_MARK in rendered:
            return template
    return fallback


# ------------------------------------------------------------------------------------------ frames


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, H, W]`` (what video processors work on)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()


def resize_frames(x: torch.Tensor, size: tuple[int, int], resample: int = BICUBIC) -> torch.Tensor:
    """Resize uint8 ``[T, 3, H, W]`` frames to ``size`` (h, w) the way the processors do on the CPU.

    Bicubic/bilinear: torchvision's tensor resize, i.e. antialiased ``F.interpolate`` on the uint8 tensor
    (its native CPU path). Lanczos and others: PIL per frame, like the PIL image processors (torchvision
    has no tensor Lanczos before 0.27).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if resample in (BICUBIC, BILINEAR):
        mode = "bicubic" if resample == BICUBIC else "bilinear"
        return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    h, w = size
    out = [
        np.asarray(PIL.Image.fromarray(f.permute(1, 2, 0).numpy()).resize((w, h), resample=resample))
        for f in x
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def normalize_frames(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], rescale: float = 1 / 255
) -> torch.Tensor:
    """uint8 -> float32 ``(x * rescale - mean) / std``, computed like transformers' fused
    rescale-and-normalise: ``(x - mean / rescale) / (std / rescale)``."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / rescale
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) / rescale
    return (x.float() - m) / s


def frame_timestamps(item: ItemInput, default_fps: float = 24.0) -> list[float]:
    """Seconds of each frame: ``item.meta["timestamps"]`` (the sampler's), else frame index / 24 fps,
    which is transformers' own fallback when a video comes without metadata."""
    t = item.frames.shape[0] if item.frames is not None else 0
    ts = item.meta.get("timestamps")
    if ts is not None and len(ts) == t:
        return [float(s) for s in ts]
    return [i / default_fps for i in range(t)]


def sampled_fps(item: ItemInput, default_fps: float = 24.0) -> float:
    """Frames per second of the sampled frames, as transformers' ``VideoMetadata.sampled_fps``: T over
    ``meta["duration"]``, else from the timestamps' spacing, else 24."""
    t = item.frames.shape[0] if item.frames is not None else 0
    duration = item.meta.get("duration")
    if duration:
        return t / float(duration)
    ts = frame_timestamps(item, default_fps)
    if len(ts) > 1 and ts[-1] > ts[0]:
        return (len(ts) - 1) / (ts[-1] - ts[0])
    return default_fps
