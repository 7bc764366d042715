"""Data flows one way: the server reads bundles and never imports the trainer or the extraction
pipeline (offline export lives in `linkedout.export`), and the loaders never import the network fetcher."""

from __future__ import annotations

import subprocess
import sys

SERVE_MODULES = [
    "linkedout.serve.app",
    "linkedout.serve.routes",
    "linkedout.serve.bundle",
    "linkedout.serve.engine",
]


def imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('linkedout')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_server_imports_neither_training_nor_offline_extraction():
    loaded = imported_after(SERVE_MODULES)
    assert "linkedout.serve.engine" in loaded  # the check itself ran
    offline = sorted(m for m in loaded if m.split(".")[1:2] in (["train"], ["extract"], ["export"], ["cli"]))
    assert not offline, f"serve pulls in offline modules: {offline}"


def test_the_event_store_imports_neither_the_server_nor_the_trainer():
    loaded = imported_after(["linkedout.events", "linkedout.events.sqlite", "linkedout.events.reader"])
    assert "linkedout.events.sqlite" in loaded
    wrong = sorted(m for m in loaded if m.split(".")[1:2] in (["serve"], ["train"], ["cli"]))
    assert not wrong, f"the event store pulls in: {wrong}"
