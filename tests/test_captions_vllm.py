"""The caption path end to end on real clips and a tiny random Video-LLM (its captions are gibberish;
the path, the storage and the fingerprints are real): extract with generated tokens -> encode the
captions with a local sentence encoder -> train with the caption item encoder -> explain -> export ->
the served item shows its caption."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.store import FeatureStore
from linkedout.testing import write_tiny_checkpoint, write_tiny_sentence_encoder

runner = CliRunner()
pytestmark = pytest.mark.network  # real clips from the small tier
N_CLIPS = 6


def ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def ok_json(args: list[str]) -> dict:
    out = ok(args)  # the runner mixes stderr (model loading bars) into the output
    return json.loads(out[out.index("{\n") :])


def test_vllm_captions_to_caption_store_to_trained_run_to_served_page(samples_small, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from a hub
    clips = samples_small.valid_clips()[:N_CLIPS]
    ids = [c.name.replace("/", "_") for c in clips]
    rows = [f"{i},{c.path},{c.name}" for i, c in zip(ids, clips, strict=True)]
    (tmp_path / "clips.csv").write_text("id,path,title\n" + "\n".join(rows) + "\n")
    vllm, captions = tmp_path / "vllm", tmp_path / "captions"

    # stage one: pooled tokens + K generated tokens kept as each item's caption
    checkpoint = write_tiny_checkpoint("llava_onevision", tmp_path / "tiny-vllm")
    stage_one = ["extract", "--catalog", str(tmp_path / "clips.csv"), "--backbone", "vllm"]
    stage_one += ["--model", str(checkpoint), "--new-tokens", "4", "--prompt", "Describe this video."]
    stage_one += ["--layers", "every:1", "--frames", "2", "--size", "32", "--workers", "0"]
    ok([*stage_one, "--store", str(vllm), "-q"])
    source = FeatureStore.open(vllm)
    generated = dict(zip(source.ids(), source.captions(source.ids()), strict=True))
    assert sorted(generated) == sorted(ids) and all(isinstance(c, str) for c in generated.values())
    with_text = {i for i, c in generated.items() if c.strip()}
    assert with_text, "the tiny Video-LLM generated only blank text: nothing downstream would be tested"
    assert f"captions     {len(with_text)} of {N_CLIPS} items" in ok(["store", "info", str(vllm)])

    # stage two: a local sentence encoder over those captions
    encoder = write_tiny_sentence_encoder(tmp_path / "tiny-bert", pooling="mean")
    stage_two = ["extract", "--backbone", "caption", "--model", str(encoder)]
    stage_two += ["--captions-from", str(vllm), "--store", str(captions), "-q", "--json"]
    report = ok_json(stage_two)
    assert report["extracted"] == len(with_text) and set(report["failed"]) == set(generated) - with_text
    store = FeatureStore.open(captions)
    fields = store.meta.fingerprint_fields
    # the key covers both stages: the Video-LLM store's fingerprint and the text encoder's fields
    assert fields["captions_from"] == source.fingerprint and fields["model"] == str(encoder.resolve())
    assert store.meta.source["fingerprint_fields"]["new_tokens"] == 4
    assert store.captions(store.ids()) == [generated[i] for i in store.ids()]
    assert ok_json(stage_two)["attempted"] == 0  # resumed: nothing left to do

    info = ok(["store", "info", str(captions)])
    assert f"captions     {len(with_text)} of {len(with_text)} items" in info and "unchanged since" in info

    # train on a tiny log over the clips with the caption item encoder, then explain and export
    rng = np.random.default_rng(0)
    log = ["user,item,time"] + [
        f"u{u},{ids[rng.integers(N_CLIPS)]},{10 * u + t}" for u in range(24) for t in range(7)
    ]
    (tmp_path / "log.csv").write_text("\n".join(log) + "\n")
    train = ["train", "--dataset", str(tmp_path / "log.csv"), "--protocol", "microlens", "--model", "sasrec"]
    train += ["--item-encoder", "caption", "--features", str(captions), "--epochs", "2", "--dim", "8"]
    ok([*train, "--run-dir", str(tmp_path / "run"), "-q"])

    explained = ok(
        [
            "explain",
            "--run",
            str(tmp_path / "run"),
            "--user",
            "u0",
            "--k",
            "3",
            "--json",
            str(tmp_path / "x.json"),
        ]
    )
    assert "┃ caption" in explained  # the table's caption column
    shown = json.loads((tmp_path / "x.json").read_text())["captions"]
    assert shown and all(text == generated[ids_of] for ids_of, text in _by_id(tmp_path, shown).items())

    ok(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    items = json.loads((tmp_path / "bundle" / "items.json").read_text())
    assert dict(zip(items["ids"], items["captions"], strict=True)) == {
        i: generated.get(i) if i in with_text else None for i in items["ids"]
    }

    from fastapi.testclient import TestClient

    from linkedout.serve.app import create_app
    from linkedout.serve.bundle import load_bundle
    from linkedout.serve.state import ServeConfig

    item = sorted(with_text)[0]
    with TestClient(
        create_app(ServeConfig(bundle=load_bundle(tmp_path / "bundle"), events=tmp_path / "e.sqlite"))
    ) as c:
        assert c.get(f"/v1/items/{item}").json()["caption"] == generated[item]


def _by_id(tmp_path: Path, shown: dict[str, str]) -> dict[str, str]:
    """The explanation's captions are keyed by item index: map them to raw ids through the run."""
    from linkedout.train.run import load_run

    _, split, _ = load_run(tmp_path / "run")
    ids = split.data.item_ids
    return {str(ids[int(i)]): text for i, text in shown.items()}
