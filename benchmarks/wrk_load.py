"""Closed-loop HTTP load from `wrk` (C, event-driven; Debian package `wrk`) instead of a Python client.

On a 2-core machine the load generator shares the cores with the server: an aiohttp client building
JSON in Python spends about as much CPU per request as the server does, so it caps what a server can
show. wrk spends a small fraction of that, which is the nearest this machine gets to a client on
another box. Bodies come from a Lua `request()` function (each wrk thread numbers its own requests,
so event ids stay unique); `done()` prints the summary as one JSON line, parsed here.

Counted as acknowledged: completed requests minus non-2xx answers (wrk's `errors.status`). Requests in
flight when the time is up are not counted (the server may still store them: stored >= acknowledged).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

DONE = r"""
done = function(summary, latency, requests)
  io.write(string.format(
    '\nWRK_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""

THREAD_IDS = r"""
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
"""


def events_script(tag: str, per_request: int, n_items: int) -> str:
    """POST /v1/events with ``per_request`` events whose ids are unique per run (``tag``), thread
    and request; users and items cycle like benchmarks/events_ingest.py's Python client."""
    return (
        THREAD_IDS
        + f"""
local n = 0
request = function()
  n = n + 1
  local parts = {{}}
  for j = 0, {per_request - 1} do
    parts[#parts + 1] = string.format(
      '{{"event_id":"{tag}-%d-%d-%d","user_id":"u%d-%d","item_id":"i%d","ts":%d}}',
      tid, n, j, tid, n % 100, (n + j) % {n_items}, 1700000000 + n)
  end
  return wrk.format("POST", "/v1/events", {{["Content-Type"] = "application/json"}},
    '{{"events":[' .. table.concat(parts, ",") .. ']}}')
end
"""
        + DONE
    )


def bodies_script(path: str, bodies: list[dict]) -> str:
    """POST each of ``bodies`` (JSON) to ``path`` in turn, each thread starting at its own offset."""
    encoded = ",\n".join("[==[" + json.dumps(b) + "]==]" for b in bodies)
    return (
        THREAD_IDS
        + f"""
local bodies = {{
{encoded}
}}
local i = 0
request = function()
  i = i + 1
  local body = bodies[((i + tid * 997) % #bodies) + 1]
  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, body)
end
"""
        + DONE
    )


def available() -> bool:
    return shutil.which("wrk") is not None


def run(base: str, script: str, seconds: float, connections: int, threads: int = 1) -> dict:
    """Run wrk against ``base`` for ``seconds``; returns ok requests/s and latency (closed loop)."""
    if not available():
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "30s",
        ]
        out = subprocess.run([*cmd, "-s", f.name, base], capture_output=True, text=True, check=True)
    finally:
        Path(f.name).unlink()
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
    s = json.loads(line[len("WRK_JSON ") :])
    wall = s["duration_us"] / 1e6
    ok = s["requests"] - s["status_errors"]
    return {
        "client": "wrk",
        "connections": connections,
        "threads": threads,
        "seconds": round(wall, 2),
        "ok_requests": ok,
        "per_s": ok / wall,
        "p50_ms": s["p50_us"] / 1000,
        "p99_ms": s["p99_us"] / 1000,
        "errors": s["requests"] - ok + s["connect_errors"] + s["read_errors"] + s["timeouts"],
    }
