"""`VideoLLMBackbone`: a frozen Video-LLM as a `Backbone` (frames + prompt + aux text -> ``[L, S, D]``).

One ``encode`` call, per group of items with the same frame count:

1. the family adapter builds pixels and chat-formatted, left-padded ids (`common`, family files);
2. hooks on the selected decoder layers (`capture.LayerCapture`) pool the prefill on the device into
   ``S_old`` time-group tokens + 1 prompt token (+ the last prompt state, kept only as a fallback);
3. greedy ``generate`` of ``K + 1`` tokens with the KV cache: its decode steps run the decoder on generated
   tokens 1..K, so the same hooks see each of the K new tokens' states (token K + 1 is never used);
4. new tokens before an end token are averaged (or kept), everything goes to the CPU as float16.

Token layout of one item, S = S_old + 1 + (0 if K == 0, 1 if averaged, K if kept)::

    kinds:  video ... video | prompt | new (... new)
    rows:   S_old time groups of the media tokens | text after the media | generated tokens

The hooked states are each decoder layer's output (the residual stream): for the last layer that is
*before* the model's final norm, unlike ``output_hidden_states[-1]``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from linkedout.backbones.base import ItemInput, ItemTokens, fingerprint
from linkedout.backbones.vllm.capture import (
    LayerCapture,
    LayerSpec,
    new_token_mask,
    pooling_matrix,
    resolve_layers,
    summarise_new,
    to_cpu_fp16,
)
from linkedout.backbones.vllm.common import (
    FamilyAdapter,
    PreparedBatch,
    compose_user_text,
    pad_token_id,
    read_checkpoint_file,
    short_sha,
)
from linkedout.backbones.vllm.idefics3 import Idefics3Adapter
from linkedout.backbones.vllm.llava_onevision import LlavaOnevisionAdapter
from linkedout.backbones.vllm.qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[type[FamilyAdapter], ...] = (LlavaOnevisionAdapter, Qwen2VLAdapter, Idefics3Adapter)
FAMILY_ALIASES = {
    "llava_onevision": "llava_onevision",
    "llava-onevision": "llava_onevision",
    "llava-ov": "llava_onevision",
    "qwen2_vl": "qwen2_vl",
    "qwen2-vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen2.5-vl": "qwen2_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "smolvlm2": "idefics3",
}
DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_PROMPT = (
    "Describe this video: what happens, its topic, style and mood, and what kind of viewer would enjoy it."
)
DEFAULT_AUX_TEMPLATE = "Video information (title, description or transcript): {text}\n"


@dataclass
class CaptureResult:
    """Everything one batch produced, still on the model's device (tests compare these to references)."""

    prepared: PreparedBatch
    old: torch.Tensor  # [B, L, S_old + 2, D]: time groups, prompt mean, last prompt state
    new: torch.Tensor  # [B, L, K, D] generated-token states (garbage where ~new_mask)
    new_mask: torch.Tensor  # [B, K]
    generated: torch.Tensor  # [B, n] ids after the prompt (n <= K + 1)


class VideoLLMBackbone:
    """A loaded Video-LLM with hooks-based capture. Build it with `load_vllm_backbone`."""

    name = "vllm"
    build_spec: dict[str, Any] | None = None  # set by get_backbone (see backbones/__init__.py)

    def __init__(
        self,
        model: nn.Module,
        adapter: FamilyAdapter,
        *,
        model_id: str,
        layers: LayerSpec = "every:4",
        new_tokens: int = 8,
        prompt: str = DEFAULT_PROMPT,
        summary_tokens: int = 4,
        keep_new_tokens: bool = False,
        aux_template: str = DEFAULT_AUX_TEMPLATE,
        max_aux_chars: int = 2000,
        sampler: Mapping[str, Any] | None = None,
        revision: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if new_tokens < 0 or summary_tokens < 0:
            raise ValueError("new_tokens and summary_tokens must be >= 0")
        self.model = model.eval().requires_grad_(False)
        self.adapter = adapter
        self.model_id = model_id
        self.revision = revision
        self.decoder = adapter.text_model(model)
        self.layers = resolve_layers(layers, len(self.decoder.layers))
        self.new_tokens = int(new_tokens)
        self.summary_tokens = int(summary_tokens)
        self.keep_new_tokens = keep_new_tokens
        self.prompt = prompt
        self.aux_template = aux_template
        self.max_aux_chars = max_aux_chars
        self.sampler = dict(sampler or {})
        self.batch_size = batch_size  # videos per forward; None = as many as encode() is given
        self.dim = int(model.config.get_text_config().hidden_size)
        n_new = 0 if self.new_tokens == 0 else (self.new_tokens if keep_new_tokens else 1)
        self.token_kinds = ("video",) * self.summary_tokens + ("prompt",) + ("new",) * n_new
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        tokenizer = adapter.tokenizer
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = tuple(
            dict.fromkeys([*eos, *([] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id])])
        )
        self.pad_id = pad_token_id(tokenizer, model.config)

    # ------------------------------------------------------------------------------ identity
    @functools.cached_property
    def checkpoint_identity(self) -> dict[str, Any]:
        """Which weights these are; computed once (it reads files, for a local folder ~1 MB per shard)."""
        config_text = read_checkpoint_file(self.model_id, "config.json", self.revision) or ""
        return {
            "model": self.model_id,
            "revision": self.revision,
            "commit": model_commit(self.model_id, self.model.config),
            "config_sha": short_sha(config_text),
            "weights": local_weights_digest(self.model_id),
        }

    def fingerprint_fields(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "family": self.adapter.family,
            "model_type": self.model.config.model_type,
            **self.checkpoint_identity,
            "prompt": self.prompt,
            "aux_template": self.aux_template,
            "max_aux_chars": self.max_aux_chars,
            "sampler": self.sampler,
            "inputs": self.adapter.settings(),
            "layers": list(self.layers),
            "layer_output": "decoder layer output (residual stream, pre final norm)",
            "pooling": {
                "video": f"mean over {self.summary_tokens} contiguous time groups",
                "prompt": "mean of text tokens after the first media token",
                "new": "keep" if self.keep_new_tokens else "mean of tokens before end",
            },
            "summary_tokens": self.summary_tokens,
            "new_tokens": self.new_tokens,
            "decoding": "greedy",
            "token_kinds": list(self.token_kinds),
            "dtype": str(self.dtype).removeprefix("torch."),
            "stored_dtype": "float16",
        }

    def fingerprint(self) -> str:
        return fingerprint(self.fingerprint_fields())

    # ------------------------------------------------------------------------------ encode
    def user_text(self, item: ItemInput) -> str:
        return compose_user_text(self.prompt, item.text, self.aux_template, self.max_aux_chars)

    def prepare(self, items: Sequence[ItemInput]) -> PreparedBatch:
        for item in items:
            if item.frames is None or len(item.frames) == 0:
                raise ValueError(f"item {item.item_id!r} has no frames; a Video-LLM backbone needs frames")
        if len({item.frames.shape[0] for item in items}) != 1:
            raise ValueError("prepare() needs equal frame counts; encode() groups items for you")
        return self.adapter.prepare(items, [self.user_text(i) for i in items])

    @torch.no_grad()
    def capture(self, items: Sequence[ItemInput]) -> CaptureResult:
        """Run prefill + K greedy steps with hooks; items must share their frame count."""
        prepared = self.prepare(items)
        inputs = prepared.model_inputs(self.device, self.dtype)
        pool = pooling_matrix(
            prepared.unit_ids, prepared.num_units, prepared.attention_mask, self.summary_tokens
        ).to(self.device)
        k = self.new_tokens
        with LayerCapture(self.decoder.layers, self.layers, pool) as cap:
            out = self.model.generate(**inputs, generation_config=self.generation_config())
        generated = out[:, prepared.input_ids.shape[1] :]
        mask = new_token_mask(generated, k, self.eos_ids)
        return CaptureResult(prepared, cap.old_tokens(), cap.new_tokens(k), mask, generated)

    def generation_config(self) -> Any:
        from transformers import GenerationConfig

        # Everything that could change greedy decoding is explicit, so a checkpoint's sampling defaults
        # (temperature, repetition_penalty...) do not leak in. K + 1 tokens: the decoder runs on tokens
        # 1..K only as the input of the following step.
        return GenerationConfig(
            max_new_tokens=self.new_tokens + 1,
            min_new_tokens=0,
            do_sample=False,
            num_beams=1,
            temperature=1.0,  # neutral values, so that a checkpoint's sampling settings are not merged
            top_k=50,  # in (they would be ignored, with a warning on every call)
            top_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=self.new_tokens > 0,
            eos_token_id=list(self.eos_ids),
            pad_token_id=self.pad_id,
            # A generated media placeholder would be read as a video slot by a later forward.
            suppress_tokens=list(self.adapter.media_token_ids),
        )

    def tokens(self, result: CaptureResult) -> torch.Tensor:
        """``[B, L, S, D]`` float32 on the device, laid out as ``token_kinds``."""
        s = self.summary_tokens
        old = result.old[:, :, : s + 1]
        if self.new_tokens == 0:
            return old
        new = summarise_new(result.new, result.new_mask, result.old[:, :, s + 1], self.keep_new_tokens)
        return torch.cat([old, new], dim=2)

    def captions(self, result: CaptureResult) -> list[str | None]:
        if self.new_tokens == 0:
            return [None] * result.generated.shape[0]
        tok = self.adapter.tokenizer
        out: list[str | None] = []
        for ids, valid in zip(result.generated, result.new_mask, strict=True):
            n = int(valid.sum())
            out.append(tok.decode(ids[:n].tolist(), skip_special_tokens=True).strip())
        return out

    @torch.no_grad()
    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        out: list[ItemTokens | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            if item.frames is None:
                raise ValueError(f"item {item.item_id!r} has no frames; a Video-LLM backbone needs frames")
            groups.setdefault(int(item.frames.shape[0]), []).append(i)
        step = self.batch_size or len(batch)
        for group in groups.values():  # the model's video input needs one frame count per forward
            for start in range(0, len(group), step):
                idx = group[start : start + step]
                result = self.capture([batch[i] for i in idx])
                tokens = to_cpu_fp16(self.tokens(result)).numpy()
                for j, (i, caption) in enumerate(zip(idx, self.captions(result), strict=True)):
                    out[i] = ItemTokens(item_id=batch[i].item_id, tokens=tokens[j], caption=caption)
        return [o for o in out if o is not None]


# ---------------------------------------------------------------------------------- loading


def resolve_family(model_type: str, family: str | None = None) -> type[FamilyAdapter]:
    """The adapter for a checkpoint's ``config.model_type`` (checked against ``family`` if given)."""
    by_type = {t: a for a in ADAPTERS for t in a.model_types}
    if model_type not in by_type:
        raise ValueError(f"no Video-LLM adapter for model_type {model_type!r}; supported: {sorted(by_type)}")
    adapter = by_type[model_type]
    if family is not None:
        wanted = FAMILY_ALIASES.get(family.lower())
        if wanted is None:
            raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILY_ALIASES)}")
        if wanted != adapter.family:
            raise ValueError(f"family {family!r} does not match the checkpoint's model_type {model_type!r}")
    return adapter


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``"auto"``: float32 on the CPU (half precision matmuls are slow or missing there), bfloat16 on a GPU
    that supports it, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_cpu = not torch.cuda.is_available() if device == "auto" else torch.device(device).type == "cpu"
        if on_cpu:
            return torch.float32
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
        )
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def model_commit(model_id: str, config: Any) -> str | None:
    """The hub commit of the loaded files: transformers records it for hub downloads; a local folder
    inside the hub cache (``.../snapshots/<sha>``) carries it in its path."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return commit
    m = re.search(r"snapshots[/\\]([0-9a-f]{40})", os.path.abspath(model_id))
    return m.group(1) if m else None


def local_weights_digest(model_id: str) -> str | None:
    """For a local folder: sha256 over each weight file's name, size and last MiB, cheap even for 15 GB
    of shards and different for any retrained or re-initialised copy. None for hub ids (the commit
    says it all)."""
    if not os.path.isdir(model_id):
        return None
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_id)):
        if not name.endswith((".safetensors", ".bin")):
            continue
        path = os.path.join(model_id, name)
        size = os.path.getsize(path)
        h.update(f"{name}:{size}".encode())
        with open(path, "rb") as f:
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()[:16]


def load_vllm_backbone(
    model: str = DEFAULT_MODEL,
    family: str | None = None,
    layers: LayerSpec = "every:4",
    new_tokens: int = 8,
    prompt: str = DEFAULT_PROMPT,
    summary_tokens: int = 4,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    revision: str | None = None,
    keep_new_tokens: bool = False,
    aux_template: str = DEFAULT_AUX_TEMPLATE,
    max_aux_chars: int = 2000,
    sampler: Mapping[str, Any] | None = None,
    attn_implementation: str | None = None,
    batch_size: int | None = None,
    **family_options: Any,
) -> VideoLLMBackbone:
    """Load a Video-LLM from a hub id or a local folder and wrap it as a `Backbone`.

    ``family`` is inferred from ``config.model_type`` (llava_onevision, qwen2_vl, qwen2_5_vl, idefics3,
    smolvlm) and only checked when given. ``layers``: see `capture.resolve_layers` (default every 4th
    decoder layer, counted back from the last). ``new_tokens`` = K greedy tokens (0 = prefill only),
    ``summary_tokens`` = S_old time groups. ``sampler``: the frame sampler's settings, recorded in the
    fingerprint. ``device``: "cpu", "cuda", "cuda:1", or "auto" (shard over all GPUs; needs accelerate).
    ``batch_size`` caps videos per forward. ``family_options`` go to the adapter (e.g. ``max_pixels=``
    for Qwen2-VL).
    """
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model, revision=revision)
    adapter_cls = resolve_family(config.model_type, family)
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    adapter = adapter_cls(model, config, tokenizer, revision, **family_options)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    # With accelerate, weights go straight to the GPU(s) ("auto" shards a model over several);
    # without it transformers refuses any device_map, so load on the CPU and move.
    direct = device == "auto" or (device != "cpu" and importlib.util.find_spec("accelerate") is not None)
    if direct:
        kwargs["device_map"] = device
    net = adapter_cls.model_class(config).from_pretrained(model, **kwargs)
    if not direct:
        net.to(device)
    return VideoLLMBackbone(
        net,
        adapter,
        model_id=model,
        layers=layers,
        new_tokens=new_tokens,
        prompt=prompt,
        summary_tokens=summary_tokens,
        keep_new_tokens=keep_new_tokens,
        aux_template=aux_template,
        max_aux_chars=max_aux_chars,
        sampler=sampler,
        revision=revision,
        batch_size=batch_size,
    )
