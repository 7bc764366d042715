"""The caption path without video: stage two over a store's generated text (failures recorded, a
changed source refused, resumable), the caption backbone over any local sentence encoder folder (pooled
as sentence-transformers pools it), text-only catalogues (no path column, or a log's item metadata),
and captions carried into `store info`, bundles (older bundles without them still load) and the API.

The whole path on real clips through a tiny Video-LLM is tests/test_captions_vllm.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linkedout.backbones import get_backbone
from linkedout.backbones.base import ItemTokens
from linkedout.backbones.text import CaptionBackbone
from linkedout.cli import app
from linkedout.extract.captions import SourceStoreChangedError, encode_captions
from linkedout.models.features import ItemFeatures
from linkedout.store import FeatureStore
from linkedout.testing import write_tiny_sentence_encoder

runner = CliRunner()
TEXTS = ["a cat video", "describe this video in detail, one two three", "", "music and sport news"]
CAPTIONS = {"a": "a cat playing the piano", "b": "   ", "c": None, "d": "two dogs cooking pasta"}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {
        "cls": write_tiny_sentence_encoder(root / "cls", pooling="cls"),
        "max-raw": write_tiny_sentence_encoder(root / "max", pooling="max", normalize=False),
        "plain": write_tiny_sentence_encoder(root / "plain", pooling=None),
    }


def write_source(path: Path, captions: dict[str, str | None], backbone: str = "vllm-like") -> FeatureStore:
    """A stand-in for a Video-LLM store: tokens plus the generated text per row."""
    store = FeatureStore.create(
        path, {"backbone": backbone}, layers=[0, 1], token_kinds=["video", "new"], dim=4
    )
    rng = np.random.default_rng(0)
    store.append([ItemTokens(i, rng.standard_normal((2, 2, 4)), c) for i, c in captions.items()])
    return store


def write_log(path: Path, items: list[str], n_users: int = 30, per_user: int = 8) -> None:
    rng = np.random.default_rng(0)
    rows = ["user,item,time"] + [
        f"u{u},{items[int(rng.integers(len(items)))]},{100 * u + t}"
        for u in range(n_users)
        for t in range(per_user)
    ]
    path.write_text("\n".join(rows) + "\n")


def reference(backbone: CaptionBackbone, text: str, pooling: str, normalize: bool) -> np.ndarray:
    """One text alone (no padding), pooled by hand."""
    enc = backbone.tokenizer(text, truncation=True, max_length=backbone.max_length, return_tensors="pt")
    with torch.no_grad():
        last = backbone.model(**enc).last_hidden_state[0]
    v = {"cls": last[0], "mean": last.mean(0), "max": last.max(0).values}[pooling]
    return (torch.nn.functional.normalize(v, dim=0) if normalize else v).numpy()


@pytest.mark.parametrize(
    ("name", "pooling", "normalize"),
    [("cls", "cls", True), ("max-raw", "max", False), ("plain", "mean", True)],
)
def test_a_local_encoder_folder_is_pooled_as_its_config_says(encoders, name, pooling, normalize):
    backbone = get_backbone("caption", model=str(encoders[name]))
    got = backbone.sentence_vectors(TEXTS)  # batched: padding must not change any vector
    assert got.shape == (4, 32)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(
            got[i], reference(backbone, text, pooling, normalize), rtol=1e-4, atol=1e-5
        )
    fields = backbone.fingerprint_fields()
    assert fields["model"] == str(encoders[name].resolve()) and len(fields["weights_sha256"]) == 64
    assert pooling in fields["pooling"] and ("L2" in fields["pooling"]) == normalize


def test_a_sentence_transformers_folder_gives_sentence_transformers_vectors(encoders):
    st = pytest.importorskip("sentence_transformers")
    for name in ("cls", "max-raw"):
        ours = get_backbone("caption", model=str(encoders[name])).sentence_vectors(TEXTS)
        np.testing.assert_allclose(ours, st.SentenceTransformer(str(encoders[name])).encode(TEXTS), atol=1e-5)


def test_encoder_folder_errors_name_the_folder(tmp_path, encoders):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_backbone("caption", model=str(tmp_path / "nowhere"))
    odd = tmp_path / "odd"
    shutil.copytree(encoders["cls"], odd)
    (odd / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ValueError, match=r"odd.*weightedmean"):
        get_backbone("caption", model=str(odd))


def test_the_default_caption_fingerprint_is_unchanged_and_a_prefix_changes_it():
    from linkedout.backbones.extractor import Extractor

    backbone = get_backbone("caption")
    # the ml-100k caption store written before the encoder became configurable keeps its key
    assert Extractor(backbone).fingerprint() == "fc8120e6aeb1eaa1"
    assert "prompt" not in backbone.fingerprint_fields()
    backbone.prompt = "passage: "  # E5's document prefix: other vectors, another store
    assert (
        "prompt" in backbone.fingerprint_fields() and Extractor(backbone).fingerprint() != "fc8120e6aeb1eaa1"
    )


def test_stage_two_records_missing_text_as_failures_and_keys_the_store_by_both_stages(tmp_path, encoders):
    source = write_source(tmp_path / "vllm", CAPTIONS)
    backbone = get_backbone("caption", model=str(encoders["cls"]))
    report = encode_captions(tmp_path / "vllm", backbone, tmp_path / "cap", progress=False)
    assert report.extracted == 2 and set(report.failed) == {"b", "c"}
    assert all(r.startswith("caption: no generated text") and "vllm" in r for r in report.failed.values())

    out = FeatureStore.open(tmp_path / "cap")
    assert out.shape == (1, 1, 32) and out.ids() == ["a", "d"]
    assert out.captions(["a", "d"]) == [CAPTIONS["a"], CAPTIONS["d"]]  # the text beside its vector
    fields = out.meta.fingerprint_fields
    assert fields["captions_from"] == source.fingerprint and fields["backbone"] == "caption"
    assert out.meta.source["store"] == str((tmp_path / "vllm").resolve())
    assert out.meta.extractor is None  # two stages are not one backbone a server could rebuild
    np.testing.assert_allclose(
        out.read(["a"])[0, 0, 0], backbone.sentence_vectors([CAPTIONS["a"]])[0], atol=2e-3
    )  # float16 storage

    again = encode_captions(tmp_path / "vllm", backbone, tmp_path / "cap", progress=False)
    assert again.attempted == 0 and again.already_done == 2 and again.skipped_failed == 2

    # the source store gains an item (resumed stage one): stage two picks it up, store info says so
    source.append([ItemTokens("e", np.zeros((2, 2, 4)), "a new clip")])
    info = runner.invoke(app, ["store", "info", str(tmp_path / "cap"), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.output)
    assert described["captions"] == 2 and described["caption_samples"][0]["caption"] == CAPTIONS["a"]
    assert described["source"]["status"] == "same" and described["source"]["not_encoded"] == 1
    assert encode_captions(tmp_path / "vllm", backbone, tmp_path / "cap", progress=False).extracted == 1


def test_a_source_store_extracted_again_with_other_settings_is_refused_by_name(tmp_path, encoders):
    write_source(tmp_path / "vllm", CAPTIONS)
    args = ["extract", "--backbone", "caption", "--model", str(encoders["cls"]), "-q"]
    args += ["--captions-from", str(tmp_path / "vllm"), "--store", str(tmp_path / "cap")]
    assert runner.invoke(app, args).exit_code == 0
    shutil.rmtree(tmp_path / "vllm")
    write_source(tmp_path / "vllm", CAPTIONS, backbone="another prompt")
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "source store" in result.output and str(tmp_path / "vllm") in result.output
    assert "re-extracted" in result.output and str(tmp_path / "cap") in result.output
    with pytest.raises(SourceStoreChangedError):
        encode_captions(
            tmp_path / "vllm", get_backbone("caption", model=str(encoders["cls"])), tmp_path / "cap"
        )
    info = runner.invoke(app, ["store", "info", str(tmp_path / "cap")])
    assert "CHANGED since" in info.output and "captions     2 of 2 items" in info.output


def test_stage_two_input_errors_are_messages(tmp_path, encoders):
    FeatureStore.create(tmp_path / "frames", {"backbone": "frames"}, [0], ["video"], 4).append(
        [ItemTokens("a", np.zeros((1, 1, 4)))]
    )
    base = ["extract", "--store", str(tmp_path / "cap"), "-q"]
    cases = {
        "holds no generated text": ["--backbone", "caption", "--captions-from", str(tmp_path / "frames")],
        "no feature store at": ["--backbone", "caption", "--captions-from", str(tmp_path / "nope")],
        "needs a text backbone": ["--backbone", "frames", "--captions-from", str(tmp_path / "frames")],
        "exactly one of --catalog": ["--backbone", "caption"],
        "--layers does not apply": ["--backbone", "caption", "--layers", "1", "--captions-from", "x"],
    }
    for message, args in cases.items():
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_a_text_only_catalogue_needs_no_path_column(tmp_path):
    (tmp_path / "items.csv").write_text("id,title,text\nm1,Toy Story,animated toys\nm2,Heat,\nm3,,\n")
    store = tmp_path / "store"
    args = [
        "extract",
        "--catalog",
        str(tmp_path / "items.csv"),
        "--backbone",
        "caption",
        "--store",
        str(store),
    ]
    result = runner.invoke(app, [*args, "-q", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["extracted"] == 2 and report["failed"] == {"m3": "text: item has no title or text"}
    assert FeatureStore.open(store).captions(["m1"]) == [None]  # a title is not a generated caption

    video = ["extract", "--catalog", str(tmp_path / "items.csv"), "--backbone", "frames"]
    result = runner.invoke(app, [*video, "--store", str(tmp_path / "frames"), "-q"])
    assert (
        result.exit_code == 2
        and "have no path" in result.output
        and "--backbone text or caption" in result.output
    )


def test_any_text_column_of_a_manifest_can_be_the_item_text(tmp_path):
    (tmp_path / "items.csv").write_text("id,title,text,plot\nm1,Heat,crime,a long heist in LA\nm2,Up,,\n")
    base = ["extract", "--catalog", str(tmp_path / "items.csv"), "--backbone", "caption", "-q"]
    ok = runner.invoke(app, [*base, "--text-column", "plot", "--store", str(tmp_path / "plot")])
    assert ok.exit_code == 0, ok.output
    plot, default = FeatureStore.open(tmp_path / "plot"), tmp_path / "default"
    assert plot.meta.fingerprint_fields["text_source"] == "plot"
    assert runner.invoke(app, [*base, "--store", str(default)]).exit_code == 0
    assert FeatureStore.open(default).fingerprint != plot.fingerprint  # another column, another store
    want = get_backbone("caption").sentence_vectors(["Heat\na long heist in LA", "Up"])
    np.testing.assert_allclose(plot.read(["m1", "m2"])[:, 0, 0], want, atol=2e-3)

    typo = runner.invoke(app, [*base, "--text-column", "plots", "--store", str(tmp_path / "typo")])
    assert typo.exit_code == 2 and "'plots'" in typo.output and "items.csv" in typo.output
    frames = ["extract", "--catalog", str(tmp_path / "items.csv"), "--backbone", "frames"]
    result = runner.invoke(app, [*frames, "--text-column", "plot", "--store", str(tmp_path / "f")])
    assert result.exit_code == 2 and "--text-column does not apply to the frames backbone" in result.output


def test_a_catalogue_from_a_logs_item_metadata(tmp_path, samples_small):
    store = tmp_path / "ml"
    args = ["extract", "--catalog-from", "ml-100k", "--backbone", "caption", "--limit", "3"]
    result = runner.invoke(app, [*args, "--store", str(store), "-q", "--json"])
    assert result.exit_code == 0, result.output
    fs = FeatureStore.open(store)
    assert len(fs) == 3 and fs.shape == (1, 1, 384)
    # the same catalogue the benchmarks build (ids of the log, text "title (year); genres")
    from linkedout.extract import catalog_from_log

    catalog = catalog_from_log("ml-100k")
    assert fs.ids() == catalog.ids[:3] and "(19" in (catalog[0].text or "")
    wrong = runner.invoke(
        app, ["extract", "--catalog-from", "ml-100k", "--backbone", "frames", "--store", str(tmp_path / "x")]
    )
    assert wrong.exit_code == 2 and "text-only catalogue" in wrong.output


def test_a_caption_store_loads_as_item_features_aligned_to_items(tmp_path, encoders):
    write_source(tmp_path / "vllm", CAPTIONS)
    encode_captions(
        tmp_path / "vllm",
        get_backbone("caption", model=str(encoders["cls"])),
        tmp_path / "cap",
        progress=False,
    )
    features = ItemFeatures.from_store(tmp_path / "cap", np.array(["d", "b", "a"]))
    assert features.present.tolist() == [True, False, True] and features.shape == (1, 1, 32)
    assert features.token_kinds == ("caption",) and not features.tokens[1].any()


def test_bundles_carry_captions_and_older_bundles_without_them_still_load(tmp_path):
    from fastapi.testclient import TestClient

    from linkedout.serve.app import create_app
    from linkedout.serve.bundle import load_bundle
    from linkedout.serve.state import ServeConfig

    write_log(tmp_path / "log.csv", [f"m{i}" for i in range(12)])
    captions = {f"m{i}": None for i in range(12)} | {"m3": "a clip about cats"}
    write_source(tmp_path / "store", captions)
    args = ["train", "--dataset", str(tmp_path / "log.csv"), "--protocol", "microlens", "--model", "sasrec"]
    args += ["--item-encoder", "mean", "--features", str(tmp_path / "store"), "--epochs", "1", "--dim", "8"]
    assert runner.invoke(app, [*args, "--run-dir", str(tmp_path / "run"), "-q"]).exit_code == 0
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    items = json.loads((tmp_path / "bundle" / "items.json").read_text())
    assert items["captions"][items["ids"].index("m3")] == "a clip about cats"
    assert sum(c is not None for c in items["captions"]) == 1

    old = tmp_path / "old"
    shutil.copytree(tmp_path / "bundle", old)
    del items["captions"]
    (old / "items.json").write_text(json.dumps(items))
    for path, caption in ((tmp_path / "bundle", "a clip about cats"), (old, None)):
        bundle = load_bundle(path)
        with TestClient(create_app(ServeConfig(bundle=bundle, events=tmp_path / f"{path.name}.sqlite"))) as c:
            assert c.get("/v1/items/m3").json()["caption"] == caption
            assert c.get("/v1/items/m4").json()["caption"] is None
            recs = c.post("/v1/recommend", json={"history": ["m1", "m2"], "k": 50}).json()["items"]
            assert {r["item_id"]: r["caption"] for r in recs}.get("m3") == caption
            assert "item.caption" in c.get("/").text  # the page shows it
