"""Video-LLM backbones: frozen LLaVA-OneVision / Qwen2-VL / Qwen2.5-VL / Idefics3 / SmolVLM2 via transformers,
with hook capture of selected decoder layers during prefill and greedy generation (see docs/video-llm.md).

One file per model family (`llava_onevision`, `qwen2_vl`, `idefics3`), the shared input plumbing in
`common`, hooks and pooling in `capture`, the `Backbone` itself in `backbone`.
"""

from linkedout.backbones.vllm.backbone import (
    DEFAULT_AUX_TEMPLATE,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    CaptureResult,
    VideoLLMBackbone,
    load_vllm_backbone,
    resolve_family,
)
from linkedout.backbones.vllm.capture import pooling_matrix, resolve_layers

__all__ = [
    "DEFAULT_AUX_TEMPLATE",
    "DEFAULT_MODEL",
    "DEFAULT_PROMPT",
    "CaptureResult",
    "VideoLLMBackbone",
    "load_vllm_backbone",
    "pooling_matrix",
    "resolve_family",
    "resolve_layers",
]
