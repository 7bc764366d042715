"""The documented multi-node layout on separate hosts (network namespaces on this machine, see
tests/netns.py): PostgreSQL on host `db`, two stateless `linkedout serve` replicas on hosts `r1` and
`r2` over one shared bundle directory, the client on a third address. What crosses the network here
is what crosses it in a deployment: TCP to PostgreSQL, HTTP to each replica, the item feed between
replicas through the database.

Checked: an item added through r1 is recommended by r2 within the poll bound; events streamed to both
replicas while r1 is killed with -9 are all stored if acknowledged; r2 cut off from the network
answers writes with 503 within a bound (never a hang, nothing acknowledged that is not stored), keeps
answering recommendations from histories, and writes again once the link is back."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from linkedout.synthetic import synthetic_bundle
from netns import Host, lan, set_link
from test_events_process import stored_ids, stream_events, wait_for
from test_serve_process import linkedout_cmd

pytestmark = pytest.mark.slow

KEY = "multihost-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PORT = 8000  # every host has its own address: the same port on each, as on real machines


@contextlib.contextmanager
def postgres_on(host: Host, subnet_cidr: str) -> Iterator[str]:
    """A real PostgreSQL (pgserver's binaries) listening on TCP at ``host``'s address only, trusting
    the test subnet; yields its URL. initdb runs through pgserver (it creates the system user that
    postgres, which refuses root, runs as); the server itself is started inside the namespace."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver is not installed (pip install pgserver)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'linkedout[postgres]')")
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="linkedout-pg-"))
    data = root / "data"
    proc = None
    try:
        try:
            pgserver.get_server(data, cleanup_mode="stop").cleanup()  # initdb, then stop
        except Exception as e:
            pytest.skip(f"PostgreSQL (pgserver) could not start here: {type(e).__name__}: {e}")
        with (data / "pg_hba.conf").open("a") as f:
            f.write(f"host all all {subnet_cidr} trust\n")
        postgres = Path(pgserver.__file__).parent / "pginstall" / "bin" / "postgres"  # the wheel's binary
        cmd = [str(postgres), "-D", str(data), "-h", host.address]
        cmd += ["-p", "5432", "-k", ""]  # TCP only: no unix socket to share across hosts
        cmd = host.exec("runuser", "-u", "pgserver", "--", *cmd)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"postgresql://postgres@{host.address}:5432/postgres"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                psycopg.connect(url, connect_timeout=1).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_for(up, 30, f"PostgreSQL on {host.address}")
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def replica(host: Host, bundle: Path, events_url: str) -> Iterator[tuple[subprocess.Popen, str]]:
    cmd = [*linkedout_cmd(), "serve", "--bundle", str(bundle), "--host", host.address]
    cmd += ["--port", str(PORT), "--api-key", KEY, "--events", events_url, "--item-poll-seconds", "0.5"]
    proc = subprocess.Popen(host.exec(*cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://{host.address}:{PORT}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"replica on {host.name} exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 90, f"the replica on {host.address}")
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_replicas_on_separate_hosts_share_postgres_survive_a_killed_replica_and_a_partition(tmp_path):
    bundle, _ = synthetic_bundle(20)
    bundle.save(tmp_path / "bundle")  # the shared bundle directory (one filesystem stands in for NFS)
    with lan(["db", "r1", "r2"]) as hosts:
        subnet = hosts["db"].address.rsplit(".", 1)[0] + ".0/24"
        with (
            postgres_on(hosts["db"], subnet) as url,
            replica(hosts["r1"], tmp_path / "bundle", url) as (r1_proc, r1),
            replica(hosts["r2"], tmp_path / "bundle", url) as (_, r2),
        ):
            # 1. an item added through r1 reaches r2 through the database's item feed
            tokens = np.random.default_rng(3).standard_normal((4, 4, 12)).round(3).tolist()
            body = {"item_id": "fresh", "title": "new", "tokens": tokens}
            assert httpx.post(r1 + "/v1/items", json=body, headers=AUTH).status_code == 201
            added = time.monotonic()
            wait_for(lambda: httpx.get(r2 + "/v1/items/fresh").status_code == 200, 10, "the item on r2")
            seen_after = time.monotonic() - added
            assert seen_after <= 0.5 + 1.0, f"seen on the other host after {seen_after:.2f} s"
            recs = httpx.post(r2 + "/v1/recommend", json={"history": ["i0"], "k": 21}).json()
            assert "fresh" in {it["item_id"] for it in recs["items"]}

            # 2. events to both replicas; r1 is killed with -9 mid-stream; r2 goes on
            acked: list[str] = []
            lock, stop = threading.Lock(), threading.Event()
            streams = [
                threading.Thread(target=stream_events, args=(base, w, acked, lock, stop, AUTH))
                for w, base in enumerate([r1, r2, r2])
            ]
            for t in streams:
                t.start()
            wait_for(lambda: len(acked) >= 300, 60, "300 acknowledged events")
            r1_proc.send_signal(signal.SIGKILL)
            r1_proc.wait(timeout=10)
            before = len(acked)
            wait_for(lambda: len(acked) >= before + 150, 60, "r2 acknowledging after r1 died")
            stop.set()
            for t in streams:
                t.join(timeout=30)
            missing = set(acked) - stored_ids(url)
            assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"

            # 3. r2 cut off from the database (and everyone): writes fail fast, reads from a history
            # need no database and go on; nothing is acknowledged that is not stored
            r2_host = hosts["r2"]
            set_link(r2_host, up=False)
            try:
                # the client is cut off too: ask r2 from inside its own host
                probe = r2_host.exec(sys.executable, "-c", PROBE, r2, KEY)
                started = time.monotonic()
                out = subprocess.run(probe, capture_output=True, text=True, timeout=120)
                took = time.monotonic() - started
                assert out.returncode == 0, out.stderr
                write_status, recommend_status = out.stdout.split()
                assert write_status == "503", out.stdout
                assert recommend_status == "200", out.stdout
                assert took < 30, f"a write during a partition took {took:.1f} s to fail"
            finally:
                set_link(r2_host, up=True)
            # "cut-1" was not acknowledged: stored or not, a client retries it under the same event_id
            ok = {"events": [{"event_id": "healed-1", "user_id": "u9", "item_id": "i3"}]}
            wait_for(
                lambda: httpx.post(r2 + "/v1/events", json=ok, headers=AUTH, timeout=30).status_code == 200,
                60,
                "a write through r2 after the link is back",
            )
            assert "healed-1" in stored_ids(url)


# run inside r2's namespace during the partition: one write (must fail with 503, not hang) and one
# recommendation from a history (needs no database)
PROBE = """
import sys, httpx
base, key = sys.argv[1], sys.argv[2]
ev = {"events": [{"event_id": "cut-1", "user_id": "u9", "item_id": "i3"}]}
w = httpx.post(base + "/v1/events", json=ev, headers={"Authorization": "Bearer " + key}, timeout=100)
r = httpx.post(base + "/v1/recommend", json={"history": ["i0", "i1"], "k": 3}, timeout=100)
print(w.status_code, r.status_code)
"""
