"""Serving benchmarks on loopback: /v1/recommend latency and throughput per catalogue size, the naive
path (full model forward per request) for the ratio, event ingestion with durability, startup time
and memory; closed-loop throughput of 1 vs 2 worker processes (`--workers 1 2`), and a bundle swap
under open-loop load (`--swaps`: reloads during the run, failed requests counted). Bounded loops
only; prints a Markdown table and writes JSON.

    .venv/bin/pip install -e ".[bench]"   # aiohttp, the load generator
    .venv/bin/python benchmarks/serve_latency.py --sizes 20000 100000 1000000 \
        --out benchmarks/results/serve.json

The server runs in its own process (`linkedout serve`), the load generator in this one: on a 2-core
machine they share the cores, as a sidecar client would. Latency is measured open-loop from each
request's *scheduled* send time (no coordinated omission): a slow reply delays nobody's clock.
Item vectors are random (scale, not quality, is measured here); the load average is recorded with
every run because the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil
import torch

import wrk_load
from linkedout.synthetic import random_vector_bundle, synthetic_model
from provenance import provenance

JSON = {"content-type": "application/json"}


FAISS_KINDS = ("flat", "ivf", "ivfpq", "hnsw")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle_dir: Path, events: Path, extra: list[str]) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    exe = Path(sys.executable).with_name("linkedout")
    cmd = [
        str(exe),
        "serve",
        "--bundle",
        str(bundle_dir),
        "--port",
        str(port),
        "--events",
        str(events),
        *extra,
    ]
    started = time.perf_counter()
    # own process group: with --workers the server is a supervisor plus worker processes, and a
    # killed supervisor alone would leave its workers holding the port
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    # the last --workers counts (the CLI takes an option's last value, and callers append theirs)
    workers = int(extra[len(extra) - extra[::-1].index("--workers")]) if "--workers" in extra else 1
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                # with several workers, wait until each has started (one answering is not all)
                kids = psutil.Process(proc.pid).children()
                if workers == 1 or sum("spawn_main" in " ".join(p.cmdline()) for p in kids) == workers:
                    return proc, base, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_server(proc)
    raise TimeoutError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (uvicorn stops its workers, the server removes its run directory), then the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _session(connections: int) -> aiohttp.ClientSession:
    # aiohttp rather than httpx: on 2 shared cores the load generator's own CPU per request is part
    # of every measured latency, and aiohttp spends a fraction of httpx's
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=10)
    )


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    """True on a 200; overload (timeouts, refused connections) counts as an error, not a crash."""
    try:
        async with session.post(url, data=body, headers=JSON) as r:
            await r.read()
            return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def open_loop(base: str, bodies: list[dict], rate: float, path: str = "/v1/recommend") -> dict:
    """Send ``bodies`` at ``rate`` per second on a fixed schedule; latency from the scheduled time."""
    lat: list[float] = []
    errors = 0
    payloads = [json.dumps(b).encode() for b in bodies]  # encoded up front: not part of the latency
    gc.collect()
    gc.freeze()  # the client's own full collections would otherwise land in its measured latencies
    async with _session(64) as session:
        t0 = time.perf_counter() + 0.05

        async def one(i: int, body: bytes) -> None:
            nonlocal errors
            at = t0 + i / rate
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            errors += not await _post(session, base + path, body)
            lat.append(time.perf_counter() - at)

        await asyncio.gather(*(one(i, b) for i, b in enumerate(payloads)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "requests": len(bodies),
        "rate": rate,
        "achieved_rps": len(bodies) / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


async def closed_loop(
    base: str, make_body, seconds: float, concurrency: int, path: str = "/v1/recommend"
) -> dict:
    done = 0
    errors = 0
    lat: list[float] = []
    async with _session(concurrency) as session:
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done, errors
            n = 0
            while time.perf_counter() < end:
                body = json.dumps(make_body(w, n)).encode()
                t = time.perf_counter()
                errors += not await _post(session, base + path, body)
                lat.append(time.perf_counter() - t)
                done += 1
                n += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "per_s": done / wall,
        "concurrency": concurrency,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


def naive_path(n_items: int, history: int, repeats: int, content: bool) -> float:
    """ms per request of the trained model's own forward, one request at a time: the user encoder
    plus, for a content model, the item encoder over the whole catalogue (what the bundle precomputes),
    then a full sort. Random weights; the cost does not depend on them."""
    if content:
        model = synthetic_model(
            n_items, item_encoder="linkedout", dim=64, n_layers=4, token_dim=32, max_len=50
        )
    else:
        model = synthetic_model(n_items, item_encoder="id", dim=64, max_len=50)
    model.train(False)
    rng = np.random.default_rng(0)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            h = torch.as_tensor(rng.choice(n_items, size=history, replace=False))[None]
            t = time.perf_counter()
            model._item_matrix = None  # the naive path has no precomputed item matrix
            scores = model.score_all_items(h)[0]
            torch.argsort(scores, descending=True)[:10]
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def fast_path_inprocess(bundle, history: int, repeats: int) -> float:
    from linkedout.serve.engine import Engine, RecRequest

    engine = Engine(bundle)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        h = rng.choice(bundle.n_items, size=history, replace=False).astype(np.int64)
        t = time.perf_counter()
        engine.recommend_batch([RecRequest(h, np.unique(h), 10, explain=False)])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def ann_run(
    bundle, bundle_dir: Path, work: Path, kind: str, bodies: list[dict], threads: list[str], args
) -> dict:
    """The same open-loop runs against a FAISS index (`--index KIND`), and its recall@10 against the
    exact index on the benchmark's own histories (seen items excluded, as served)."""
    from linkedout.serve.engine import Engine, RecRequest
    from linkedout.serve.index import parse_index_options

    options = parse_index_options(kind, args.ann_option) if kind in FAISS_KINDS else {}
    exact, ann = Engine(bundle), Engine(bundle, index=kind, **options)
    hits = 0
    for body in bodies[:200]:
        rows = np.array([int(i[1:]) for i in body["history"]], dtype=np.int64)
        req = RecRequest(rows, np.unique(rows), 10, explain=False)
        hits += len(set(exact.recommend_batch([req])[0].rows) & set(ann.recommend_batch([req])[0].rows))
    del exact, ann
    extra = [*threads, "--index", kind]
    if kind in FAISS_KINDS:
        extra += [f"--index-option={o}" for o in args.ann_option]
    proc, base, startup = start_server(bundle_dir, work / f"ann-{kind}.sqlite", extra)
    try:
        runs = recommend_runs(base, bodies, args)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        stop_server(proc)
    return {
        "recall_at_10": hits / (10 * min(200, len(bodies))),
        "index_options": options,
        "startup_s": startup,
        "rss_mb": rss,
        "recommend_runs": runs,
        "recommend": median_p99(runs),
    }


def recommend_runs(base: str, bodies: list[dict], args) -> list[dict]:
    """A warm-up at the measured rate (connections opened, caches warm), then ``args.repeats``
    independent open-loop runs: one p99 of 1000 requests is its 10th-worst latency, so a single run
    swings with whatever else the machine did in those seconds."""
    plain = [{**b, "explain": False} for b in bodies]
    asyncio.run(open_loop(base, plain[:400], args.rate))
    return [asyncio.run(open_loop(base, plain, args.rate)) for _ in range(args.repeats)]


def median_p99(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]


def recommend_body(bodies: list[dict]):
    return lambda w, i: {**bodies[(w * 997 + i) % len(bodies)], "explain": False}


def events_body(n_items: int, per_request: int):
    def make(w: int, i: int) -> dict:
        return {
            "events": [
                {
                    "event_id": f"{per_request}-{w}-{i}-{j}",
                    "user_id": f"u{w}",
                    "item_id": f"i{(i + j) % n_items}",
                }
                for j in range(per_request)
            ]
        }

    return make


class CpuUse:
    """Cores busy over a ``with`` block: the process tree rooted at ``pid`` and the whole machine."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.cores: dict = {}

    def _tree_seconds(self) -> float:
        total = 0.0
        for p in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def __enter__(self) -> CpuUse:
        self._t, self._server, self._machine = time.perf_counter(), self._tree_seconds(), psutil.cpu_times()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        self.cores = {
            "server_cores": (self._tree_seconds() - self._server) / wall,
            "machine_cores": (_busy(psutil.cpu_times()) - _busy(self._machine)) / wall,
        }


def _busy(t) -> float:
    """CPU seconds of every core not idle or waiting for I/O."""
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def workers_throughput(bundle_dir: Path, work: Path, bodies: list[dict], threads: list[str], args) -> dict:
    """Closed-loop requests/s of the same catalogue with 1 and 2 (``--workers``) worker processes,
    after a warm-up; the load generator shares the machine's cores with the workers. Also the cores
    the server (all its processes) and the whole machine were busy during the measured run
    (``server_cores``, ``machine_cores``: CPU seconds / wall seconds): one worker process can use more
    than one core (HTTP on the event loop, scoring on its own thread with the GIL released), which
    caps what a second worker can add on 2 cores."""
    out: dict = {}
    for w in args.workers:
        proc, base, startup = start_server(bundle_dir, work / f"w{w}.sqlite", [*threads, "--workers", str(w)])
        try:
            if args.client == "wrk":  # a C client: the server gets most of the 2 cores (wrk_load.py)
                script = wrk_load.bodies_script("/v1/recommend", [{**b, "explain": False} for b in bodies])
                wrk_load.run(base, script, 1, args.concurrency)
                with CpuUse(proc.pid) as used:
                    run = wrk_load.run(base, script, args.closed_seconds, args.concurrency)
            else:
                asyncio.run(closed_loop(base, recommend_body(bodies), 1.0, args.concurrency))
                with CpuUse(proc.pid) as used:
                    run = asyncio.run(
                        closed_loop(base, recommend_body(bodies), args.closed_seconds, args.concurrency)
                    )
            run |= used.cores
            run["startup_s"] = startup
            out[str(w)] = run
        finally:
            stop_server(proc)
    first, last = str(args.workers[0]), str(args.workers[-1])
    out["speedup"] = out[last]["per_s"] / out[first]["per_s"]
    return out


async def swap_under_load(
    base: str, bodies: list[dict], rate: float, bundles: list[Path], swaps: int
) -> dict:
    """The open-loop client at ``rate`` while ``swaps`` reloads alternate between ``bundles``:
    every recommend request that is not a 200 counts as failed."""
    plain = [{**b, "explain": False} for b in bodies]
    duration = len(plain) / rate
    reloads: list[dict] = []

    async def reloader() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            for i in range(swaps):
                await asyncio.sleep(duration / (swaps + 1))
                t = time.perf_counter()
                body = json.dumps({"bundle": str(bundles[(i + 1) % len(bundles)])}).encode()
                async with session.post(base + "/v1/admin/reload", data=body, headers=JSON) as r:
                    reply = await r.json()
                reloads.append(
                    {
                        "status": r.status,
                        "seconds": time.perf_counter() - t,
                        "all_workers": reply.get("all_workers"),
                        "load_s": reply.get("load_seconds"),
                        "warm_s": reply.get("warm_seconds"),
                    }
                )

    run, _ = await asyncio.gather(open_loop(base, plain, rate), reloader())
    run["reloads"] = reloads
    return run


def swap_run(n: int, work: Path, bodies: list[dict], threads: list[str], args) -> dict:
    """A second bundle of the same ids beside the first (under the server's bundle root), then the
    open-loop run with reloads alternating between the two."""
    other = random_vector_bundle(n, dim=64, max_len=args.history, seed=1)
    other.save(work / f"b{n}-v2")
    del other
    extra = [*threads, "--workers", str(args.swap_workers)]
    proc, base, _ = start_server(work / f"b{n}", work / f"swap{n}.sqlite", extra)
    try:
        asyncio.run(open_loop(base, [{**b, "explain": False} for b in bodies[:200]], args.rate))
        pair = [work / f"b{n}", work / f"b{n}-v2"]
        return asyncio.run(swap_under_load(base, bodies, args.rate, pair, args.swaps))
    finally:
        stop_server(proc)
        shutil.rmtree(work / f"b{n}-v2", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--requests", type=int, default=1000, help="per open-loop run")
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument(
        "--naive-content-max", type=int, default=100_000, help="largest catalogue for the content naive path"
    )
    ap.add_argument("--repeats", type=int, default=3, help="open-loop runs per size (median p99 shown)")
    ap.add_argument(
        "--ann",
        nargs="*",
        default=["hnsw"],
        help="other indexes to compare with exact (exact-bf16, ivfpq, hnsw, ...)",
    )
    ap.add_argument(
        "--ann-max",
        type=int,
        default=100_000,
        help="largest catalogue for --ann (HNSW builds take minutes at 1M)",
    )
    ap.add_argument(
        "--ann-option",
        action="append",
        default=[],
        help="KEY=VALUE for the FAISS --ann servers (serve's --index-option), e.g. ef_search=256",
    )
    ap.add_argument(
        "--index-cache",
        type=Path,
        default=None,
        help="FAISS index cache of the servers (default: a fresh one in the run's directory)",
    )
    ap.add_argument("--explain-rate", type=float, default=20.0, help="rate of the run with explanations")
    ap.add_argument("--server-threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="worker counts for closed-loop throughput"
    )
    ap.add_argument("--closed-seconds", type=float, default=5.0, help="length of each closed-loop run")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    ap.add_argument(
        "--client",
        choices=["aiohttp", "wrk"],
        default="aiohttp",
        help="load generator of the workers comparison (wrk: C, little CPU of its own)",
    )
    ap.add_argument("--index", default="exact", help="index of the main open-loop runs (--index of serve)")
    ap.add_argument(
        "--server-workers", type=int, default=1, help="worker processes of the main open-loop server"
    )
    ap.add_argument("--swaps", type=int, default=3, help="reloads during the swap-under-load run (0: none)")
    ap.add_argument("--swap-workers", type=int, default=2, help="worker processes of the swap run")
    ap.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="0: isotropic Gaussian item rows (ANN's worst case); C: SYNTHETIC rows around C centres",
    )
    ap.add_argument("--spread", type=float, default=1.0, help="noise around a centre, in centre scale")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    report: dict = {
        "provenance": provenance(),
        "loadavg_start": os.getloadavg(),
        "cores": os.cpu_count(),
        "runs": [],
    }
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    # FAISS indexes built here (and by the servers started here) go to the run's own directory
    os.environ["LINKEDOUT_INDEX_CACHE"] = str(args.index_cache or work / "index-cache")
    try:
        for n in args.sizes:
            t = time.perf_counter()
            bundle = random_vector_bundle(
                n, dim=64, max_len=args.history, clusters=args.clusters, spread=args.spread
            )
            bundle.save(work / f"b{n}")
            build_s = time.perf_counter() - t
            bodies = [
                {"history": [f"i{i}" for i in rng.choice(n, size=args.history, replace=False)], "k": 10}
                for _ in range(args.requests)
            ]
            # every server of the run (an --ann run's own --index comes later on its command line: the
            # last value of an option is the one the CLI takes)
            threads = ["--threads", str(args.server_threads), "--index", args.index]
            threads += ["--workers", str(args.server_workers)] if args.server_workers > 1 else []
            proc, base, startup = start_server(work / f"b{n}", work / f"e{n}.sqlite", threads)
            try:
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                row = {
                    "items": n,
                    "index": args.index,
                    "server_workers": args.server_workers,
                    "startup_s": startup,
                    "rss_mb": rss,
                    "bundle_build_s": build_s,
                    "loadavg": os.getloadavg(),
                }
                row["recommend_runs"] = recommend_runs(base, bodies, args)
                row["recommend"] = median_p99(row["recommend_runs"])
                row["recommend_explain"] = asyncio.run(  # explanations cost ~20 user-encoder passes
                    open_loop(base, [{**b, "explain": True} for b in bodies[:200]], args.explain_rate)
                )
                row["throughput"] = asyncio.run(closed_loop(base, recommend_body(bodies), 4.0, 16))
                if n == args.sizes[0]:
                    row["events_1"] = asyncio.run(closed_loop(base, events_body(n, 1), 4.0, 16, "/v1/events"))
                    row["events_50"] = asyncio.run(
                        closed_loop(base, events_body(n, 50), 4.0, 8, "/v1/events")
                    )
                    row["events_50"]["events_per_s"] = row["events_50"]["per_s"] * 50
                row["rss_mb_after"] = psutil.Process(proc.pid).memory_info().rss / 2**20
            finally:
                stop_server(proc)
            for kind in args.ann if n <= args.ann_max else []:
                row[f"ann_{kind}"] = ann_run(bundle, work / f"b{n}", work, kind, bodies, threads, args)
            if len(args.workers) > 1:
                row["workers"] = workers_throughput(work / f"b{n}", work, bodies, threads, args)
                print(json.dumps({"items": n, "workers": row["workers"]}), flush=True)
            if args.swaps:
                row["swap"] = swap_run(n, work, bodies, threads, args)
            row["fast_inprocess_ms"] = fast_path_inprocess(bundle, args.history, 200)
            row["naive_id_ms"] = naive_path(n, args.history, 30, content=False)
            if n <= args.naive_content_max:
                row["naive_content_ms"] = naive_path(n, args.history, 5, content=True)
            del bundle
            shutil.rmtree(work / f"b{n}", ignore_errors=True)
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_end"] = os.getloadavg()
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


def print_table(report: dict) -> None:
    print(
        f"\nload average at start {report['loadavg_start']}, end {report['loadavg_end']}, "
        f"{report['cores']} cores\n"
    )
    print(
        "| items | p50 / p99 ms @ rate (p99 of each run) | + explain p50 / p99 @ rate | max req/s (p99 ms) "
        "| in-process fast ms | naive id ms | naive content ms | startup s | RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        a, e, t = r["recommend"], r["recommend_explain"], r["throughput"]
        runs_p99 = " / ".join(f"{x['p99_ms']:.1f}" for x in r.get("recommend_runs", [a]))
        nc = f"{r['naive_content_ms']:.1f}" if "naive_content_ms" in r else "-"
        print(
            f"| {r['items']:,} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} @ {a['achieved_rps']:.0f}/s "
            f"({runs_p99}) | "
            f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} @ {e['achieved_rps']:.0f}/s | "
            f"{t['per_s']:.0f} ({t['p99_ms']:.1f}) | "
            f"{r['fast_inprocess_ms']:.2f} | {r['naive_id_ms']:.2f} | {nc} | {r['startup_s']:.1f} | "
            f"{r['rss_mb_after']:.0f} |"
        )
    ann = [(r, k[4:], r[k]) for r in report["runs"] for k in r if k.startswith("ann_")]
    if ann:
        print(
            "\n| items | index | p50 / p99 ms @ rate (p99 of each run) | recall@10 vs exact "
            "| startup s | RSS MB |"
        )
        print("|---|---|---|---|---|---|")
        for r, kind, a in ann:
            m = a["recommend"]
            each = " / ".join(f"{x['p99_ms']:.1f}" for x in a["recommend_runs"])
            print(
                f"| {r['items']:,} | {kind} | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} "
                f"@ {m['achieved_rps']:.0f}/s ({each}) | {a['recall_at_10']:.3f} | {a['startup_s']:.1f} "
                f"| {a['rss_mb']:.0f} |"
            )
    if any("workers" in r for r in report["runs"]):
        print("\n| items | closed-loop req/s (p99 ms) per worker count | speedup |")
        print("|---|---|---|")
        for r in report["runs"]:
            if "workers" in r:
                w = r["workers"]
                each = ", ".join(
                    f"{k}: {v['per_s']:.0f} ({v['p99_ms']:.1f})" for k, v in w.items() if k != "speedup"
                )
                print(f"| {r['items']:,} | {each} | {w['speedup']:.2f}x |")
    if any("swap" in r for r in report["runs"]):
        print("\n| items | swap under load: requests @ rate | failed | p50 / p99 ms | reloads (status, s) |")
        print("|---|---|---|---|---|")
        for r in report["runs"]:
            if "swap" in r:
                sw = r["swap"]
                rel = ", ".join(f"{x['status']} {x['seconds']:.2f}" for x in sw["reloads"])
                print(
                    f"| {r['items']:,} | {sw['requests']} @ {sw['achieved_rps']:.0f}/s | {sw['errors']} | "
                    f"{sw['p50_ms']:.2f} / {sw['p99_ms']:.2f} | {rel} |"
                )
    for r in report["runs"]:
        if "events_1" in r:
            print(
                f"\nevents (SQLite WAL, synchronous=FULL): 1 per request {r['events_1']['per_s']:.0f}/s "
                f"(p99 {r['events_1']['p99_ms']:.1f} ms), "
                f"50 per request {r['events_50']['events_per_s']:.0f} events/s"
            )


if __name__ == "__main__":
    main()
