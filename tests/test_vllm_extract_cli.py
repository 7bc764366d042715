"""`linkedout extract --backbone vllm` end to end on each Video-LLM family's tiny random checkpoint:
real clips are decoded, sent through the family's adapter with hooks, and the pooled tokens plus the
generated caption land in the feature store."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.store import FeatureStore
from linkedout.testing import TINY_FAMILIES, write_tiny_checkpoint

runner = CliRunner()
pytestmark = pytest.mark.network  # real clips from the small tier


@pytest.fixture(scope="module")
def two_clip_manifest(samples_small, tmp_path_factory) -> Path:
    clips = samples_small.valid_clips()[:2]
    path = tmp_path_factory.mktemp("catalog") / "manifest.csv"
    rows = [f"{c.name.replace('/', '_')},{c.path},{c.name}" for c in clips]
    path.write_text("id,path,title\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_extract_cli_runs_end_to_end_on_each_family(family, two_clip_manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub lookup would fail here and in CI: prove none happens
    checkpoint = write_tiny_checkpoint(family, tmp_path / family)
    store = tmp_path / "store"
    args = [
        "extract",
        "--catalog",
        str(two_clip_manifest),
        "--backbone",
        "vllm",
        "--model",
        str(checkpoint),
        "--layers",
        "every:1",
        "--new-tokens",
        "2",
        "--frames",
        "4",
        "--size",
        "64",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--store",
        str(store),
        "-q",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["extracted"] == 2 and not report["failed"]

    fs = FeatureStore.open(store)
    assert len(fs) == 2
    n_layers, n_tokens, dim = fs.shape
    assert fs.token_kinds[-1] == "new" and "video" in fs.token_kinds and "prompt" in fs.token_kinds
    ids, tokens = fs.read_all()
    assert tokens.shape == (2, n_layers, n_tokens, dim) and tokens.dtype.name == "float16"
    assert all(isinstance(c, str) for c in fs.captions(ids))  # the generated text is kept as the caption
    fields = fs.meta.fingerprint_fields
    # the fingerprint covers the model, the prompt, the sampler, the layers and K
    assert str(checkpoint) in json.dumps(fields) and fields["new_tokens"] == 2 and fields["family"]
    assert fields["sampler"] and fields["prompt"] and len(fields["layers"]) == n_layers

    info = runner.invoke(app, ["store", "info", str(store), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["items"] == 2
    assert os.environ["HF_HUB_OFFLINE"] == "1"
