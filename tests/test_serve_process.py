"""End to end with real processes: `linkedout export` from a trained run, `linkedout serve` in a
subprocess (kill -9 during an event stream loses no acknowledged event), a clip added by video path
with the frames backbone, and the demo page driven in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linkedout.serve.bundle import load_bundle
from linkedout.synthetic import synthetic_bundle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def linkedout_cmd() -> list[str]:
    script = Path(sys.executable).with_name("linkedout")
    return (
        [str(script)] if script.exists() else [sys.executable, "-c", "from linkedout.cli import app; app()"]
    )


@contextlib.contextmanager
def server(bundle_dir: Path, *extra: str, timeout: float = 60.0):
    """`linkedout serve` on 127.0.0.1:<free port>; always killed on exit."""
    port = free_port()
    cmd = [*linkedout_cmd(), "serve", "--bundle", str(bundle_dir), "--port", str(port), *extra]
    env = {**os.environ, "LINKEDOUT_API_KEY": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not come up")
            time.sleep(0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def write_log(path: Path, n_users: int = 60, n_items: int = 50, per_user: int = 12) -> None:
    rng = np.random.default_rng(0)
    rows = ["user,item,time"]
    for u in range(n_users):
        start = rng.integers(0, n_items)
        for t in range(per_user):  # users walk through neighbouring items: learnable in one epoch
            rows.append(f"u{u},m{(start + t + rng.integers(0, 2)) % n_items},{1000 * u + t}")
    path.write_text("\n".join(rows) + "\n")


def test_export_cli_writes_a_bundle_that_scores_like_the_run(tmp_path):
    from linkedout.cli import app
    from linkedout.train.run import load_run

    log = tmp_path / "log.csv"
    write_log(log)
    run_dir, out = tmp_path / "run", tmp_path / "bundle"
    args = ["train", "--dataset", str(log), "--protocol", "microlens", "--model", "sasrec"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--dim", "16", "--run-dir", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["export", "--run", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not encodable (id-only)" in result.output
    again = CliRunner().invoke(app, ["export", "--run", str(run_dir), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    bad = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "error:" in bad.output

    bundle = load_bundle(out)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["card"]["metrics"] and meta["protocol"]["name"] == "microlens"
    assert "protocol=microlens" in meta["card"]["protocol_line"]
    model, data_split, _ = load_run(run_dir)
    assert bundle.item_ids == [str(x) for x in data_split.data.item_ids.tolist()]
    from linkedout.serve.engine import Engine, RecRequest

    engine = Engine(bundle)
    h = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    res = engine.recommend_batch([RecRequest(h, np.zeros(0, np.int64), 5, explain=False)])[0]
    with torch.no_grad():
        ref = torch.topk(model.score_all_items(torch.as_tensor(h)[None])[0], 5)
    assert res.rows == ref.indices.tolist()


def test_kill_9_during_an_event_stream_loses_no_acknowledged_event(tmp_path):
    bundle, _ = synthetic_bundle(30)
    bundle.save(tmp_path / "b")
    db = tmp_path / "events.sqlite"
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream(base: str, worker: int) -> None:
        with httpx.Client(base_url=base, timeout=5) as c:
            for n in range(100_000):
                if stop.is_set():
                    return
                ids = [f"w{worker}-{n}-{j}" for j in range(3)]
                events = [{"event_id": i, "user_id": f"u{worker}", "item_id": f"i{n % 30}"} for i in ids]
                try:
                    r = c.post("/v1/events", json={"events": events})
                except httpx.HTTPError:
                    return  # the server died: whatever was not acknowledged may be lost
                if r.status_code == 200:
                    with lock:
                        acked.extend(ids)

    with server(tmp_path / "b", "--events", str(db)) as (proc, base):
        threads = [threading.Thread(target=stream, args=(base, w)) for w in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-stream: requests are in flight
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert len(acked) >= 300
    with server(tmp_path / "b", "--events", str(db)) as (_, base):
        assert httpx.get(base + "/healthz").json()["events"] >= len(acked)
        r = httpx.post(base + "/v1/recommend", json={"user_id": "u0", "k": 3})
        assert r.status_code == 200
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"


@pytest.mark.network
def test_new_item_from_a_video_path_is_extracted_with_the_bundle_backbone(samples_small, tmp_path):
    from fastapi.testclient import TestClient

    from linkedout.backbones import get_backbone
    from linkedout.backbones.extractor import Extractor
    from linkedout.serve.app import create_app
    from linkedout.serve.state import ServeConfig
    from linkedout.video import FrameSampler

    sampler = FrameSampler(4, 128)
    bb = get_backbone("frames", layers=(4, 16), dim=32, sampler=sampler.fingerprint())
    extractor = Extractor(bb, sampler)  # what `linkedout extract` records in the store
    fields = json.loads(json.dumps(extractor.fingerprint_fields()))
    store_meta = {
        "fingerprint": extractor.fingerprint(),
        "fingerprint_fields": fields,
        "extractor": extractor.spec().to_json(),
    }
    tokens = torch.randn(12, 2, 5, 32).half()
    bundle, _ = synthetic_bundle(
        12, tokens=tokens, token_kinds=bb.token_kinds, layer_names=bb.layer_names, store_meta=store_meta
    )
    assert bundle.meta["extractor"]["backbone"] == "frames"
    clip = next(
        p for p in Path(samples_small.root, "clips").rglob("*") if p.suffix in (".mp4", ".webm", ".ogv")
    )
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(clip, media / ("clip" + clip.suffix))
    app = create_app(ServeConfig(bundle=bundle, events=tmp_path / "s.sqlite", media_roots=[media]))
    with TestClient(app) as c:
        r = c.post(
            "/v1/items", json={"item_id": "vid1", "title": "a real clip", "video_path": "clip" + clip.suffix}
        )
        assert r.status_code == 201, r.text
        assert r.json()["source"] == "video" and r.json()["thumbnail"]
        assert c.get(r.json()["thumbnail"]).headers["content-type"] == "image/jpeg"
        r = c.post("/v1/recommend", json={"history": ["vid1", "i2"], "k": 3})
        assert r.status_code == 200
    # restart on the same state: the added item is replayed, not lost
    with TestClient(create_app(ServeConfig(bundle=bundle, events=tmp_path / "s.sqlite"))) as c:
        assert c.get("/v1/items/vid1").json()["source"] == "video"


@pytest.mark.network
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_demo_page_in_headless_chromium(samples_small, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev group)")
    from linkedout.video import clip_thumbnail

    clips = sorted(p for p in Path(samples_small.root, "clips").rglob("*") if p.suffix in (".mp4", ".webm"))[
        :4
    ]
    thumbs = {i: clip_thumbnail(p) for i, p in enumerate(clips)}
    titles = [p.stem for p in clips] + [f"item {i}" for i in range(len(clips), 24)]
    bundle, _ = synthetic_bundle(24, titles=titles, thumbnails=thumbs)
    bundle.save(tmp_path / "b")
    with server(tmp_path / "b") as (_, base), playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_selector("#catalogue .tile")
            assert page.locator("#catalogue .tile").count() == 24
            assert page.locator("#catalogue .tile img").count() == len(clips)  # a frame per clip
            page.locator('#catalogue .tile[data-id="i0"]').click()
            page.locator('#catalogue .tile[data-id="i5"]').click()
            page.wait_for_function("document.querySelectorAll('#recs .rec').length === 8")
            assert page.locator("#history .chip").count() == 2
            recs = page.locator("#recs .rec")
            shown = {recs.nth(i).get_attribute("data-id") for i in range(8)}
            assert not shown & {"i0", "i5"}  # seen items are excluded
            first = recs.first
            assert first.locator(".layerchart .bar").count() == 4  # the layer-weight chart
            assert {first.locator(".contrib").nth(i).get_attribute("data-id") for i in range(2)} == {
                "i0",
                "i5",
            }
            page.locator('#history .chip[data-id="i0"]').click()  # remove from the history
            page.wait_for_function("document.querySelectorAll('#history .chip').length === 1")
            assert not errors, errors
        finally:
            browser.close()
