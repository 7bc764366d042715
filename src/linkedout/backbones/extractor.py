"""An `Extractor`: a frozen backbone, the frame sampler that feeds it, and the rule that turns an item
(decoded clip + title + aux text) into the backbone's input. One home for what offline extraction
(`linkedout.extract`) and the online item path (`POST /v1/items` in `linkedout.serve`) both run, so a
video gets the same tokens whichever way it arrives (tests/test_online_extraction.py checks it).

Its fingerprint fields are the backbone's with the pipeline's inputs made explicit (the sampler
actually used, and the recipe of the text the backbone reads); the feature store is keyed by them.
Its `ExtractorSpec` (backbone name + constructor options + sampler settings, as given to
`get_backbone`) is recorded in the store at extraction time, so a server can rebuild the same
extractor and check it against the store's fingerprint instead of guessing options back from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from linkedout.backbones.base import Backbone, ItemInput, ItemTokens, fingerprint
from linkedout.video import AudioSampler, DecodedAudio, DecodedClip, FrameSampler

ITEM_TEXT_RECIPE = "catalog title + '\\n' + text (missing parts left out)"
CAPTION_TEXT_RECIPE = "the source store's generated caption (stage one of the caption path)"


def item_text(title: str | None, text: str | None) -> str | None:
    """The text an item brings to the backbone (title, then aux text); None when it has neither."""
    parts = [p.strip() for p in (title, text) if p and p.strip()]
    return "\n".join(parts) if parts else None


def needs_frames(backbone: Backbone) -> bool:
    # The text backbones read ItemInput.text only; anything else (frames, Video-LLMs) needs frames.
    return bool(getattr(backbone, "needs_frames", backbone.name != "text"))


def needs_audio(backbone: Backbone) -> bool:
    # Audio backbones read ItemInput.audio: the pipeline decodes the audio track, not frames.
    return bool(getattr(backbone, "needs_audio", False))


def uses_text(backbone: Backbone) -> bool:
    # The frames backbone ignores ItemInput.text; recording a recipe it never reads would make two
    # stores of identical tokens look different.
    return bool(getattr(backbone, "uses_text", backbone.name != "frames"))


def sampler_to_json(sampler: FrameSampler | AudioSampler | None) -> dict[str, Any] | None:
    """A sampler's settings as `ExtractorSpec` records them (`sampler_from_json` reads them back)."""
    if sampler is None:
        return None
    if isinstance(sampler, AudioSampler):
        return sampler.to_json()
    return {"num_frames": sampler.num_frames, "size": sampler.size, "mode": sampler.mode}


def sampler_from_json(data: dict[str, Any] | None) -> FrameSampler | AudioSampler | None:
    if data is None:
        return None
    if data.get("kind") == "audio":
        return AudioSampler(data["rate"], data.get("max_seconds"))
    return FrameSampler(**data)


@dataclass(frozen=True)
class ExtractorSpec:
    """How to build the extractor again: what `get_backbone(backbone, **options)` was called with
    (runtime-only options such as the device left out) and the frame sampler's settings."""

    backbone: str
    options: dict[str, Any] = field(default_factory=dict)
    # FrameSampler(num_frames, size, mode), or {"kind": "audio", rate, max_seconds}; None: no video
    sampler: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "options": dict(self.options), "sampler": self.sampler}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtractorSpec:
        return cls(str(data["backbone"]), dict(data.get("options") or {}), data.get("sampler"))


@dataclass(frozen=True)
class CaptionSource:
    """Stage one of the caption path: a feature store whose rows carry a Video-LLM's generated text,
    which a text backbone (stage two) reads instead of the catalogue's title + text. Its fingerprint
    joins the text backbone's in the second store's key, so that key covers both stages; its path and
    fields are recorded beside the key (a moved source store is still the same source)."""

    store: str
    fingerprint: str
    fingerprint_fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "fingerprint": self.fingerprint,
            "fingerprint_fields": self.fingerprint_fields,
        }


@dataclass
class Extractor:
    backbone: Backbone
    sampler: FrameSampler | AudioSampler | None = None
    # set when the item text is another store's generated captions (see `CaptionSource`)
    captions_from: CaptionSource | None = None

    def __post_init__(self) -> None:
        if needs_audio(self.backbone):
            if not isinstance(self.sampler, AudioSampler):
                raise ValueError(f"the {self.backbone.name} backbone reads audio: give an AudioSampler")
            return
        if isinstance(self.sampler, AudioSampler):
            raise ValueError(f"the {self.backbone.name} backbone does not read audio: give a FrameSampler")
        if self.captions_from is not None and needs_frames(self.backbone):
            raise ValueError(
                f"the {self.backbone.name} backbone reads video; captions from a store need a text "
                "backbone (caption or text)"
            )
        if not needs_frames(self.backbone):
            self.sampler = None  # a text backbone never decodes: no sampler in its fingerprint either
        elif self.sampler is None:
            raise ValueError(f"the {self.backbone.name} backbone reads frames: give a FrameSampler")

    @property
    def needs_frames(self) -> bool:
        return self.sampler is not None

    def fingerprint_fields(self) -> dict[str, Any]:
        """The backbone's fingerprint fields, with the inputs this pipeline feeds it made explicit."""
        fields = dict(self.backbone.fingerprint_fields())
        # Authoritative: the sampler actually used, even if the backbone was built with another dict.
        fields["sampler"] = self.sampler.fingerprint() if self.sampler is not None else None
        if self.captions_from is not None:
            fields["item_text"] = CAPTION_TEXT_RECIPE
            fields["captions_from"] = self.captions_from.fingerprint  # stage one's key, inside stage two's
        elif uses_text(self.backbone):
            fields["item_text"] = ITEM_TEXT_RECIPE
        return fields

    def fingerprint(self) -> str:
        return fingerprint(self.fingerprint_fields())

    def spec(self) -> ExtractorSpec | None:
        """How to rebuild this extractor; None when the backbone was not built by `get_backbone`
        (then a server cannot rebuild it and new items must arrive as LayerTokens)."""
        # optional attribute: a backbone of one's own (any object with the protocol's members) has none
        built = getattr(self.backbone, "build_spec", None)
        if built is None or self.captions_from is not None:
            # two stages (a Video-LLM, then a text encoder of its caption) are not one rebuildable
            # backbone: a server given such a bundle takes new items as LayerTokens
            return None
        return ExtractorSpec(built["name"], dict(built["options"]), sampler_to_json(self.sampler))

    @classmethod
    def from_spec(cls, spec: ExtractorSpec, **runtime: Any) -> Extractor:
        """Build the extractor a spec describes; ``runtime`` options (e.g. ``device``) are added."""
        from linkedout.backbones import get_backbone

        backbone = get_backbone(spec.backbone, **spec.options, **runtime)
        return cls(backbone, sampler_from_json(spec.sampler))

    def item_input(
        self,
        item_id: str,
        clip: DecodedClip | DecodedAudio | None,
        *,
        title: str | None = None,
        text: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> ItemInput:
        """The backbone's input for one item: its decoded clip (None for text backbones) or audio
        track, the text recipe of title + aux text, and what the decoding knows about time."""
        if clip is None:
            if self.captions_from is not None:  # the text is the caption: kept beside its vector
                caption = text if text and text.strip() else None
                return ItemInput(item_id, text=caption, meta={"caption": caption})
            return ItemInput(item_id, text=item_text(title, text))
        if isinstance(clip, DecodedAudio):
            meta = {
                "sample_rate": clip.rate,
                "duration": clip.duration,
                "cut": clip.cut,
                "path": str(path) if path is not None else None,
            }
            return ItemInput(item_id, audio=clip.samples, text=item_text(title, text), meta=meta)
        meta = {
            "timestamps": clip.timestamps,
            "duration": clip.duration,
            "fps": clip.fps,
            "path": str(path) if path is not None else None,
        }
        return ItemInput(item_id, frames=clip.frames, text=item_text(title, text), meta=meta)

    def extract_one(
        self,
        item_id: str,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        text: str | None = None,
    ) -> tuple[ItemTokens, DecodedClip | DecodedAudio]:
        """Decode one clip and encode it (the online path; raises VideoDecodeError)."""
        if self.sampler is None:
            raise ValueError(f"the {self.backbone.name} backbone does not read video")
        clip = self.sampler(path)
        tokens = self.backbone.encode([self.item_input(item_id, clip, title=title, text=text, path=path)])
        return tokens[0], clip
