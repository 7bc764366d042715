"""Where a benchmark result came from: the command, the code, the machine, the date.

    from provenance import provenance          # benchmarks/ is on sys.path when a script runs
    result["provenance"] = provenance()

Every script that writes into benchmarks/results calls this once, before its first run, and stores
the block beside its numbers (per run, where result files are merged run by run). Standard library
only: benchmarks/recbole_reference.py's parent side runs under a python that may have neither
linkedout nor torch installed. Lives here, not in the package: a results file is a benchmark
concept, and an installed linkedout has no git checkout to name a commit from.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# the CPU features that change how fast these benchmarks run (bf16 autocast needs AVX512-BF16 or AMX)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# environment variables that change the measured speed; the command alone does not show them
SPEED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """{"command", "commit", "machine", "date"} of this process (``argv`` defaults to sys.argv)."""
    python = os.path.basename(sys.executable) or "python"
    return {
        "command": shlex.join([python, *(sys.argv if argv is None else argv)]),
        "commit": git_commit(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
    }


def git_commit(repo: Path = REPO) -> str:
    """``git rev-parse HEAD``, with "+dirty" when tracked files differ from it ("unknown" without git).

    Untracked files do not count: a run's own new result file would otherwise mark it dirty."""
    try:
        head = _git(repo, "rev-parse", "HEAD")
        changed = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if changed else "")


def machine() -> dict[str, Any]:
    """CPU model, cores this process may use, speed-relevant CPU flags, memory, OS and versions."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    flags_line = next((line.split(":", 1)[1] for line in cpuinfo if line.startswith("flags")), "")
    flags = set(flags_line.split())
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo") if line.startswith("MemTotal")), 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores_available": cores,
        "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
        "memory_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "env": {k: os.environ[k] for k in SPEED_ENV if k in os.environ},
    }


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:  # not Linux: the fields fall back to what platform knows
        return []


def _version(package: str) -> str | None:
    # metadata, not import: torch takes seconds to import and may be absent (recbole_reference parent)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
