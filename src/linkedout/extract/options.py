"""What an extraction run is asked for, checked before anything heavy is loaded.

`ExtractOptions` is the one home of the rules that tie options to a backbone kind: which options a
kind accepts, how ``layers`` is spelled for it, which frame size it decodes at, and which options its
constructor receives. ``linkedout extract`` only parses flags into it and maps its errors to an exit
code; library callers get the same checks and the same messages.

::

    ExtractOptions ──validate()──► ValueError with the flag's name, before the catalog or a model loads
                   ──build()─────► (backbone, sampler): get_backbone(name, **backbone_options(sampler))
                   ──run()───────► load_catalog ─► build ─► extract ─► ExtractReport
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import linkedout.backbones as backbones
from linkedout.backbones import BACKBONES, Backbone
from linkedout.extract.pipeline import ExtractReport, default_frame_size, extract, load_catalog
from linkedout.video import AudioSampler, FrameSampler

__all__ = ["PARALLEL_MODES", "ExtractOptions"]

PARALLEL_MODES = ("threads", "processes")


@dataclass
class ExtractOptions:
    """Settings of one extraction run (the flags of ``linkedout extract``).

    ``backbone``: ``frames | text | caption | vllm | audio`` or ``vllm:<model>``. ``size``: short side of
    decoded frames in pixels; None picks `default_frame_size` for the backbone, 0 keeps the stored size.
    ``layers``: integers for frames/text (a ``"0,4,16"`` string or a sequence), a layer spec such as
    ``"every:4"`` for vllm. ``prompt`` does not apply to frames; ``model`` only to vllm and audio
    (``yamnet | aisfx``), ``new_tokens`` only to vllm: passing them elsewhere is an error rather than
    silently ignored.
    """

    backbone: str = "frames"
    frames: int = 8
    size: int | None = None
    batch_size: int = 8
    workers: int | None = None
    torch_threads: int | None = None
    parallel: str = "threads"
    limit: int | None = None
    prompt: str | None = None
    layers: str | Sequence[int] | None = None
    model: str | None = None
    new_tokens: int | None = None
    device: str = "cpu"
    retry_failed: bool = False

    @property
    def kind(self) -> str:
        """The backbone family: ``"vllm"`` for ``"vllm:<model>"``."""
        return self.backbone.partition(":")[0]

    def validate(self) -> None:
        """Raise ValueError naming the offending flag; loads nothing."""
        kind = self.kind
        if kind not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"--parallel must be threads or processes, not {self.parallel!r}")
        unused = {
            "--prompt": self.prompt is not None and kind in ("frames", "audio"),
            "--model": self.model is not None and kind not in ("vllm", "audio"),
            "--new-tokens": self.new_tokens is not None and kind != "vllm",
        }
        for flag, bad in unused.items():
            if bad:  # silently ignoring an option would make the user believe it took effect
                raise ValueError(f"{flag} does not apply to the {kind} backbone")
        self._layers()

    def frame_sampler(self) -> FrameSampler | AudioSampler | None:
        """How clips are decoded for this backbone; None for text, which never decodes; for audio the
        audio track at the model's rate."""
        if self.kind == "text":
            return None
        if self.kind == "audio":
            from linkedout.backbones.audio import DEFAULT_AUDIO_MODEL, SAMPLE_RATES

            model = self.model or self.backbone.partition(":")[2] or DEFAULT_AUDIO_MODEL
            if model not in SAMPLE_RATES:
                raise ValueError(f"--model for the audio backbone is one of {', '.join(SAMPLE_RATES)}")
            return AudioSampler(SAMPLE_RATES[model])
        short_side = default_frame_size(self.kind) if self.size is None else (self.size or None)  # 0 = stored
        return FrameSampler(self.frames, short_side)

    def backbone_options(self, sampler: FrameSampler | None = None) -> dict[str, Any]:
        """Keyword arguments for `linkedout.backbones.get_backbone`: only what was set, so the backbone's
        own defaults (and their fingerprint) apply otherwise."""
        self.validate()
        options: dict[str, Any] = {"device": self.device}
        if self.prompt is not None:
            options["prompt"] = self.prompt
        layers = self._layers()
        if layers is not None:
            options["layers"] = layers
        if self.kind == "audio" and self.model is not None:
            options["model"] = self.model
        if self.kind == "vllm":
            options["batch_size"] = self.batch_size
            if self.model is not None:
                options["model"] = self.model
            if self.new_tokens is not None:
                options["new_tokens"] = self.new_tokens
        if sampler is not None:
            options["sampler"] = sampler.fingerprint()  # the backbone records it in its fingerprint too
        return options

    def build(self) -> tuple[Backbone, FrameSampler | AudioSampler | None]:
        """The backbone (loaded: may download or fail with OSError / ImportError) and its frame sampler."""
        sampler = self.frame_sampler()
        # through the module, not a name bound at import: get_backbone stays the one place that maps a
        # name to an implementation, whatever it becomes
        backbone = backbones.get_backbone(self.backbone, **self.backbone_options(sampler))
        return backbone, sampler

    def run(
        self, catalog: str | os.PathLike[str], store: str | os.PathLike[str], *, progress: bool = True
    ) -> ExtractReport:
        """Validate, load the catalog, build the backbone and extract into ``store`` (resumable)."""
        self.validate()  # before the catalog: a typo in a flag should not wait for a catalog scan
        items = load_catalog(catalog)
        if len(items) == 0:
            raise ValueError(f"the catalog {catalog} holds no items (no video files / empty manifest)")
        backbone, sampler = self.build()
        return extract(
            items,
            backbone,
            store,
            sampler=sampler,
            batch_size=self.batch_size,
            workers=self.workers,
            parallel=self.parallel,  # type: ignore[arg-type]  # checked in validate()
            limit=self.limit,
            retry_failed=self.retry_failed,
            progress=progress,
            torch_threads=self.torch_threads or None,
        )

    def _layers(self) -> str | tuple[int, ...] | None:
        # vllm takes a layer spec string ("every:4", "1,6,-1") and parses it against the loaded model;
        # frames and text take integers, checked here so a typo fails before a model loads
        if self.layers is None:
            return None
        if self.kind == "vllm":
            return self.layers if isinstance(self.layers, str) else tuple(self.layers)
        if not isinstance(self.layers, str):
            return tuple(int(x) for x in self.layers)
        try:
            return tuple(int(x) for x in self.layers.split(",") if x.strip())
        except ValueError:
            raise ValueError(
                f"--layers for the {self.kind} backbone is a comma list of integers, got {self.layers!r}"
            ) from None
