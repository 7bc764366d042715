"""What an extraction run is asked for, checked before anything heavy is loaded.

`ExtractOptions` is the one home of the rules that tie options to a backbone kind: which options a
kind accepts, how ``layers`` is spelled for it, which frame size it decodes at, and which options its
constructor receives. ``linkedout extract`` only parses flags into it and maps its errors to an exit
code; library callers get the same checks and the same messages.

::

    ExtractOptions ──validate()──► ValueError with the flag's name, before the catalog or a model loads
                   ──build()─────► (backbone, sampler): get_backbone(name, **backbone_options(sampler))
                   ──run()───────► load_catalog ─► build ─► extract ─► ExtractReport
                                   engine="ray": load_catalog ─► recipe() ─► extract_ray (ray_engine.py)
                                   captions_from: prepare_captions (captions.py) ─► build ─► extract

Where the items come from: a catalogue (``--catalog``: folder, manifest, samples tier), a log's item
metadata (``--catalog-from ml-100k``: text only, `catalog_from_log`), or a store's generated captions
(``--captions-from STORE``: stage two of the caption path). Exactly one of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import linkedout.backbones as backbones
from linkedout.backbones import BACKBONES, Backbone
from linkedout.extract.pipeline import (
    ExtractReport,
    catalog_from_log,
    check_video_paths,
    default_frame_size,
    extract,
    load_catalog,
)
from linkedout.video import AudioSampler, FrameSampler

if TYPE_CHECKING:
    from linkedout.extract.ray_engine import ExtractorRecipe

__all__ = ["ENGINES", "PARALLEL_MODES", "ExtractOptions"]

PARALLEL_MODES = ("threads", "processes")
ENGINES = ("local", "ray")
TEXT_KINDS = ("text", "caption")  # backbones that read only an item's text


@dataclass
class ExtractOptions:
    """Settings of one extraction run (the flags of ``linkedout extract``).

    ``backbone``: ``frames | text | caption | vllm | audio`` or ``vllm:<model>``. ``size``: short side of
    decoded frames in pixels; None picks `default_frame_size` for the backbone, 0 keeps the stored size.
    ``layers``: integers for frames/text (a ``"0,4,16"`` string or a sequence), a layer spec such as
    ``"every:4"`` for vllm. ``prompt`` does not apply to frames; ``model`` only to vllm and audio
    (``yamnet | aisfx``), ``new_tokens`` only to vllm: passing them elsewhere is an error rather than
    silently ignored.

    ``engine``: ``local`` (this process, decode workers beside it) or ``ray`` (decode tasks and a
    backbone actor pool on a Ray cluster; see `linkedout.extract.ray_engine`). ``address``, ``actors``,
    ``gpus_per_actor`` and ``cpus_per_actor`` are Ray's; ``workers`` and ``parallel`` the local engine's.

    ``captions_from``: a feature store whose generated captions are the items' text (stage two of the
    caption path; text backbones, local engine); ``catalog_from``: a log (sample name or path) whose
    item metadata is a text-only catalogue; ``text_column``: the manifest column text backbones read as
    each item's text (default ``text``; recorded in the fingerprint as ``text_source``). ``model`` for
    the caption backbone is a local encoder folder (default MiniLM).
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
    engine: str = "local"
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    captions_from: str | None = None
    catalog_from: str | None = None
    text_column: str | None = None

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
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be local or ray, not {self.engine!r}")
        ray = self.engine == "ray"
        unused = {
            "--prompt": self.prompt is not None and kind in ("frames", "audio"),
            "--model": self.model is not None and kind not in ("vllm", "audio", "caption"),
            "--new-tokens": self.new_tokens is not None and kind != "vllm",
            "--layers": self.layers is not None and kind == "caption",  # one sentence vector, no layers
            # text backbones record the column in their fingerprint (text_source); others could not
            "--text-column": self.text_column is not None and kind not in TEXT_KINDS,
            # the local engine's decode pool; on Ray, decode tasks are scheduled by the cluster
            "--workers": self.workers is not None and ray,
            "--parallel": self.parallel != "threads" and ray,
        }
        for flag, value in {
            "--address": self.address,
            "--actors": self.actors,
            "--gpus-per-actor": self.gpus_per_actor,
            "--cpus-per-actor": self.cpus_per_actor,
        }.items():
            if value is not None and not ray:
                raise ValueError(f"{flag} applies to --engine ray only")
        if ray:
            self._check_ray()
        if self.captions_from is not None:
            if kind not in TEXT_KINDS:
                raise ValueError(f"--captions-from needs a text backbone (caption or text), not {kind}")
            if ray:
                raise ValueError("--captions-from runs on --engine local (text encoding needs no cluster)")
        if self.text_column is not None and (self.captions_from or self.catalog_from):
            raise ValueError("--text-column picks a column of a --catalog manifest")
        if self.catalog_from is not None and kind not in TEXT_KINDS:
            raise ValueError(
                f"--catalog-from gives a text-only catalogue (a log's item metadata, no videos): "
                f"use --backbone text or caption, not {kind}"
            )
        for flag, bad in unused.items():
            if bad:  # silently ignoring an option would make the user believe it took effect
                where = (
                    f"--engine {self.engine}"
                    if flag in ("--workers", "--parallel")
                    else f"the {kind} backbone"
                )
                raise ValueError(f"{flag} does not apply to {where}")
        self._layers()

    def _check_ray(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--actors must be >= 1, not {self.actors}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ValueError(f"--cpus-per-actor must be > 0, not {self.cpus_per_actor}")
        gpus = self.gpus_per_actor or 0
        if gpus < 0:
            raise ValueError(f"--gpus-per-actor must be >= 0, not {gpus}")
        # A GPU reserved for a model that then runs on the CPU (or the reverse) is a mistake either
        # way; the device stays explicit rather than switched behind the user's back.
        if gpus and not self.device.startswith("cuda"):
            raise ValueError(f"--gpus-per-actor {gpus:g} reserves GPUs: pass --device cuda too")
        if not gpus and self.device.startswith("cuda"):
            raise ValueError("--device cuda with --engine ray needs --gpus-per-actor (e.g. 1)")

    def recipe(self) -> ExtractorRecipe:
        """How each Ray worker builds this run's extractor without loading anything here: the spec
        `get_backbone` would record, and the runtime options it leaves out of it."""
        from linkedout.backbones import RUNTIME_OPTIONS
        from linkedout.backbones.extractor import ExtractorSpec, sampler_to_json
        from linkedout.extract.ray_engine import ExtractorRecipe

        sampler = self.frame_sampler()
        options = self.backbone_options(sampler)
        spec = ExtractorSpec(
            self.backbone,
            {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS},
            sampler_to_json(sampler),
        )
        return ExtractorRecipe(spec, {k: v for k, v in options.items() if k in RUNTIME_OPTIONS})

    def frame_sampler(self) -> FrameSampler | AudioSampler | None:
        """How clips are decoded for this backbone; None for text, which never decodes; for audio the
        audio track at the model's rate."""
        if self.kind in TEXT_KINDS:  # caption too: its constructor takes no sampler
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
        if self.kind in ("audio", "caption") and self.model is not None:
            options["model"] = self.model
        if self.text_column is not None:
            options["text_source"] = self.text_column
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
        self, catalog: str | os.PathLike[str] | None, store: str | os.PathLike[str], *, progress: bool = True
    ) -> ExtractReport:
        """Validate, load the catalog (or the log's metadata, or the source store's captions), build
        the backbone and extract into ``store`` (resumable)."""
        self.validate()  # before the catalog: a typo in a flag should not wait for a catalog scan
        given = [catalog is not None, self.catalog_from is not None, self.captions_from is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of --catalog, --catalog-from or --captions-from")
        if self.captions_from is not None:
            from linkedout.extract.captions import prepare_captions

            items, source = prepare_captions(self.captions_from, store)  # before the model loads
            backbone, _ = self.build()
            return extract(
                items,
                backbone,
                store,
                captions_from=source,
                batch_size=self.batch_size,
                limit=self.limit,
                retry_failed=self.retry_failed,
                progress=progress,
                torch_threads=self.torch_threads or None,
            )
        if catalog is None:
            assert self.catalog_from is not None
            catalog = self.catalog_from
            items = catalog_from_log(catalog)
        else:
            items = load_catalog(catalog, text_column=self.text_column)
        if len(items) == 0:
            raise ValueError(f"the catalog {catalog} holds no items (no video files / empty manifest)")
        if self.kind not in TEXT_KINDS:
            check_video_paths(items, self.kind)  # a text-only catalogue: say so before a model loads
        if self.engine == "ray":
            from linkedout.extract.ray_engine import extract_ray

            return extract_ray(
                items,
                self.recipe(),
                store,
                address=self.address,
                actors=self.actors or 1,
                gpus_per_actor=self.gpus_per_actor or 0,
                cpus_per_actor=self.cpus_per_actor,
                batch_size=self.batch_size,
                torch_threads=self.torch_threads or None,
                limit=self.limit,
                retry_failed=self.retry_failed,
                progress=progress,
            )
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
