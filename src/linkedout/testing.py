"""Tiny, randomly initialised Video-LLM checkpoints written to a folder, for tests and demos offline.

No package ships weights of any vision-language model, so the Video-LLM code path is exercised with
models of ~0.1-0.2M parameters built from a config. Each folder holds what a real checkpoint holds:
``config.json`` + ``model.safetensors``, a ``tokenizer.json`` (a hand-built ``tokenizers`` WordLevel model
with the family's special tokens), ``preprocessor_config.json`` (the image processor's settings),
``chat_template.jinja`` and ``generation_config.json``; ``from_pretrained(folder)`` reloads it with
``HF_HUB_OFFLINE=1``. The transformers code paths (vision tower, placeholder merge, M-RoPE, KV cache,
``generate``) are the real ones; only the sizes are small.

>>> from linkedout.testing import write_tiny_checkpoint
>>> path = write_tiny_checkpoint("llava_onevision", "/tmp/tiny-llava-ov")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TINY_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm")

# Enough words for the default prompts to be mostly in-vocabulary; the rest maps to [UNK].
_WORD_TEXT = (
    "user assistant system User Assistant You you are a an the helpful language and vision . , : ? ! - "
    "describe Describe this video in detail what happens its topic style mood kind of viewer would enjoy it "
    "title transcript information description provided following series frames from frame Frame video "
    "cat dog cooking music game news sport travel funny tutorial 0 1 2 3 4 5 6 7 8 9 00 01 02 03 04 05 "
    "one two three four five six seven eight H MM SS"
)
_WORDS = tuple(_WORD_TEXT.split())

_LLAVA_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
_QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_IDEFICS_SPECIAL = (
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    "<video>",
)

# A decoder small enough for ~0.1M parameters but with GQA (4 heads, 2 KV heads) and 4 layers, so that
# layer selection, caching and grouped attention are all exercised.
_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def tiny_tokenizer(special: Sequence[str], eos: str, pad: str, bos: str | None = None) -> Any:
    """A WordLevel fast tokenizer: ``[UNK]``, the special tokens, then a few dozen words; whitespace and
    punctuation split words, and special tokens are matched before that."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in ("[UNK]", *special, *_WORDS):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token=eos, pad_token=pad, bos_token=bos
    )


def _vocab_size(tokenizer: Any) -> int:
    return (len(tokenizer) + 15) // 16 * 16  # a little headroom, like real (padded) embedding tables


def _text_config(tokenizer: Any, bos: str, eos: str, pad: str, **extra: Any) -> dict[str, Any]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        **_TEXT,
        "vocab_size": _vocab_size(tokenizer),
        "bos_token_id": ids(bos),
        "eos_token_id": ids(eos),
        "pad_token_id": ids(pad),
        **extra,
    }


def _llava_onevision(text_over: dict, vision_over: dict) -> tuple[Any, Any, Any, str]:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from linkedout.backbones.vllm.llava_onevision import FALLBACK_CHAT_TEMPLATE

    tok = tiny_tokenizer(_LLAVA_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,  # 4 x 4 patches -> pooled 2 x 2 = 4 tokens per frame
        "vision_use_head": False,
        **vision_over,
    }
    side = vision["image_size"]
    config = LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            **_text_config(tok, "<|endoftext|>", "<|im_end|>", "<|endoftext|>"),
            **text_over,
        },
        vision_config=vision,
        image_token_id=ids("<image>"),
        video_token_id=ids("<video>"),
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,
        image_grid_pinpoints=[[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]],
    )
    processor = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    return LlavaOnevisionForConditionalGeneration, config, (tok, processor), FALLBACK_CHAT_TEMPLATE


def _qwen2_vl(text_over: dict, vision_over: dict, v2_5: bool) -> tuple[Any, Any, Any, str]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from linkedout.backbones.vllm.qwen2_vl import FALLBACK_CHAT_TEMPLATE

    tok = tiny_tokenizer(_QWEN_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    text = {**_text_config(tok, "<|endoftext|>", "<|im_end|>", "<|endoftext|>"), **text_over}
    # M-RoPE: (temporal, height, width) sections must sum to head_dim / 2; Qwen's 128 -> 16, 24, 24
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    hw = 3 * half // 8
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 1e4,
        "mrope_section": [half - 2 * hw, hw, hw],
    }
    vision: dict[str, Any] = {
        "depth": 1,
        "num_heads": 2,
        "patch_size": 2,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    if v2_5:
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision |= {
            "hidden_size": 16,
            "intermediate_size": 32,
            "out_hidden_size": text["hidden_size"],
            "window_size": 8,  # 8 // merge 2 // patch 2 = 2 merged patches per window side
            "fullatt_block_indexes": [0],
            "tokens_per_second": 2,
        }
    else:
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision |= {"embed_dim": 16, "hidden_size": text["hidden_size"], "mlp_ratio": 2}
    vision |= vision_over
    config = Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    # factor = patch 2 * merge 2 = 4; at most 16 x 16 pixels per frame -> at most 4 x 4 merged tokens
    processor = Qwen2VLImageProcessorPil(
        patch_size=2,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 4 * 4, "longest_edge": 16 * 16},
    )
    return Model, config, (tok, processor), FALLBACK_CHAT_TEMPLATE


def _idefics3(text_over: dict, vision_over: dict, smolvlm: bool) -> tuple[Any, Any, Any, str]:
    from linkedout.backbones.vllm.idefics3 import FALLBACK_CHAT_TEMPLATE

    tok = tiny_tokenizer(
        _IDEFICS_SPECIAL, eos="<end_of_utterance>", pad="<|endoftext|>", bos="<|begin_of_text|>"
    )
    ids = tok.convert_tokens_to_ids
    text = {
        "model_type": "llama",
        **_text_config(tok, "<|begin_of_text|>", "<end_of_utterance>", "<|endoftext|>"),
        **text_over,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,  # 4 x 4 patches, pixel shuffle by 2 -> 4 tokens per frame
        **vision_over,
    }
    side = vision["image_size"]
    kwargs = {
        "text_config": text,
        "vision_config": vision,
        "image_token_id": ids("<image>"),
        "scale_factor": 2,
    }
    size = {"longest_edge": 4 * side}
    if smolvlm:
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        config = SmolVLMConfig(**kwargs)
        processor = SmolVLMImageProcessorPil(size=size, max_image_size={"longest_edge": side})
        return SmolVLMForConditionalGeneration, config, (tok, processor), FALLBACK_CHAT_TEMPLATE
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    config = Idefics3Config(**kwargs)
    processor = Idefics3ImageProcessorPil(size=size, max_image_size={"longest_edge": side})
    return Idefics3ForConditionalGeneration, config, (tok, processor), FALLBACK_CHAT_TEMPLATE


def build_tiny_model(
    family: str, seed: int = 0, text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None
) -> tuple[Any, Any, Any, str]:
    """``(model, tokenizer, image_processor, chat_template)`` for a family in `TINY_FAMILIES`.

    ``text`` / ``vision`` override entries of the decoder / vision tower configs (e.g. a mid-size model
    for a benchmark: ``text={"num_hidden_layers": 24, "hidden_size": 896, ...}``).
    """
    import torch

    t, v = dict(text or {}), dict(vision or {})
    builders = {
        "llava_onevision": lambda: _llava_onevision(t, v),
        "qwen2_vl": lambda: _qwen2_vl(t, v, v2_5=False),
        "qwen2_5_vl": lambda: _qwen2_vl(t, v, v2_5=True),
        "idefics3": lambda: _idefics3(t, v, smolvlm=False),
        "smolvlm": lambda: _idefics3(t, v, smolvlm=True),
    }
    if family not in builders:
        raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")
    model_cls, config, (tokenizer, processor), template = builders[family]()
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Random init leaves most logits near-tied; larger output weights make greedy decoding decisive, so
    # that fast-vs-reference tests compare the same generated tokens rather than argmax coin flips.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    eos = tokenizer.eos_token_id
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer, processor, template


def write_tiny_checkpoint(
    family: str,
    path: str | Path,
    seed: int = 0,
    text: dict[str, Any] | None = None,
    vision: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny random checkpoint of ``family`` to ``path`` (created) and return the path;
    ``text`` / ``vision``: config overrides, see `build_tiny_model`."""
    from transformers.utils import logging as hf_logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tokenizer, processor, template = build_tiny_model(family, seed, text, vision)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "writing shards" bar per 0.5 MB file is noise in test logs
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    # The processor-level template: what real multimodal checkpoints ship beside the tokenizer.
    (path / "chat_template.jinja").write_text(template, encoding="utf-8")
    (path / "linkedout_tiny.json").write_text(
        json.dumps({"family": family, "seed": seed, "text": text, "vision": vision}), encoding="utf-8"
    )
    return path


def write_tiny_checkpoints(root: str | Path, families: Sequence[str] = TINY_FAMILIES) -> dict[str, Path]:
    """One tiny checkpoint folder per family under ``root``."""
    root = Path(root)
    return {f: write_tiny_checkpoint(f, root / f) for f in families}


def random_frames(num_frames: int = 4, height: int = 24, width: int = 32, seed: int = 0) -> Any:
    """uint8 ``[T, H, W, 3]`` noise frames (no real clip needed to exercise the code path)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)


def write_tiny_sentence_encoder(
    path: str | Path, pooling: str | None = "cls", normalize: bool = True, seed: int = 0
) -> Path:
    """A tiny random BERT sentence encoder folder (the caption backbone's ``model``), for tests: the
    files of a sentence-transformers folder (``modules.json``, ``1_Pooling/config.json`` with
    ``pooling`` = cls | mean | max, a ``2_Normalize`` module when ``normalize``), or with
    ``pooling=None`` a plain transformers folder (model + tokenizer only). ~30k parameters."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = sorted({w.lower() for w in _WORD_TEXT.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=64).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(path)
    if pooling is None:
        return path
    modes = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}
    pool_dir = path / "1_Pooling"
    pool_dir.mkdir(exist_ok=True)
    pool = {f"pooling_mode_{m}": m == modes[pooling] for m in modes.values()}
    (pool_dir / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pool}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        (path / "2_Normalize").mkdir(exist_ok=True)
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (path / "modules.json").write_text(json.dumps(modules, indent=1))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 48, "do_lower_case": False})
    )
    return path
