"""Inputs of the Video-LLM backbones: layer specs, pooling weights, end-token masks, and frame
preprocessing built by hand (no torchvision) against transformers' PIL image processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from linkedout.backbones.vllm import resolve_layers
from linkedout.backbones.vllm.capture import new_token_mask, pooling_matrix, summarise_new
from linkedout.backbones.vllm.idefics3 import number_words
from linkedout.testing import random_frames, write_tiny_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP workers waste a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny_vllm_inputs")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = write_tiny_checkpoint(family, root / family)
        return cache[family]

    return get


def adapter(path: Path):
    from transformers import AutoConfig, AutoTokenizer

    from linkedout.backbones.vllm.backbone import resolve_family

    config = AutoConfig.from_pretrained(path)
    return resolve_family(config.model_type)(str(path), config, AutoTokenizer.from_pretrained(path))


# ------------------------------------------------------------------------------------ layer specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", tuple(range(24))),
        ("last:3", (21, 22, 23)),
        ("every:4", (3, 7, 11, 15, 19, 23)),  # counted back from the last layer, which is always in
        ("every:5", (3, 8, 13, 18, 23)),
        ([-1, 0, 5, 5], (0, 5, 23)),
        ("0, 12,-1", (0, 12, 23)),
        (7, (7,)),
    ],
)
def test_layer_specs(spec, expected):
    assert resolve_layers(spec, 24) == expected


@pytest.mark.parametrize("spec", [[24], [-25], "last:0", "every:0", []])
def test_bad_layer_specs_raise(spec):
    with pytest.raises(ValueError):
        resolve_layers(spec, 24)


# ------------------------------------------------------------------------------------ pooling


def test_pooling_matrix_groups_time_and_ignores_padding_and_prefix():
    # item 0: pad pad | sys sys | f0 f0 f1 f1 f2 f2 | q q   item 1: no padding, 2 frames
    unit_ids = torch.tensor(
        [[-1, -1, -1, -1, 0, 0, 1, 1, 2, 2, -1, -1], [-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1]]
    )
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 12])
    w = pooling_matrix(unit_ids, [3, 2], mask, summary_tokens=3)
    assert w.shape == (2, 5, 12)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))
    # 3 frames into 3 groups: one frame each; prompt = the 2 tokens after the video only
    assert w[0, 0].nonzero().flatten().tolist() == [4, 5]
    assert w[0, 2].nonzero().flatten().tolist() == [8, 9]
    assert w[0, 3].nonzero().flatten().tolist() == [10, 11]
    assert (w[0, :, :2] == 0).all() and (w[0, :, 2:4] == 0).all()  # padding and pre-video prefix
    # 2 frames into 3 groups: no empty group, a frame is shared by neighbouring groups
    assert w[1, 0].nonzero().flatten().tolist() == [3, 4, 5]
    assert w[1, 2].nonzero().flatten().tolist() == [6, 7, 8]
    assert w[1, 4].nonzero().flatten().tolist() == [11]  # last position one-hot


def test_new_token_mask_stops_at_first_end_token():
    gen = torch.tensor([[5, 6, 9, 7], [9, 5, 5, 5]])
    mask = new_token_mask(gen, 3, eos_ids=[9])
    assert mask.tolist() == [[True, True, False], [False, False, False]]
    short = new_token_mask(torch.tensor([[5]]), 3, eos_ids=[9])  # generate stopped early
    assert short.tolist() == [[True, False, False]]


def test_summarise_new_means_valid_tokens_and_falls_back():
    states = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    fallback = torch.full((2, 1, 2), -1.0)
    mean = summarise_new(states, mask, fallback, keep=False)
    torch.testing.assert_close(mean[0, 0, 0], states[0, 0, :2].mean(0))
    torch.testing.assert_close(mean[1, 0, 0], torch.tensor([-1.0, -1.0]))
    kept = summarise_new(states, mask, fallback, keep=True)
    assert kept.shape == (2, 1, 3, 2)
    torch.testing.assert_close(kept[0, 0, 2], mean[0, 0, 0])


def test_number_words():
    assert [number_words(n) for n in (0, 8, 21, 40, 64, 100, 128)] == [
        "zero",
        "eight",
        "twenty-one",
        "forty",
        "sixty-four",
        "one hundred",
        "one hundred and twenty-eight",
    ]


# ------------------------------------------------------------------------------------ pixels


def test_llava_onevision_pixels_match_the_image_processor(checkpoint):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    path = checkpoint("llava_onevision")
    frames = random_frames(2, 24, 32, seed=3)
    mine = adapter(path).pixels(frames)
    ref = LlavaOnevisionImageProcessorPil.from_pretrained(path)(images=[frames[1]], return_tensors="pt")
    base = ref["pixel_values"][0, 0]  # patch 0 = the whole frame resized to the tower's square
    assert mine.shape == (2, 3, 16, 16)
    # PIL vs torch antialiased bicubic: at most one grey level apart (std 0.5)
    assert (mine[1] - base).abs().max() <= 1.01 / 255 / 0.5


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_patches_match_the_image_processor_layout(checkpoint, family):
    """A still image is a 2-frame video of one frame repeated: same grid, same patch order."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = checkpoint(family)
    frame = random_frames(1, 24, 32, seed=4)
    flat, grid = adapter(path).pixels(np.repeat(frame, 2, axis=0))
    ref = Qwen2VLImageProcessorPil.from_pretrained(path)(images=[frame[0]], return_tensors="pt")
    assert list(grid) == ref["image_grid_thw"][0].tolist()
    assert flat.shape == ref["pixel_values"].shape
    assert (flat - ref["pixel_values"]).abs().max() <= 1.01 / 255 / 0.26
    # one frame alone is padded to the temporal patch by repetition, like the video processor
    single, grid1 = adapter(path).pixels(frame)
    assert grid1 == grid and torch.equal(single, flat)


@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_idefics3_frames_match_the_image_processor_without_splitting(checkpoint, family):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    path = checkpoint(family)
    frames = random_frames(3, 24, 32, seed=5)
    mine = adapter(path).pixels(frames)
    proc = Idefics3ImageProcessorPil.from_pretrained(path)
    ref = proc(images=[list(frames)], do_image_splitting=False, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-6)  # both Lanczos in PIL


def test_text_only_chat_template_is_skipped_for_one_that_keeps_the_video(checkpoint, tmp_path):
    import shutil

    from linkedout.backbones.vllm.llava_onevision import FALLBACK_CHAT_TEMPLATE

    path = tmp_path / "text_only_template"
    shutil.copytree(checkpoint("llava_onevision"), path)
    (path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    a = adapter(path)
    assert a.chat_template == FALLBACK_CHAT_TEMPLATE
    assert (
        adapter(checkpoint("llava_onevision")).chat_template
        == (checkpoint("llava_onevision") / "chat_template.jinja").read_text()
    )


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_prompt_ids_equal_tokenising_the_expanded_prompt(checkpoint, family):
    """What the processor does: render the chat with the text, repeat the placeholder N times,
    tokenise the whole string."""
    from linkedout.backbones.base import ItemInput
    from linkedout.backbones.vllm.common import USER_TEXT_MARK, VIDEO_CONTENT, render_chat

    a = adapter(checkpoint(family))
    text = "Title: a cat video\n\nDescribe this video."
    prepared = a.prepare([ItemInput("v", random_frames(4, 24, 32))], [text])
    n = int((prepared.unit_ids >= 0).sum())
    rendered = render_chat(a.tokenizer, a.chat_template, VIDEO_CONTENT).replace(USER_TEXT_MARK, text)
    expanded = rendered.replace(a.video_token, a.video_token * n)
    assert prepared.input_ids[0].tolist() == a.tokenizer(expanded, add_special_tokens=False)["input_ids"]
