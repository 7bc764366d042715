"""benchmarks/provenance.py: every results file says which command, commit and machine made it."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_provenance():
    spec = importlib.util.spec_from_file_location("provenance", BENCHMARKS / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_provenance_has_command_commit_machine_and_date() -> None:
    argv = ["benchmarks/baselines.py", "--out", "results/a b.json", "--note", "it's"]
    block = _load_provenance().provenance(argv)
    assert set(block) == {"command", "commit", "machine", "date"}
    # the command round-trips: quoting keeps the argument with a space and the quote intact
    assert shlex.split(block["command"]) == [Path(sys.executable).name, *argv]
    assert block["commit"] == "unknown" or len(block["commit"].removesuffix("+dirty")) == 40
    machine = block["machine"]
    for key in ("cpu", "cores_available", "cpu_flags", "memory_gib", "os", "python", "torch", "numpy", "env"):
        assert key in machine
    assert machine["cores_available"] >= 1
    assert set(machine["cpu_flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
    assert block["date"].endswith("Z")


def test_command_defaults_to_this_process_argv() -> None:
    assert shlex.split(_load_provenance().provenance()["command"])[1:] == sys.argv


def test_every_results_file_carries_provenance() -> None:
    import json

    for path in sorted((BENCHMARKS / "results").glob("*.json")):
        data = json.loads(path.read_text())
        assert {"command", "commit", "machine"} <= set(data["provenance"]), path.name
