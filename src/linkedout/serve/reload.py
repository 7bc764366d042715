"""How a bundle reload reaches every worker process of one server: a small control directory.

``linkedout serve --workers N`` creates a fresh directory per server start (removed at exit) and
gives it to every worker. In it:

    reload.json         {"generation": g, "bundle": "/abs/path"}: the bundle every worker must serve.
                        Written (temporary file + rename: readers see the old or the new file, never
                        half of one) by the worker that completed a reload, under ``lock``.
    worker-<pid>.json   {"generation": g, "bundle_id": ..., "error": ..., "failed": g'}: what that
                        worker serves (and the last generation it could not load, and why),
                        rewritten after each swap or failed attempt; the reload reply waits on these.
    lock                flock'ed while a generation number is taken, so two reloads at once get
                        g and g+1 and every worker converges on the later one.

Each worker stats ``reload.json`` every ``poll_s`` seconds (one ``stat`` call: no read unless it
changed) and reloads when it names a newer generation. Bound: a worker serves generation g at most
``poll_s`` + its own load-and-warm time after g was published. A worker that (re)starts reads
``reload.json`` first, so a crashed-and-restarted worker comes back on the current bundle, not the
one on the command line.

``--watch-bundle`` is the other trigger: every worker stats the configured bundle's ``bundle.json``
(inode and mtime; `Bundle.save` renames a whole new directory into place, so the inode changes) and
reloads the path when it changed; no control file is needed because every worker watches the same file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RELOAD_FILE = "reload.json"


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot happen for our own workers)
        return True
    return True


class ControlDir:
    """The reload protocol's files (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.reload_file = self.path / RELOAD_FILE

    def stamp(self) -> tuple[int, int] | None:
        """(mtime ns, inode) of reload.json, or None: cheap enough to call twice a second."""
        try:
            st = os.stat(self.reload_file)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def current(self) -> tuple[int, str] | None:
        """(generation, bundle path) published last, or None before the first reload."""
        try:
            data = json.loads(self.reload_file.read_text())
        except FileNotFoundError:
            return None
        return int(data["generation"]), str(data["bundle"])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.path / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # held for a file write: microseconds
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def publish(self, bundle: str) -> int:
        """Take the next generation number for ``bundle`` and publish it; returns the generation."""
        with self.locked():
            cur = self.current()
            generation = (cur[0] if cur else 0) + 1
            _write_atomic(self.reload_file, {"generation": generation, "bundle": bundle})
        return generation

    def report(
        self, generation: int, bundle_id: str, error: str | None = None, failed: int | None = None
    ) -> None:
        """This worker's state, for the reload reply (and for an operator looking at the directory)."""
        data = {
            "pid": os.getpid(),
            "generation": generation,
            "bundle_id": bundle_id,
            "error": error,
            "failed": failed,
        }
        _write_atomic(self.path / f"worker-{os.getpid()}.json", data)

    def workers(self) -> dict[int, dict[str, Any]]:
        """The reports of the live workers (files of dead pids are skipped, and removed)."""
        out: dict[int, dict[str, Any]] = {}
        for f in self.path.glob("worker-*.json"):
            try:
                pid = int(f.stem.split("-", 1)[1])
                data = json.loads(f.read_text())
            except (ValueError, OSError):
                continue  # replaced while read: the next look sees the new one
            if _pid_alive(pid):
                out[pid] = data
            else:
                f.unlink(missing_ok=True)
        return out


def bundle_stamp(bundle_dir: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(mtime ns, inode) of a bundle's bundle.json for ``--watch-bundle``; None while it is absent
    (between `Bundle.save`'s removal of the old directory and the rename of the new one)."""
    try:
        st = os.stat(Path(bundle_dir) / "bundle.json")
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino
