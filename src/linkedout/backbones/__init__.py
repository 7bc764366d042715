"""linkedout.backbones: frozen models that turn items into `LayerTokens` (see `base.py`).

`get_backbone` is the one place that maps a name to an implementation. Imports are lazy so that
``import linkedout.backbones`` stays cheap and a missing optional stack only fails when it is used.
"""

from __future__ import annotations

from typing import Any

from linkedout.backbones.base import Backbone, ItemInput, ItemTokens, fingerprint

BACKBONES = ("frames", "text", "caption", "vllm", "audio")
# Options that change where or how fast a backbone runs, not its tokens: left out of the recorded
# build spec, so a store extracted on a GPU can be rebuilt on a CPU server (the fingerprint check
# still catches a dtype that resolves differently there).
RUNTIME_OPTIONS = frozenset({"device", "batch_size", "frame_batch", "attn_implementation", "threads"})

__all__ = ["BACKBONES", "Backbone", "ItemInput", "ItemTokens", "fingerprint", "get_backbone"]


def get_backbone(name: str, **options: Any) -> Backbone:
    """A backbone by name: ``"frames"`` (EfficientNet-Lite0), ``"text"`` (MiniLM layers), ``"caption"``
    (one MiniLM sentence vector of the item's text or caption), ``"vllm"``
    (Video-LLM adapters; pass ``model=...``, or write ``"vllm:<model>"``), ``"audio"`` (the clip's sound:
    ``model="yamnet"`` (default) or ``"aisfx"``, also ``"audio:<model>"``). ``options`` go to the
    backbone's constructor unchanged. The backbone remembers them as ``build_spec`` (name + options
    less `RUNTIME_OPTIONS`), which the extraction records so that a server can build it again."""
    backbone = _build(name, options)
    kind, _, model = name.partition(":")
    recorded = {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}
    if model:
        recorded = {"model": model, **recorded}
    backbone.build_spec = {"name": kind, "options": recorded}  # type: ignore[attr-defined]
    return backbone


def _build(name: str, options: dict[str, Any]) -> Backbone:
    kind, _, model = name.partition(":")
    if kind == "frames":
        from linkedout.backbones.frames import FramesBackbone

        return FramesBackbone(**options)
    if kind == "text":
        from linkedout.backbones.text import TextBackbone

        return TextBackbone(**options)
    if kind == "caption":
        from linkedout.backbones.text import CaptionBackbone

        return CaptionBackbone(**options)
    if kind == "vllm":
        from linkedout.backbones.vllm import load_vllm_backbone

        if model:
            options = {"model": model, **options}
        return load_vllm_backbone(**options)
    if kind == "audio":
        from linkedout.backbones.audio import AudioBackbone

        if model:
            options = {"model": model, **options}
        return AudioBackbone(**options)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
