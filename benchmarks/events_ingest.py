"""Event ingestion through HTTP: acknowledged watch events per second into `linkedout serve`, for the
SQLite store and for PostgreSQL (one writer connection doing group commits, and several writers), one
event per request (N concurrent clients) and 1,000 per request. Every reply counted was sent after
its COMMIT; at the end the store is read back and must hold at least every acknowledged event.

    .venv/bin/pip install -e ".[serve,postgres,dev]"     # aiohttp, psycopg, pgserver
    .venv/bin/python benchmarks/events_ingest.py --seconds 10 --clients 32 \
        --out benchmarks/results/events_ingest.json

`--client wrk` drives the load with wrk (benchmarks/wrk_load.py: a C client, a small fraction of the
CPU of the Python one, which on 2 shared cores otherwise caps what the server can show);
`--server-workers N` runs `linkedout serve --workers N`.

Goals (issue 14, PostgreSQL): >= 2,000 acknowledged events/s at 1 event per request, >= 40,000/s
batched. PostgreSQL is a pgserver instance (postgres 16, unix socket, default fsync=on,
synchronous_commit=on) in a temporary directory unless --postgres-url names one. The server and the
clients share the machine's cores, as on a single host; the load average is recorded with each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np

import wrk_load
from linkedout.synthetic import synthetic_bundle
from provenance import provenance

JSON = {"content-type": "application/json"}
N_ITEMS = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle_dir: Path, events: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("linkedout")
    cmd = [str(exe), "serve", "--bundle", str(bundle_dir), "--port", str(port), "--events", events, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("server did not start")


async def ingest(base: str, tag: str, seconds: float, clients: int, per_request: int) -> dict:
    """Closed loop: each client posts its next batch as soon as the previous one was answered."""
    acked = 0
    errors = 0
    lat: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        end = time.perf_counter() + seconds

        async def client(w: int) -> None:
            nonlocal acked, errors
            n = 0
            while time.perf_counter() < end:
                events = [
                    {
                        "event_id": f"{tag}-{w}-{n}-{j}",
                        "user_id": f"u{w}-{n % 100}",
                        "item_id": f"i{(n + j) % N_ITEMS}",
                        "ts": 1.7e9 + n,
                    }
                    for j in range(per_request)
                ]
                body = json.dumps({"events": events}).encode()
                t = time.perf_counter()
                try:
                    async with s.post(base + "/v1/events", data=body, headers=JSON) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                lat.append(time.perf_counter() - t)
                if ok:
                    acked += per_request
                else:
                    errors += 1
                n += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "events_per_request": per_request,
        "clients": clients,
        "seconds": round(wall, 2),
        "acked_events": acked,
        "acked_events_per_s": acked / wall,
        "requests_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


def load(base: str, tag: str, seconds: float, clients: int, per_request: int, client: str) -> dict:
    if client == "aiohttp":
        return asyncio.run(ingest(base, tag, seconds, clients, per_request))
    r = wrk_load.run(base, wrk_load.events_script(tag, per_request, N_ITEMS), seconds, clients)
    acked = r["ok_requests"] * per_request
    return {
        **r,
        "events_per_request": per_request,
        "clients": clients,
        "acked_events": acked,
        "acked_events_per_s": acked / r["seconds"],
        "requests_per_s": r["per_s"],
    }


def stored_events(url: str) -> int:
    from linkedout.events import open_event_store

    store = open_event_store(url)
    try:
        return store.count_events()
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--pg-writers", nargs="+", type=int, default=[1, 4], help="writer connections to try")
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients, 1 event per request")
    ap.add_argument("--batch-clients", type=int, default=4, help="concurrent clients, --batch per request")
    ap.add_argument("--batch", type=int, default=1000, help="events per request in the batched run")
    ap.add_argument("--postgres-url", default=None, help="use this database instead of a pgserver one")
    ap.add_argument("--client", choices=["aiohttp", "wrk"], default="aiohttp", help="load generator")
    ap.add_argument("--server-workers", type=int, default=1, help="linkedout serve --workers")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    result: dict = {"provenance": provenance(), "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="linkedout-events-bench-"))
    pg = None
    try:
        bundle, _ = synthetic_bundle(N_ITEMS)
        bundle.save(tmp / "bundle")
        configs: list[tuple[str, str, list[str]]] = []
        if "sqlite" in args.backends:
            configs.append(("sqlite", f"sqlite:///{tmp / 'events.sqlite'}", []))
        if "postgres" in args.backends:
            url = args.postgres_url
            if url is None:
                import pgserver

                pg = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
                url = pg.get_uri()
            configs += [(f"postgres writers={w}", url, ["--pg-writers", str(w)]) for w in args.pg_writers]
        workers = ["--workers", str(args.server_workers)] if args.server_workers > 1 else []
        for k, (name, url, extra) in enumerate(configs):
            proc, base = start_server(tmp / "bundle", url, extra + workers)
            try:
                before = stored_events(url)
                row = {
                    "store": name,
                    "load_avg_1m": os.getloadavg()[0],
                    "server_workers": args.server_workers,
                }
                row["single"] = load(base, f"s{k}", args.seconds, args.clients, 1, args.client)
                row["batched"] = load(
                    base, f"b{k}", args.seconds, args.batch_clients, args.batch, args.client
                )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            stored = stored_events(url) - before
            acked = row["single"]["acked_events"] + row["batched"]["acked_events"]
            row["stored_minus_acked"] = stored - acked  # >= 0: nothing acknowledged was lost
            if stored < acked:
                raise SystemExit(f"{name}: {acked} events acknowledged but only {stored} stored")
            result["runs"].append(row)
            print(
                f"{name:22s} 1/request x{args.clients}: {row['single']['acked_events_per_s']:8.0f} ev/s "
                f"(p99 {row['single']['p99_ms']:.1f} ms)   {args.batch}/request x{args.batch_clients}: "
                f"{row['batched']['acked_events_per_s']:8.0f} ev/s (p99 {row['batched']['p99_ms']:.0f} ms)"
                f"   load {row['load_avg_1m']:.1f}",
                flush=True,
            )
    finally:
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
