"""`frames` backbone (EfficientNet-Lite0): contract, determinism, batching, hooks vs a manual forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkedout.backbones import Backbone, ItemInput, get_backbone
from linkedout.backbones.frames import (
    DEFAULT_LAYERS,
    HEAD,
    FramesBackbone,
    preprocess_frames,
    temporal_pool,
    time_group_ranges,
)


@pytest.fixture(scope="module")
def backbone() -> FramesBackbone:
    bb = get_backbone("frames", sampler={"num_frames": 3, "strategy": "uniform"})
    assert isinstance(bb, FramesBackbone)
    return bb


def clip(seed: int, frames: int = 2, h: int = 72, w: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


def test_tokens_follow_the_backbone_contract(backbone: FramesBackbone) -> None:
    assert isinstance(backbone, Backbone)
    out = backbone.encode([ItemInput("a", clip(0)), ItemInput("b", clip(1, frames=1, h=120, w=64))])
    assert [o.item_id for o in out] == ["a", "b"]
    shape = (len(DEFAULT_LAYERS), len(backbone.token_kinds), backbone.dim)
    assert shape == (8, 5, 1280)
    for o in out:
        assert o.tokens.shape == shape and o.tokens.dtype == np.float16 and o.caption is None
        assert np.isfinite(o.tokens).all()
    # Narrow layers are zero-padded to D: block0 has 16 channels.
    assert np.all(out[0].tokens[0, :, 16:] == 0) and np.any(out[0].tokens[0, :, :16] != 0)


def test_encoding_is_deterministic_and_a_batch_equals_items_one_by_one(backbone: FramesBackbone) -> None:
    items = [ItemInput("a", clip(0)), ItemInput("b", clip(1, frames=1)), ItemInput("c", clip(2, frames=3))]
    first = backbone.encode(items)
    second = backbone.encode(items)
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x.tokens, y.tokens)
    singles = [backbone.encode([item])[0] for item in items]
    for batched, single in zip(first, singles, strict=True):
        np.testing.assert_allclose(batched.tokens.astype(np.float32), single.tokens, rtol=1e-2, atol=1e-2)


def test_hooked_block_means_equal_a_manual_forward(backbone: FramesBackbone) -> None:
    x = preprocess_frames(clip(3))
    fast = backbone.frame_features(x)
    m = backbone.model
    reference = []
    with torch.no_grad():
        h = m._swish(m._bn0(m._conv_stem(x)))
        for i, block in enumerate(m._blocks):
            h = block(h)
            if i in backbone.layers:
                reference.append(h.mean(dim=(2, 3)))
        head = m._swish(m._bn1(m._conv_head(h)))
        reference.append(head.mean(dim=(2, 3)))
        # the head is also what the library's own classifier pools
        logits = m._fc(head.mean(dim=(2, 3)))
        np.testing.assert_allclose(logits, m(x), rtol=1e-4, atol=1e-4)
    assert backbone.layers[-1] == HEAD and len(fast) == len(reference)
    for f, r in zip(fast, reference, strict=True):
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-5)


def test_temporal_pooling_is_group_means_then_max() -> None:
    feats = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3) ** 1.5
    tok = temporal_pool(feats, groups=4, with_max=True)
    expected = [feats[2 * g : 2 * g + 2].mean(0) for g in range(4)] + [feats.max(0).values]
    np.testing.assert_allclose(tok, torch.stack(expected))
    # Fewer frames than groups: every group still gets a frame, in time order.
    assert time_group_ranges(2, 4) == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert time_group_ranges(1, 4) == [(0, 1)] * 4
    assert time_group_ranges(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]


def test_preprocessing_resizes_short_side_then_centre_crops() -> None:
    frames = np.full((2, 100, 300, 3), 255, dtype=np.uint8)
    frames[:, :, :150] = 0  # left half black: the centre crop straddles the edge
    x = preprocess_frames(frames)
    assert x.shape == (2, 3, 224, 224)
    assert x.min() == pytest.approx(-127 / 128) and x.max() == pytest.approx(1.0)
    assert x[0, 0, 112, 100] < 0 < x[0, 0, 112, 124]


def test_a_smaller_width_projects_wide_layers_and_pads_narrow_ones() -> None:
    bb = FramesBackbone(layers=(0, 15, HEAD), time_groups=2, temporal_max=False, dim=256)
    assert bb.token_kinds == ("video", "video") and bb.layer_names == ("block0", "block15", "head")
    out = bb.encode([ItemInput("a", clip(0, frames=2))])[0].tokens
    assert out.shape == (3, 2, 256)
    assert np.all(out[0, :, 16:] == 0)  # 16 -> 256: padded
    assert np.any(out[1, :, 200:] != 0) and np.any(out[2, :, 200:] != 0)  # 320, 1280 -> 256: projected
    assert bb.fingerprint() != FramesBackbone().fingerprint()


def test_fingerprint_covers_weights_layers_pooling_and_sampler(backbone: FramesBackbone) -> None:
    fields = backbone.fingerprint_fields()
    assert len(fields["weights_sha256"]) == 64
    assert fields["layers"] == list(DEFAULT_LAYERS) and fields["sampler"] == {
        "num_frames": 3,
        "strategy": "uniform",
    }
    assert fields["temporal_pool"] == {"contiguous_group_means": 4, "max_over_all": True}
    other = FramesBackbone(sampler={"num_frames": 8, "strategy": "uniform"})
    assert other.fingerprint() != backbone.fingerprint()


def test_unknown_backbone_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="frames, text, caption, vllm"):
        get_backbone("clip")
