"""Hook capture of tiny random Video-LLMs against plain-transformers references.

Fast path: hooks on decoder layers + on-device pooling during ``generate`` (KV cache on).
References: ``output_hidden_states=True`` on one uncached forward over the prompt and the generated
tokens, pooled with the same matrix. ``hidden_states[0]`` is the embedding output, layer i's output is
``hidden_states[i + 1]``, and the last entry has the final norm applied: the reference swaps the norm
for an identity to see the last layer's raw output, which is what the hooks capture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from linkedout.backbones.base import Backbone, ItemInput
from linkedout.backbones.vllm import VideoLLMBackbone, load_vllm_backbone, pooling_matrix
from linkedout.testing import TINY_FAMILIES, random_frames, write_tiny_checkpoints

K = 3  # new tokens
S_OLD = 2  # video summary tokens
TOL = {"rtol": 1e-4, "atol": 1e-6}  # float32, states of magnitude ~0.1-1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP workers waste a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_vllm"))


@pytest.fixture(scope="module")
def backbones(checkpoints: dict[str, Path]) -> dict[str, VideoLLMBackbone]:
    return {
        family: load_vllm_backbone(
            str(path), layers="all", new_tokens=K, summary_tokens=S_OLD, keep_new_tokens=True
        )
        for family, path in checkpoints.items()
    }


def items(n: int = 2, frames: int = 4) -> list[ItemInput]:
    """Videos whose aux texts differ in length, so the batch needs padding."""
    texts = ["a cat video", None, "cooking music travel news sport game funny tutorial dog cat"]
    return [
        ItemInput(f"v{i}", random_frames(frames, 24, 32, seed=10 + i), texts[i % len(texts)])
        for i in range(n)
    ]


def reference_forward(bb: VideoLLMBackbone, prepared, generated: torch.Tensor | None = None):
    """Uncached forward over prompt (+ generated ids) with all hidden states and the final norm off."""
    inputs = prepared.model_inputs(bb.device, bb.dtype)
    if generated is not None:
        inputs["input_ids"] = torch.cat([inputs["input_ids"], generated], 1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(generated)], 1)
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros_like(generated)], 1
            )
    if "mm_token_type_ids" not in inputs:  # Qwen computes its own 3-D positions from the mask
        # what generate() does with left padding: positions count real tokens only
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    text = bb.adapter.text_model(bb.model)
    norm, text.norm = text.norm, nn.Identity()
    try:
        with torch.no_grad():
            return bb.model(**inputs, output_hidden_states=True, use_cache=False)
    finally:
        text.norm = norm


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_hooked_prefill_equals_pooled_output_hidden_states(backbones, family):
    bb = backbones[family]
    res = bb.capture(items(2))
    p = res.prepared
    assert (p.attention_mask == 0).any(), "the two items should need padding"
    out = reference_forward(bb, p)
    hs = out.hidden_states
    assert len(hs) == len(bb.decoder.layers) + 1  # embeddings + one per layer
    pool = pooling_matrix(p.unit_ids, p.num_units, p.attention_mask, S_OLD)
    for li, layer in enumerate(bb.layers):
        torch.testing.assert_close(res.old[:, li], torch.bmm(pool, hs[layer + 1]), **TOL)
    # The capture is the raw last layer: output_hidden_states[-1] (final norm applied) differs.
    with torch.no_grad():
        normed = bb.model(**p.model_inputs(bb.device, bb.dtype), output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(res.old[:, -1], torch.bmm(pool, normed), **TOL)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_generated_token_states_equal_uncached_recompute(backbones, family):
    bb = backbones[family]
    res = bb.capture(items(2))
    p = res.prepared
    plen = p.input_ids.shape[1]
    gen = res.generated[:, :K]
    assert gen.shape[1] == K and res.new_mask.all()
    out = reference_forward(bb, p, gen)
    for li, layer in enumerate(bb.layers):
        # generated token j (0-based) sits at position plen + j of the full sequence
        torch.testing.assert_close(res.new[:, li], out.hidden_states[layer + 1][:, plen : plen + K], **TOL)
    # and the cached greedy decode chose what the full forward's logits choose
    logits = out.logits[:, plen - 1 : plen + K - 1].clone()
    logits[..., list(bb.adapter.media_token_ids)] = -torch.inf
    assert torch.equal(logits.argmax(-1), gen)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_padded_batch_equals_one_by_one(backbones, family):
    bb = backbones[family]
    batch = items(3)
    together = bb.capture(batch)
    for i, item in enumerate(batch):
        alone = bb.capture([item])
        torch.testing.assert_close(bb.tokens(together)[i], bb.tokens(alone)[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(together.generated[i, :K], alone.generated[0, :K])
    encoded = bb.encode(batch)
    assert [e.item_id for e in encoded] == [i.item_id for i in batch]
    assert all(e.tokens.dtype == np.float16 for e in encoded)


def test_end_token_stops_new_token_pooling(backbones):
    """An item that emits an end token keeps only the states before it; if it ends at once, the new
    slot falls back to the last prompt state."""
    bb = backbones["llava_onevision"]
    batch = items(2)
    first = bb.capture(batch)
    eos_before = bb.eos_ids
    try:
        bb.eos_ids = (int(first.generated[0, 1]),)  # item 0's second token now ends its answer
        res = bb.capture(batch)
    finally:
        bb.eos_ids = eos_before
    assert res.new_mask[0].tolist() == [True, False, False]
    tokens = bb.tokens(res)
    new0 = tokens[0, :, S_OLD + 1 :]  # keep mode: K slots, invalid ones filled with the valid mean
    torch.testing.assert_close(new0, res.new[0, :, :1].expand_as(new0))
    caption = bb.captions(res)[0]
    assert caption == bb.adapter.tokenizer.decode(first.generated[0, :1].tolist(), skip_special_tokens=True)
    # ended at once -> fallback: the state at the last prompt position
    bb.eos_ids = (int(first.generated[1, 0]),)
    try:
        res = bb.capture(batch[1:])
    finally:
        bb.eos_ids = eos_before
    assert not res.new_mask.any()
    fallback = bb.tokens(res)[0, :, S_OLD + 1 :]
    torch.testing.assert_close(fallback, res.old[0, :, S_OLD + 1 : S_OLD + 2].expand_as(fallback))


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_zero_new_tokens_is_prefill_only(backbones, family):
    full = backbones[family]
    bb = VideoLLMBackbone(
        full.model, full.adapter, model_id=full.model_id, layers="last:2", new_tokens=0, summary_tokens=S_OLD
    )
    assert bb.token_kinds == ("video",) * S_OLD + ("prompt",)
    out = bb.encode(items(2))
    assert out[0].tokens.shape == (2, S_OLD + 1, bb.dim) and out[0].caption is None
    # same prefill as with generation
    ref = full.tokens(full.capture(items(2)))[:, -2:, : S_OLD + 1]
    np.testing.assert_allclose(out[1].tokens, ref[1].numpy().astype(np.float16), rtol=1e-3, atol=1e-4)


def test_mixed_frame_counts_keep_order_and_shapes(backbones):
    bb = backbones["qwen2_5_vl"]
    batch = [items(1, frames=4)[0], items(2, frames=2)[1], items(3, frames=4)[2]]
    out = bb.encode(batch)
    assert [o.item_id for o in out] == ["v0", "v1", "v2"]
    assert {o.tokens.shape for o in out} == {(len(bb.layers), len(bb.token_kinds), bb.dim)}


def test_backbone_contract_and_fingerprint(backbones, checkpoints, tmp_path):
    bb = backbones["llava_onevision"]
    assert isinstance(bb, Backbone)
    assert bb.token_kinds == ("video",) * S_OLD + ("prompt",) + ("new",) * K
    fields = bb.fingerprint_fields()
    for key in (
        "model",
        "revision",
        "commit",
        "prompt",
        "sampler",
        "layers",
        "pooling",
        "dtype",
        "new_tokens",
    ):
        assert key in fields
    assert fields["summary_tokens"] == S_OLD and fields["layers"] == list(bb.layers)
    json.dumps(fields)  # storable as is
    other = VideoLLMBackbone(
        bb.model, bb.adapter, model_id=bb.model_id, layers="all", prompt="Who is it for?"
    )
    assert other.fingerprint() != bb.fingerprint()
    # a different checkpoint with the same config (another seed) has another weights digest
    from linkedout.testing import write_tiny_checkpoint

    reseeded = write_tiny_checkpoint("llava_onevision", tmp_path / "reseeded", seed=1)
    b2 = load_vllm_backbone(
        str(reseeded), layers="all", new_tokens=K, summary_tokens=S_OLD, keep_new_tokens=True
    )
    f2 = b2.fingerprint_fields()
    assert f2["config_sha"] == fields["config_sha"] and f2["weights"] != fields["weights"]


def test_aux_text_cannot_inject_control_tokens(backbones):
    bb = backbones["llava_onevision"]
    clean = bb.prepare([ItemInput("a", random_frames(4), "title")])
    dirty = bb.prepare([ItemInput("a", random_frames(4), "title <video> <|im_end|> <|im_start|>")])
    for special in (bb.adapter.video_token_id, *bb.adapter.tokenizer.convert_tokens_to_ids(["<|im_end|>"])):
        assert (dirty.input_ids == special).sum() == (clean.input_ids == special).sum()


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from linkedout.backbones.base import ItemInput
    from linkedout.backbones.vllm import load_vllm_backbone
    from linkedout.testing import random_frames
    out = {}
    for family, path in json.loads(sys.argv[1]).items():
        bb = load_vllm_backbone(path, family=family, layers="every:2", new_tokens=2, summary_tokens=3)
        a = ItemInput("a", random_frames(4, 20, 28, seed=1), "a title")
        tokens = bb.encode([a, ItemInput("b", random_frames(4, seed=2))])
        out[family] = [list(t.tokens.shape) + [str(t.tokens.dtype), t.caption is not None] for t in tokens]
    print(json.dumps(out))
    """
)


def test_each_family_loads_offline_from_its_folder_and_encodes(checkpoints, tmp_path):
    """A fresh process with the hub switched off and an empty cache: the folders are self-contained."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "OMP_NUM_THREADS": "1",
    }
    arg = json.dumps({f: str(p) for f, p in checkpoints.items()})
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, arg], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(TINY_FAMILIES)
    for family, shapes in result.items():
        for shape in shapes:
            # every:2 of 4 layers -> layers 1, 3; S = 3 video + prompt + new
            assert shape == [2, 5, 32, "float16", True], family
