"""Load interaction logs (+ item metadata) from the layouts public data comes in; write RecBole atomic.

``load_interactions(path)`` looks at the path and picks the reader:

=============  ==========================================================================================
format         recognised by
=============  ==========================================================================================
``atomic``     ``X.inter`` (+ ``X.item``): RecBole atomic files, header ``user_id:token item_id:token ...``
``movielens``  ``u.data`` (+ ``u.item``, ``u.genre``): the original MovieLens-100K zip
``microlens``  ``<prefix>_pairs.csv`` or ``_pairs.tsv`` (+ ``<prefix>_title_en.csv``): westlake-repl/MicroLens
``csv``        any other ``.csv/.tsv/.txt`` with a header: user/item/time columns given or guessed
``parquet``    ``.parquet``: the same, columns by name
=============  ==========================================================================================

A folder is searched for those files in that order; each format's reader is a module of
`linkedout.data.readers` named after it (``csv`` and ``parquet``: ``tabular``). Paths only: a sample name
such as ``ml-100k`` is turned into its cached path by `linkedout.samples.resolve_dataset`, which the
commands that accept names call first (``data-info``, ``train --dataset``, a run's `DatasetSpec`).
Every interaction is kept (implicit feedback, as RecBole and DFF do) unless ``min_rating`` says
otherwise. Readers are pyarrow end to end (multithreaded parsing, no Python loop over rows, no pandas):
the 10M-event benchmark (``benchmarks/load_split_10m.py``) holds them to it.
Malformed files raise `DataFormatError` naming file, 1-based line and column.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from linkedout.data.interactions import Interactions
from linkedout.data.itemtable import ID_COLUMN, ItemTable
from linkedout.data.readers import atomic, microlens, movielens, tabular
from linkedout.data.readers.common import RawEvents
from linkedout.data.textio import DataFormatError, unify_id_types

__all__ = [
    "FORMATS",
    "DataFormatError",
    "ItemTable",
    "LoadedDataset",
    "detect_format",
    "load_interactions",
    "write_atomic",
]

FORMATS = ("atomic", "movielens", "microlens", "csv", "parquet")
_ALIASES = {
    "recbole": "atomic",
    "inter": "atomic",
    "movielens-100k": "movielens",
    "tsv": "csv",
    "pq": "parquet",
}
_TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class LoadedDataset:
    """What `load_interactions` returns: the events, the items' metadata and where they came from.

    ``notes`` records every decision a reader took on the user's behalf (ratings ignored, file order
    used as time, which of two files was preferred) so that reports can print them."""

    interactions: Interactions
    item_meta: ItemTable
    name: str
    source: Path
    format: str
    notes: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)

    def summary(self) -> dict:
        ids = self.interactions.item_ids
        with_meta = int(np.isin(ids, self.item_meta.ids).sum()) if len(self.item_meta) else 0
        return {
            "name": self.name,
            "format": self.format,
            "source": str(self.source),
            **self.interactions.summary(),
            "items_with_metadata": with_meta,
            "metadata_columns": self.item_meta.columns,
        }


@dataclass(frozen=True)
class _Located:
    format: str
    events: Path
    items: Path | None
    name: str
    notes: tuple[str, ...] = ()


def load_interactions(
    path: str | Path,
    *,
    format: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    min_rating: float | None = None,
    rating_col: str | None = None,
) -> LoadedDataset:
    """Read an interaction log (and item metadata next to it) into `Interactions` + `ItemTable`.

    ``format`` overrides detection (one of `FORMATS`, or ``recbole``/``tsv``); ``user_col``,
    ``item_col``, ``time_col`` name the columns of atomic/CSV/Parquet files when the common names
    (user_id, userId, item_id, movieId, video_id, timestamp, ts, ...) are not there; ``sep`` the field
    separator of text files. ``min_rating`` keeps only events rated at least that much.
    Raises FileNotFoundError for a missing path and `DataFormatError` for anything malformed."""
    t0 = time.perf_counter()
    fmt = _canonical_format(format, path)
    source = _resolve(path)
    loc = _locate(source, fmt)
    want_rating = min_rating is not None
    if loc.format == "atomic":
        events = atomic.read_atomic_inter(loc.events, user_col, item_col, time_col, want_rating, sep)
        meta = atomic.read_atomic_items(loc.items, item_col, sep) if loc.items else None
    elif loc.format == "movielens":
        events = movielens.read_movielens_data(loc.events, want_rating)
        meta = movielens.read_movielens_items(loc.items) if loc.items else None
    elif loc.format == "microlens":
        reader = microlens.read_microlens_tsv if loc.events.suffix == ".tsv" else microlens.read_microlens_csv
        events = reader(loc.events, want_rating)
        meta = microlens.read_microlens_titles(loc.items) if loc.items else None
    elif loc.format == "parquet":
        cols = (user_col, item_col, time_col, rating_col)
        events, meta = tabular.read_parquet(loc.events, *cols, want_rating), None
    else:
        cols = (user_col, item_col, time_col, rating_col)
        events, meta = tabular.read_csv(loc.events, *cols, want_rating, sep), None
    t1 = time.perf_counter()
    notes = [*loc.notes, *events.notes]
    events = _filter_ratings(events, min_rating, loc.events, notes)
    items, meta = _unify(events.items, meta)
    interactions = Interactions.from_arrays(events.users, items, events.times)
    t2 = time.perf_counter()
    return LoadedDataset(
        interactions=interactions,
        item_meta=meta,
        name=loc.name,
        source=loc.events,
        format=loc.format,
        notes=tuple(notes),
        timings={"read": t1 - t0, "build": t2 - t1},
    )


def write_atomic(data: LoadedDataset | Interactions, folder: str | Path, name: str | None = None) -> Path:
    """Write ``<folder>/<name>.inter`` (+ ``<name>.item`` when ``data`` has metadata) in RecBole's atomic
    format, readable back by `load_interactions` and by RecBole itself. Returns the ``.inter`` path.

    Ratings are not written: `LoadedDataset` keeps the implicit-feedback events only."""
    if isinstance(data, LoadedDataset):
        return atomic.write_atomic(data.interactions, folder, name or data.name, data.item_meta)
    if name is None:
        raise ValueError("write_atomic(Interactions, folder, name): name is required")
    return atomic.write_atomic(data, folder, name)


def detect_format(path: str | Path) -> str:
    """The format `load_interactions` would use for ``path`` (a file or a folder)."""
    return _locate(_resolve(path), None).format


# --- locating files -------------------------------------------------------------------------------


def _canonical_format(format: str | None, path: str | Path) -> str | None:
    if format is None:
        return None
    fmt = _ALIASES.get(format.lower(), format.lower())
    if fmt not in FORMATS:
        choices = ", ".join(FORMATS)
        raise DataFormatError(path, None, None, f"unknown format {format!r}; choose one of {choices}")
    return fmt


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        return p
    # Sample names (ml-100k) are resolved by the callers (linkedout.samples.resolve_dataset): readers
    # take paths and never import the fetch machinery.
    raise FileNotFoundError(f"{p}: no such file or folder")


def _locate(path: Path, fmt: str | None) -> _Located:
    if path.is_dir():
        return _locate_in_folder(path, fmt)
    return _located_file(path, fmt or _format_of_file(path))


def _format_of_file(path: Path) -> str:
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix == ".inter":
        return "atomic"
    if suffix == ".item":
        raise DataFormatError(path, None, None, "this is an item file; pass its .inter file or the folder")
    if name == "u.data":
        return "movielens"
    if name.endswith(("_pairs.csv", "_pairs.tsv")):
        return "microlens"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _TEXT_SUFFIXES:
        return "csv"
    raise DataFormatError(
        path, None, None, f"unknown format (from the file name); pass format= one of {', '.join(FORMATS)}"
    )


def _locate_in_folder(folder: Path, fmt: str | None) -> _Located:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    pairs = [p for p in files if p.name.lower().endswith(("_pairs.csv", "_pairs.tsv"))]
    found = {
        "atomic": [p for p in files if p.suffix == ".inter"],
        "movielens": [p for p in files if p.name == "u.data"],
        "microlens": pairs,
        "parquet": [p for p in files if p.suffix.lower() in _PARQUET_SUFFIXES],
        "csv": [p for p in files if p.suffix.lower() in _TEXT_SUFFIXES and p not in pairs],
    }
    for f in [fmt] if fmt else list(FORMATS):
        candidates = found[f]
        if not candidates:
            continue
        if f == "atomic":
            named = [p for p in candidates if p.stem == folder.name]
            candidates = named or candidates
        notes: tuple[str, ...] = ()
        if f == "microlens":
            prefixes = sorted({p.name[: -len("_pairs.csv")] for p in candidates})
            if len(prefixes) == 1:
                with_time = [p for p in candidates if p.suffix.lower() == ".csv"]
                if with_time and len(with_time) < len(candidates):
                    notes = (f"{with_time[0].name} preferred over the .tsv: it has timestamps",)
                candidates = with_time or candidates
        if len(candidates) > 1:
            listed = ", ".join(p.name for p in candidates)
            raise DataFormatError(folder, None, None, f"several {f} files ({listed}); pass one of them")
        located = _located_file(candidates[0], f)
        return _Located(located.format, located.events, located.items, located.name, notes + located.notes)
    what = f"no {fmt} files" if fmt else "unknown format"
    raise DataFormatError(
        folder,
        None,
        None,
        f"{what}: expected X.inter (RecBole atomic), u.data (MovieLens-100K), <prefix>_pairs.csv|tsv "
        f"(MicroLens) or one .csv/.tsv/.parquet file; found {', '.join(p.name for p in files) or 'nothing'}",
    )


def _located_file(path: Path, fmt: str) -> _Located:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "atomic":
        items = path.with_suffix(".item")
        return _Located(fmt, path, items if items.exists() else None, path.stem)
    if fmt == "movielens":
        items = path.with_name("u.item")
        name = path.parent.name or "ml-100k"
        return _Located(fmt, path, items if items.exists() else None, name)
    if fmt == "microlens":
        paired = path.name.lower().endswith(("_pairs.csv", "_pairs.tsv"))
        prefix = path.name[: -len("_pairs.csv")] if paired else path.stem
        titles = [path.with_name(f"{prefix}_{s}.csv") for s in ("title_en", "titles", "title")]
        existing = [t for t in titles if t.exists()]
        return _Located(fmt, path, existing[0] if existing else None, prefix)
    return _Located(fmt, path, None, path.stem)


# --- finishing ----------------------------------------------------------------------------------------


def _filter_ratings(events: RawEvents, min_rating: float | None, path: Path, notes: list[str]) -> RawEvents:
    if min_rating is None:
        if events.has_ratings:
            notes.append("ratings ignored: every event kept as implicit feedback (min_rating= filters)")
        return events
    if events.ratings is None:
        raise DataFormatError(path, None, None, "min_rating given but the file has no rating column")
    keep = events.ratings >= min_rating
    notes.append(f"kept {int(keep.sum())} of {len(keep)} events rated >= {min_rating}")
    if not keep.any():
        raise DataFormatError(path, None, None, f"no event is rated >= {min_rating}")
    mask = pa.array(keep)
    times = events.times[keep] if events.times is not None else np.flatnonzero(keep)
    users, items = events.users.filter(mask), events.items.filter(mask)
    return RawEvents(users, items, times, events.ratings[keep], events.notes, has_ratings=True)


def _unify(items: pa.Array, meta: ItemTable | None) -> tuple[pa.Array, ItemTable]:
    """Give event item ids and metadata ids one type (numbers in one file, strings in the other: both
    become strings) so that ``item_meta[interactions.item_ids[i]]`` always finds the row."""
    if meta is None:
        return items, ItemTable.empty(items.type)
    meta_ids = meta.table[ID_COLUMN].combine_chunks()
    items2, meta_ids2 = unify_id_types(items, meta_ids)
    if meta_ids2.type != meta_ids.type:
        meta = ItemTable(meta.table.set_column(0, ID_COLUMN, meta_ids2))
    return items2, meta
