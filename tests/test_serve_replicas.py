"""Several workers and zero-downtime reload: the memory-mapped item matrix (shared, never written, online
items in a second segment), broken bundles refused at load, `POST /v1/admin/reload` under load (in
process), and `linkedout serve --workers 2` in real processes: one copy of the matrix, /metrics summed
over workers, a reload reaching every worker with no failed request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
from fastapi.testclient import TestClient

from linkedout.serve import routes
from linkedout.serve.app import create_app
from linkedout.serve.bundle import BundleError, load_bundle
from linkedout.serve.engine import Engine, RecRequest
from linkedout.serve.index import ExactIndex
from linkedout.serve.schemas import RecommendRequest, ReloadRequest
from linkedout.serve.state import ServeConfig, State
from linkedout.synthetic import random_vector_bundle, synthetic_bundle

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---------------------------------------------------------------------- index and bundle
def test_exact_index_with_online_items_ranks_like_one_matrix():
    """Base segment + online segment, merged top-k == top-k over the concatenated matrix."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 8, generator=g)
    blocked = torch.zeros(300, dtype=torch.bool)
    blocked[[5, 17]] = True
    index = ExactIndex(base, blocked)
    extra = torch.randn(40, 8, generator=g)
    for i in range(0, 40, 7):  # several adds: the online buffer grows (16 -> 32 -> 64) on the way
        index.add(extra[i : i + 7], blocked=(i == 14))
    full = torch.cat([base, extra])
    full_blocked = torch.cat([blocked, torch.zeros(40, dtype=torch.bool)])
    full_blocked[300 + 14 : 300 + 21] = True
    users = torch.randn(6, 8, generator=g)
    exclude = [np.array([0, 301, 339]), np.array([], dtype=np.int64), np.array([299, 300])] * 2
    scores, rows = index.search(users, 12, exclude)
    ref = users @ full.T
    ref[:, full_blocked] = float("-inf")
    for b, ex in enumerate(exclude):
        ref[b, torch.as_tensor(ex, dtype=torch.long)] = float("-inf")
    top = torch.topk(ref, 12, dim=1)
    torch.testing.assert_close(scores, top.values)
    assert torch.equal(rows, top.indices)
    want = torch.tensor([3, 310, 299, 339, 0])
    assert torch.equal(index.vectors(want), full[want]) and index.size == 340
    assert torch.equal(base, full[:300])  # the base matrix was never written


def test_bundle_matrix_is_memory_mapped_and_online_items_do_not_touch_the_file(tmp_path):
    bundle, _ = synthetic_bundle(40)
    bundle.save(tmp_path / "b")
    on_disk = (tmp_path / "b" / "items.safetensors").read_bytes()
    loaded = load_bundle(tmp_path / "b")
    assert _mapped_from(loaded.item_matrix, tmp_path / "b" / "items.safetensors")
    torch.testing.assert_close(loaded.item_matrix, bundle.item_matrix)
    torch.testing.assert_close(loaded.layer_weights, bundle.layer_weights)
    engine = Engine(loaded)
    assert engine.index._view.base.data_ptr() == loaded.item_matrix.data_ptr()  # not copied
    row = engine.add_item("new", torch.ones(loaded.dim), None)
    h = np.array([row, 3], dtype=np.int64)
    res = engine.recommend_batch([RecRequest(h, h, 5, explain=True)])[0]
    assert len(res.rows) == 5 and row not in res.rows and res.contributions is not None
    assert (tmp_path / "b" / "items.safetensors").read_bytes() == on_disk


def _mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """The tensor's memory lies in a mapping of ``path`` (this process's /proc/self/maps)."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


def _broken(tmp_path: Path, name: str, fn) -> Path:
    bundle, _ = synthetic_bundle(20)
    path = bundle.save(tmp_path / name)
    fn(path)
    return path


@pytest.mark.parametrize(
    ("name", "breaks", "words"),
    [
        ("missing", lambda p: (p / "user_encoder.safetensors").unlink(), "user_encoder.safetensors"),
        ("badjson", lambda p: (p / "items.json").write_text("{not json"), "JSONDecodeError"),
        (
            "ids",
            lambda p: (p / "items.json").write_text(json.dumps({"ids": ["a"], "titles": [None]})),
            "rows",
        ),
        (
            "empty",
            lambda p: (p / "items.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}"),
            "item_matrix",
        ),
        ("nometa", lambda p: (p / "bundle.json").unlink(), "no bundle"),
    ],
)
def test_broken_bundles_are_refused_at_load_with_a_message(tmp_path, name, breaks, words):
    path = _broken(tmp_path, name, breaks)
    with pytest.raises(BundleError) as raised:
        load_bundle(path)
    assert words in str(raised.value)


# ---------------------------------------------------------------------- reload, in process
def _two_bundles(root: Path) -> tuple[Path, Path]:
    """v1 with 40 items, v2 with 60 (i0..i59): a history of i1, i2 is valid in both, and k=50
    answers 38 items from v1 and 50 (k) from v2."""
    a, _ = synthetic_bundle(40, seed=0)
    b, _ = synthetic_bundle(60, seed=1)
    return a.save(root / "v1"), b.save(root / "v2")


def test_reload_under_load_fails_no_request_and_switches_to_the_new_items(tmp_path):
    v1, v2 = _two_bundles(tmp_path / "bundles")

    async def run() -> tuple[list[int], int, list]:
        state = State(ServeConfig(bundle=v1, events=tmp_path / "s.sqlite"))
        await state.start()
        counts: list[int] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    r = await routes.recommend(RecommendRequest(history=["i1", "i2"], k=50), state)
                    counts.append(len(r.items))
                except BaseException as e:
                    failures.append(e)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        outcomes = []
        for target in (v2, v1, v2):  # three swaps while eight clients keep asking
            await asyncio.sleep(0.05)
            outcomes.append(await routes.reload(ReloadRequest(bundle=str(target)), state))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        after = await routes.recommend(RecommendRequest(history=["i1", "i2"], k=50), state)
        await state.stop()
        state.close()
        assert [o.generation for o in outcomes] == [1, 2, 3] and outcomes[-1].items == 60
        return counts, len(after.items), failures

    counts, after, failures = asyncio.run(run())
    assert not failures, failures[:3]
    assert len(counts) > 50 and set(counts) == {38, 50}  # answers from both bundles, nothing else
    assert after == 50


@pytest.fixture
def admin_client(tmp_path):
    v1, v2 = _two_bundles(tmp_path / "bundles")
    app = create_app(ServeConfig(bundle=v1, events=tmp_path / "s.sqlite", api_key="sekret"))
    with TestClient(app) as c:
        yield c, v1, v2


def test_reload_needs_the_api_key_and_stays_under_the_bundle_roots(admin_client, tmp_path):
    client, _, v2 = admin_client
    key = {"X-API-Key": "sekret"}
    assert client.post("/v1/admin/reload", json={"bundle": str(v2)}).status_code == 401
    wrong = client.post("/v1/admin/reload", json={"bundle": str(v2)}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    outside = client.post("/v1/admin/reload", json={"bundle": "/etc"}, headers=key)
    assert outside.status_code == 403 and "bundle roots" in outside.json()["detail"]
    escape = client.post("/v1/admin/reload", json={"bundle": "../../.."}, headers=key)
    assert escape.status_code == 403
    r = client.post("/v1/admin/reload", json={"bundle": "v2"}, headers=key)  # relative to the root
    assert r.status_code == 200, r.text
    assert r.json()["items"] == 60 and r.json()["generation"] == 1 and r.json()["all_workers"]
    again = client.post("/v1/admin/reload", headers=key)  # no body: re-read the served directory
    assert again.status_code == 200 and again.json()["bundle"] == str(v2.resolve())
    assert client.get("/healthz").json()["generation"] == 2
    assert "linkedout_bundle_reloads_total" in client.get("/metrics").text


def test_broken_bundle_is_refused_and_the_old_one_keeps_serving(admin_client, tmp_path):
    client, v1, _ = admin_client
    key = {"X-API-Key": "sekret"}
    bad = _broken(v1.parent, "bad", lambda p: (p / "items.json").write_text("{not json"))
    before = client.get("/healthz").json()["bundle_id"]
    r = client.post("/v1/admin/reload", json={"bundle": str(bad)}, headers=key)
    assert (
        r.status_code == 422 and "still serving" in r.json()["detail"] and "items.json" in r.json()["detail"]
    )
    # a bundle that loads but whose user encoder does not fit its item matrix fails the warm-up
    other, _ = synthetic_bundle(30, dim=8)
    mixed = _broken(v1.parent, "mixed", lambda p: None)
    other.save(v1.parent / "dim8")
    (mixed / "user_encoder.safetensors").write_bytes(
        (v1.parent / "dim8" / "user_encoder.safetensors").read_bytes()
    )
    r = client.post("/v1/admin/reload", json={"bundle": str(mixed)}, headers=key)
    assert r.status_code == 422 and "still serving" in r.json()["detail"]
    assert client.get("/healthz").json()["bundle_id"] == before
    ok = client.post("/v1/recommend", json={"history": ["i1", "i2"], "k": 50, "explain": False})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 38
    assert 'linkedout_bundle_reloads_total{outcome="refused"} 2.0' in client.get("/metrics").text


# ---------------------------------------------------------------------- real worker processes
@contextlib.contextmanager
def served(bundle_dir: Path, *extra: str, timeout: float = 120.0):
    """`linkedout serve` with this worktree's code, in its own process group: stopped with SIGINT
    (uvicorn's supervisor then stops its workers and the server removes its run directory), killed
    as a group if that does not end it."""
    from test_serve_process import free_port, linkedout_cmd

    port = free_port()
    cmd = [*linkedout_cmd(), "serve", "--bundle", str(bundle_dir), "--port", str(port), *extra]
    env = {
        **os.environ,
        "LINKEDOUT_API_KEY": "",
        "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not come up")
            time.sleep(0.2)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def workers_of(proc: subprocess.Popen, n: int, timeout: float = 120.0) -> list[psutil.Process]:
    """The uvicorn worker processes (spawned children; not multiprocessing's resource tracker),
    once all ``n`` answer."""
    deadline = time.monotonic() + timeout
    while True:
        kids = [
            p
            for p in psutil.Process(proc.pid).children()
            if "resource_tracker" not in " ".join(p.cmdline()) and "spawn" in " ".join(p.cmdline())
        ]
        if len(kids) == n or time.monotonic() > deadline:
            assert len(kids) == n, [p.cmdline() for p in kids]
            return kids
        time.sleep(0.2)


def spread(base: str, body: dict, n: int, threads: int = 8) -> tuple[dict[int, int], int]:
    """``n`` recommend requests over ``threads`` fresh-connection clients; (answers per worker pid
    from interleaved /healthz calls, failed requests)."""
    pids: dict[int, int] = {}
    failed = 0
    lock = threading.Lock()

    def run(count: int) -> None:
        nonlocal failed
        for _ in range(count):
            r = httpx.post(base + "/v1/recommend", json=body, timeout=30)  # a new connection each
            h = httpx.get(base + "/healthz", timeout=30).json()
            with lock:
                failed += r.status_code != 200
                pids[h["worker_pid"]] = pids.get(h["worker_pid"], 0) + 1

    per = [n // threads + (i < n % threads) for i in range(threads)]
    ts = [threading.Thread(target=run, args=(c,)) for c in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return pids, failed


def metric(text: str, line_start: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start + " ")
    ]
    assert len(values) == 1, (line_start, text[:3000])
    return values[0]


@pytest.mark.slow
def test_two_workers_sum_metrics_and_reload_together_under_load(tmp_path):
    v1, v2 = _two_bundles(tmp_path / "bundles")
    with served(v1, "--workers", "2", "--events", str(tmp_path / "e.sqlite")) as (proc, base):
        workers = workers_of(proc, 2)
        run_dir = Path(_run_dir_of(workers[0]))
        assert (run_dir / "metrics").is_dir() and oct((run_dir / "config.json").stat().st_mode)[-3:] == "600"
        body = {"history": ["i1", "i2"], "k": 50, "explain": False}
        pids, failed = spread(base, body, 120)
        assert failed == 0 and set(pids) == {w.pid for w in workers}, pids  # both workers answered
        text = httpx.get(base + "/metrics").text
        assert (
            metric(text, 'linkedout_http_requests_total{method="POST",route="/v1/recommend",status="200"}')
            == 120
        )
        assert metric(text, "linkedout_recommend_batched_requests_total") == 120
        assert metric(text, 'linkedout_http_request_seconds_count{route="/v1/recommend"}') == 120
        assert metric(text, "linkedout_catalogue_items") == 40

        # reload through one worker while clients keep asking: no failure, and after the reply
        # every worker answers from v2
        results: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(base + "/v1/recommend", json=body)
                    results.append(len(r.json()["items"]) if r.status_code == 200 else -r.status_code)

        clients = [threading.Thread(target=load) for _ in range(4)]
        for t in clients:
            t.start()
        try:
            time.sleep(0.5)
            r = httpx.post(base + "/v1/admin/reload", json={"bundle": str(v2)}, timeout=180)
            assert r.status_code == 200, r.text
            reply = r.json()
            assert reply["all_workers"] and reply["generation"] == 1
            assert {int(p) for p in reply["workers"]} == {w.pid for w in workers}
            bad = httpx.post(
                base + "/v1/admin/reload", json={"bundle": str(tmp_path / "bundles" / "nope")}, timeout=60
            )
            assert bad.status_code == 422 and "still serving" in bad.json()["detail"]
            time.sleep(0.5)
        finally:
            stop.set()
            for t in clients:
                t.join()
        assert results and all(n > 0 for n in results), sorted(set(results))
        assert 38 in results and results[-1] == 50
        pids, failed = spread(base, body, 40)
        assert failed == 0 and len(pids) == 2
        for _ in range(20):
            assert len(httpx.post(base + "/v1/recommend", json=body).json()["items"]) == 50
        assert metric(httpx.get(base + "/metrics").text, "linkedout_bundle_generation") == 1
    assert proc.returncode is not None and not run_dir.exists()  # removed at exit


def _run_dir_of(worker: psutil.Process) -> str:
    return str(Path(worker.environ()["LINKEDOUT_SERVE_CONFIG"]).parent)


def _uss_after_scoring(base: str, workers: list[psutil.Process], n_items: int) -> list[int]:
    body = {"history": [f"i{i}" for i in range(0, n_items, max(1, n_items // 20))], "k": 10}
    spread(base, body, 24)  # both workers score: every page of the matrix is read
    return [w.memory_full_info().uss for w in workers]


@pytest.mark.slow
def test_workers_share_one_copy_of_the_item_matrix(tmp_path):
    """Unique memory (USS) per worker grows by far less than the matrix between a 1k- and a 50k-item
    bundle: the matrix pages are the page cache's, shared, not each worker's own."""
    dim = 256
    small, big = random_vector_bundle(1_000, dim=dim), random_vector_bundle(50_000, dim=dim)
    small.save(tmp_path / "small")
    big.save(tmp_path / "big")
    matrix_bytes = 50_000 * dim * 4  # 51 MB
    with served(tmp_path / "small", "--workers", "2") as (proc, base):
        base_uss = _uss_after_scoring(base, workers_of(proc, 2), 1_000)
    with served(tmp_path / "big", "--workers", "2") as (proc, base):
        workers = workers_of(proc, 2)
        big_uss = _uss_after_scoring(base, workers, 50_000)
        maps = [
            [m for m in w.memory_maps(grouped=True) if m.path.endswith("big/items.safetensors")]
            for w in workers
        ]
    growth = [b - min(base_uss) for b in big_uss]
    small_mb, big_mb = [u >> 20 for u in base_uss], [u >> 20 for u in big_uss]
    print(f"USS MB per worker: 1k items {small_mb}, 50k items {big_mb}; matrix {matrix_bytes >> 20} MB")
    # a private copy would add at least the whole matrix; the 50k items' ids, titles and id map are
    # Python objects of their own (~15-18 MB here, and it was measured at 14.5 and 18.4 MB on one run)
    assert all(g < 0.5 * matrix_bytes for g in growth), (growth, matrix_bytes)
    for m in maps:  # the mapping is resident in both workers, and clean (shared), not copied-on-write
        assert len(m) == 1 and m[0].rss > 0.9 * matrix_bytes and m[0].private_dirty < 0.02 * matrix_bytes, m


def test_watch_bundle_reloads_when_the_directory_is_replaced_and_skips_a_broken_one(tmp_path):
    bundle, _ = synthetic_bundle(40, seed=0)
    path = bundle.save(tmp_path / "live")
    config = ServeConfig(bundle=path, events=tmp_path / "s.sqlite", watch_bundle=True, reload_poll_s=0.05)

    async def wait_for(state: State, generation: int) -> None:
        for _ in range(200):
            if state.serving.generation >= generation:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no reload to generation {generation}")

    async def run() -> None:
        state = State(config)
        await state.start()
        try:
            first = state.bundle.bundle_id
            newer, _ = synthetic_bundle(60, seed=1)
            newer.save(path, overwrite=True)  # what `linkedout export --force` does: rename into place
            await wait_for(state, 1)
            assert state.bundle.bundle_id == newer.bundle_id != first and state.engine.n_items == 60
            (path / "items.json").write_text("{broken")  # an in-place edit: refused, old one kept
            os.utime(path / "bundle.json")
            refused = state.metrics.reloads.labels("refused")
            for _ in range(200):
                if refused._value.get() == 1:
                    break
                await asyncio.sleep(0.05)
            assert refused._value.get() == 1  # the watch saw the change, and refused it
            assert state.serving.generation == 1 and state.bundle.bundle_id == newer.bundle_id
            r = await routes.recommend(RecommendRequest(history=["i1"], k=5), state)
            assert len(r.items) == 5
        finally:
            await state.stop()
            state.close()

    asyncio.run(run())
