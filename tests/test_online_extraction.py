"""A video added to a running server (`POST /v1/items` with a video path) gets the same tokens as the
same video extracted offline by `linkedout extract`: both build the backbone's input through one
`Extractor`, and the server rebuilds that extractor from the spec the feature store recorded, checked
against the store's whole pipeline fingerprint. Real clips; the frames backbone and each tiny Video-LLM
family (random weights, real transformers code paths)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.serve.bundle import BundleError
from linkedout.serve.engine import Engine
from linkedout.store import FeatureStore
from linkedout.synthetic import synthetic_bundle, synthetic_model
from linkedout.testing import TINY_FAMILIES, write_tiny_checkpoint

runner = CliRunner()
pytestmark = pytest.mark.network  # real clips from the small tier


@pytest.fixture(scope="module")
def clips(samples_small) -> list:
    return samples_small.valid_clips()[:2]


def write_manifest(clips: list, folder: Path) -> Path:
    path = folder / "manifest.csv"
    rows = [f"c{i},{c.path},clip {c.name}" for i, c in enumerate(clips)]
    path.write_text("id,path,title\n" + "\n".join(rows) + "\n")
    return path


def extract_cli(manifest: Path, store: Path, *backbone_args: str) -> FeatureStore:
    args = ["extract", "--catalog", str(manifest), "--store", str(store), "--workers", "0", "-q", "--json"]
    result = runner.invoke(app, [*args, *backbone_args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["extracted"] == 2
    return FeatureStore.open(store)


def engine_over(store: FeatureStore) -> Engine:
    """A serving engine whose bundle was built from ``store``'s features (random LinkedOut weights)."""
    ids, tokens = store.read_all()
    kinds, names = store.token_kinds, store.layer_names
    model = synthetic_model(len(ids), tokens=torch.from_numpy(tokens), token_kinds=kinds, layer_names=names)
    bundle, _ = synthetic_bundle(model=model, store_meta=store.meta.to_json())
    return Engine(bundle)


def assert_online_equals_offline(
    engine: Engine, store: FeatureStore, clips: list, *, thumbnails: bool = True
) -> None:
    ids, stored = store.read_all()
    for row, clip in enumerate(clips):
        item_id = f"c{row}"
        online, thumbnail = engine.extract_video(f"new-{item_id}", str(clip.path), title=f"clip {clip.name}")
        offline = stored[ids.index(item_id)]
        assert online.shape == offline.shape and online.dtype == np.float16
        online32, offline32 = online.astype(np.float32), offline.astype(np.float32)
        np.testing.assert_allclose(online32, offline32, rtol=1e-3, atol=1e-3)
        if thumbnails:
            assert thumbnail.startswith(b"\xff\xd8")  # a JPEG
        else:
            assert thumbnail is None  # an audio extractor decodes no frames
        # and the item vector the server indexes is the one the bundle holds for that item
        vector, _ = engine.encode_tokens(online)
        torch.testing.assert_close(vector, engine.bundle.item_matrix[row], atol=1e-3, rtol=1e-3)


def test_frames_item_added_online_equals_its_offline_extraction(clips, tmp_path):
    store = extract_cli(write_manifest(clips, tmp_path), tmp_path / "store", "--backbone", "frames")
    assert store.meta.extractor["backbone"] == "frames"  # recorded at extraction time
    assert_online_equals_offline(engine_over(store), store, clips)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_video_llm_item_added_online_equals_its_offline_extraction(family, clips, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = write_tiny_checkpoint(family, tmp_path / family)
    store = extract_cli(
        write_manifest(clips, tmp_path),
        tmp_path / "store",
        *("--backbone", "vllm", "--model", str(checkpoint), "--layers", "every:1", "--new-tokens", "2"),
        *("--frames", "4", "--size", "64", "--batch-size", "1"),
    )
    spec = store.meta.extractor
    assert spec["backbone"] == "vllm" and spec["options"]["model"] == str(checkpoint)
    assert "device" not in spec["options"] and "batch_size" not in spec["options"]  # runtime, not recorded
    assert_online_equals_offline(engine_over(store), store, clips)


def test_server_refuses_an_extractor_that_does_not_match_the_features(clips, tmp_path):
    store = extract_cli(write_manifest(clips, tmp_path), tmp_path / "store", "--backbone", "frames")
    meta = store.meta.to_json()
    meta["extractor"]["options"]["time_groups"] = 2  # not what made the stored tokens
    ids, tokens = store.read_all()
    model = synthetic_model(len(ids), tokens=torch.from_numpy(tokens), token_kinds=store.token_kinds)
    engine = Engine(synthetic_bundle(model=model, store_meta=meta)[0])
    with pytest.raises(BundleError, match="fingerprint"):
        engine.extract_video("x", str(clips[0].path))

    meta["extractor"] = None  # a store written before specs were recorded
    engine = Engine(synthetic_bundle(model=model, store_meta=meta)[0])
    with pytest.raises(BundleError, match="LayerTokens"):
        engine.extract_video("x", str(clips[0].path))


def test_audio_item_added_online_equals_its_offline_extraction(samples_small, tmp_path):
    with_sound = [c for c in samples_small.valid_clips() if "bigbuckbunny" in c.name]
    assert with_sound, "the small tier's Big Buck Bunny clip (it has an audio track) is missing"
    manifest = write_manifest(with_sound, tmp_path)
    args = ["extract", "--catalog", str(manifest), "--store", str(tmp_path / "store"), "--workers", "0"]
    result = runner.invoke(app, [*args, "-q", "--backbone", "audio"])
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(tmp_path / "store")
    assert len(store) == 1 and store.meta.extractor["sampler"]["kind"] == "audio"
    assert_online_equals_offline(engine_over(store), store, with_sound, thumbnails=False)
