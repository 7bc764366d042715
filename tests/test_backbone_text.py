"""`text` backbone (all-MiniLM-L6-v2): contract shape, determinism, batching, pooling vs references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkedout.backbones import Backbone, ItemInput, get_backbone
from linkedout.backbones.text import TextBackbone

TEXTS = [
    "a cat playing the piano",
    "cooking pasta with tomato sauce in a small kitchen: an easy weeknight recipe, step by step",
    "",
    "goal! last-minute header in the derby",
]


@pytest.fixture(scope="module")
def backbone() -> TextBackbone:
    bb = get_backbone("text", prompt="What is this video about?")
    assert isinstance(bb, TextBackbone)
    return bb


def test_tokens_follow_the_backbone_contract(backbone: TextBackbone) -> None:
    assert isinstance(backbone, Backbone)
    out = backbone.encode([ItemInput(str(i), text=t) for i, t in enumerate(TEXTS)])
    assert [o.item_id for o in out] == ["0", "1", "2", "3"]
    for o in out:
        assert o.tokens.shape == (6, 2, 384) and o.tokens.dtype == np.float16
    assert backbone.token_kinds == ("text", "prompt")
    # Empty item text: zero "text" token, but a prompt token that still carries the prompt.
    assert np.all(out[2].tokens[:, 0] == 0) and np.any(out[2].tokens[:, 1] != 0)


def test_encoding_is_deterministic_and_a_batch_equals_items_one_by_one(backbone: TextBackbone) -> None:
    batched = backbone.encode_texts(TEXTS)
    np.testing.assert_array_equal(batched, backbone.encode_texts(TEXTS))
    singles = np.concatenate([backbone.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-4)  # padding must not leak in


def test_text_and_prompt_tokens_are_means_over_their_own_spans(backbone: TextBackbone) -> None:
    # Reference: no padding, spans located by hand from the two separately tokenised parts.
    text = TEXTS[1]
    tok = backbone.tokenizer
    n_prompt = len(tok(backbone.prompt, add_special_tokens=False)["input_ids"])
    n_text = len(tok(text, add_special_tokens=False)["input_ids"])
    enc = tok(backbone.prompt, text, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.model(**enc, output_hidden_states=True).hidden_states
    got = backbone.encode_texts([text])[0]
    for pos, layer in enumerate(backbone.layers):
        h = hidden[layer][0]
        prompt_span = h[1 : 1 + n_prompt]  # after [CLS]
        text_span = h[2 + n_prompt : 2 + n_prompt + n_text]  # after the first [SEP]
        np.testing.assert_allclose(got[pos, 0], text_span.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[pos, 1], prompt_span.mean(0), rtol=1e-5, atol=1e-5)


def test_sentence_vector_is_the_standard_mean_pooled_normalised_embedding(backbone: TextBackbone) -> None:
    got = backbone.sentence_vector(TEXTS)
    assert got.shape == (4, 384) and got.dtype == np.float32
    # sentence-transformers' recipe for this model: mean over all tokens incl. [CLS]/[SEP], then L2.
    for i, text in enumerate(TEXTS):
        enc = backbone.tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            last = backbone.model(**enc).last_hidden_state[0]
        ref = torch.nn.functional.normalize(last.mean(0), dim=0)
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-5)


def test_sentence_vector_matches_sentence_transformers_when_installed(backbone: TextBackbone) -> None:
    st = pytest.importorskip("sentence_transformers")
    from linkedout.backbones.text import model_dir

    model = st.SentenceTransformer(str(model_dir()), device="cpu")
    np.testing.assert_allclose(backbone.sentence_vector(TEXTS), model.encode(TEXTS), rtol=1e-4, atol=1e-5)


def test_fingerprint_covers_prompt_layers_and_weights(backbone: TextBackbone) -> None:
    fields = backbone.fingerprint_fields()
    assert fields["prompt"] == "What is this video about?" and fields["layers"] == [1, 2, 3, 4, 5, 6]
    assert len(fields["weights_sha256"]) == 64
    backbone_fp = backbone.fingerprint()
    backbone.prompt = "Describe the video."  # same model object, other prompt -> other tokens, other store
    try:
        assert backbone.fingerprint() != backbone_fp
    finally:
        backbone.prompt = "What is this video about?"
