"""`Catalog`: the items a recommender can show, each a video (local path or URI) with optional text.

An item is ``id`` (string), ``path`` (absolute local path or a URI such as ``s3://...``; ``""`` for a
text-only item: a manifest without a ``path`` column, or a log's item metadata), ``title``
and ``text`` (aux text: tags, ASR, description; what a prompt or text encoder may read), plus any
``extra`` columns a manifest carries (licence, source, duration...). Order is part of the contract:
it is stable (sorted ids for folders, file order for manifests), so row ``i`` of a feature matrix built
from the catalog is item ``i`` on every machine.

Why ids are strings: they come from file names and manifests, where "007" and "7" are different
items; join with an integer-keyed interaction log through ``str(item_id)`` (lookups accept ints).

Manifests are CSV/TSV (read through :mod:`linkedout.data.textio`, so errors name the file, the line
and the column) or Parquet. Relative paths in a manifest are relative to the manifest's folder, which
keeps a folder of clips plus its manifest movable as a whole.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from linkedout.data.textio import ID, DataFormatError, TextSpec, read_first_line, read_table

__all__ = ["VIDEO_EXTENSIONS", "Catalog", "CatalogItem"]

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".m4v",
    ".mov",
    ".webm",
    ".mkv",
    ".avi",
    ".ogv",
    ".mpg",
    ".mpeg",
    ".ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".gif",
)
REQUIRED = ("id", "path")  # path may be left out as a whole: a text-only catalogue (id + title/text)
OPTIONAL = ("title", "text")
_PARQUET = (".parquet", ".pq")


def _is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class CatalogItem:
    """One recommendable video. ``path`` is absolute (local) or a URI, ``""`` for a text-only item (no
    video: only text backbones read it); ``extra`` holds other columns."""

    id: str
    path: str
    title: str | None = None
    text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_uri(self) -> bool:
        return _is_uri(self.path)

    @property
    def local_path(self) -> Path | None:
        """The file on this machine, or None for a URI or a text-only item."""
        return None if self.is_uri or not self.path else Path(self.path)


class Catalog(Sequence[CatalogItem]):
    """An ordered, id-unique list of items with lookup by id.

    ``catalog[i]`` (int) is the i-th item, ``catalog["id"]`` the item with that id (a str key always
    means an id; use :meth:`get` or ``str(x)`` for integer-like ids); ``len``, iteration and ``in``
    work as for a list of items and a set of ids.
    """

    def __init__(self, items: Iterable[CatalogItem], *, source: str | None = None) -> None:
        self._items: tuple[CatalogItem, ...] = tuple(items)
        self.source = source
        self._index: dict[str, int] = {}
        for i, item in enumerate(self._items):
            if not isinstance(item.id, str) or not item.id:
                raise ValueError(f"item {i}: id must be a non-empty string, got {item.id!r}")
            if item.id in self._index:
                j = self._index[item.id]
                where = f" in {source}" if source else ""
                raise ValueError(f"duplicate id {item.id!r}{where}: items {j} and {i}")
            self._index[item.id] = i

    # -- access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self._items)

    def __getitem__(self, key: int | str | slice) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                return self._items[self._index[key]]
            except KeyError:
                raise KeyError(f"no item with id {key!r} in the catalog") from None
        if isinstance(key, slice):
            return Catalog(self._items[key], source=self.source)
        return self._items[key]

    def __contains__(self, item_id: object) -> bool:
        key = item_id.id if isinstance(item_id, CatalogItem) else str(item_id)
        return key in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Catalog({len(self)} items{src})"

    def get(self, item_id: object, default: CatalogItem | None = None) -> CatalogItem | None:
        """Item by id (ints are looked up as ``str(item_id)``), or ``default``."""
        i = self._index.get(str(item_id))
        return default if i is None else self._items[i]

    def index(self, item_id: object, *args: Any) -> int:  # type: ignore[override]
        """Row of an item id (its position in feature matrices built from this catalog)."""
        key = item_id.id if isinstance(item_id, CatalogItem) else str(item_id)
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"no item with id {key!r} in the catalog") from None

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self._items]

    def subset(self, ids: Iterable[object]) -> Catalog:
        """The items with these ids, in the order given (unknown ids raise KeyError)."""
        return Catalog((self[str(i)] for i in ids), source=self.source)

    def missing_files(self) -> list[CatalogItem]:
        """Items whose local file does not exist (URIs are not checked): a pre-flight for extraction."""
        return [it for it in self._items if not it.is_uri and not Path(it.path).is_file()]

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike[str],
        extensions: Iterable[str] = VIDEO_EXTENSIONS,
        *,
        recursive: bool = True,
    ) -> Catalog:
        """Every video under ``folder``: id = relative path without extension (``/``-separated).

        Sorted by id so the order does not depend on the file system. Hidden files and folders
        (``.git``, macOS ``._clip.mp4`` resource forks) are skipped. Two files that differ only by
        extension would share an id: that raises, naming both.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"catalog folder not found: {root}")
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
        found: dict[str, Path] = {}
        pattern = root.rglob("*") if recursive else root.glob("*")
        for p in pattern:
            rel = p.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in exts:
                continue
            if not p.is_file():
                continue
            item_id = rel.with_suffix("").as_posix()
            if item_id in found:
                raise ValueError(
                    f"two files in {root} map to item id {item_id!r}: {found[item_id].name} and {p.name}"
                )
            found[item_id] = p
        items = [CatalogItem(id=i, path=str(found[i].resolve())) for i in sorted(found)]
        return cls(items, source=str(root))

    @classmethod
    def from_manifest(
        cls, path: str | os.PathLike[str], *, columns: Mapping[str, str] | None = None
    ) -> Catalog:
        """Read a CSV/TSV/Parquet manifest with columns ``id``, ``path`` and optional ``title``, ``text``.

        Without a ``path`` column it is a text-only catalogue (every path ``""``, for text backbones),
        which then needs a ``title`` or ``text`` column.

        ``columns`` maps our names to the file's (``{"id": "item_id", "path": "video"}``). Other columns
        become ``extra`` (a file column named like one of ours that the mapping replaced, e.g. ``text``
        when ``{"text": "description"}``, too). Relative paths resolve against the manifest's folder;
        URIs are kept. Raises :class:`~linkedout.data.textio.DataFormatError` naming the file (and line,
        for text files) for a missing ``id``/``path`` column, an empty id or path, or a duplicate id
        (with both lines)."""
        mpath = Path(path).expanduser()
        if not mpath.is_file():
            raise FileNotFoundError(f"catalog manifest not found: {mpath}")
        rename = dict(columns or {})
        is_text = mpath.suffix.lower() not in _PARQUET
        table = _read_delimited(mpath, rename) if is_text else _read_parquet(mpath, rename)
        base = mpath.resolve().parent
        to_ours = {rename.get(k, k): k for k in (*REQUIRED, *OPTIONAL)}
        names = table.column_names
        cols = {to_ours[n]: table[n].to_pylist() for n in names if n in to_ours}
        extra_names = [n for n in names if n not in to_ours]
        extras = {n: table[n].to_pylist() for n in extra_names}
        if is_text:  # CSV cannot tell an empty string from a missing value: read both as missing
            cols = {k: [None if v == "" else v for v in vs] for k, vs in cols.items()}
            extras = {k: [None if v == "" else v for v in vs] for k, vs in extras.items()}
        items = []
        paths = cols.get("path", [None] * table.num_rows)  # no column: a text-only catalogue
        for r in range(table.num_rows):
            raw_path = "" if paths[r] is None else str(paths[r]).strip()
            if not raw_path or _is_uri(raw_path):
                full = raw_path
            else:
                full = str((base / Path(raw_path).expanduser()).resolve())
            items.append(
                CatalogItem(
                    id=str(cols["id"][r]).strip(),
                    path=full,
                    title=_text_or_none(cols.get("title", [None] * table.num_rows)[r]),
                    text=_text_or_none(cols.get("text", [None] * table.num_rows)[r]),
                    extra={k: extras[k][r] for k in extra_names},
                )
            )
        return cls(items, source=str(mpath))

    @classmethod
    def from_samples(cls, samples: Any, *, include_invalid: bool = False) -> Catalog:
        """The real clips of a fetched sample tier (:func:`linkedout.samples.fetch_samples`).

        Edge-case files (corrupt on purpose, black frames, trailers) are left out unless asked for.
        """
        clips = samples.clips if include_invalid else samples.valid_clips()
        items = [
            CatalogItem(
                id=c.name,
                path=str(Path(c.path).resolve()),
                title=c.name.split("/")[-1],
                extra={"source": c.source, "licence": c.licence, "note": c.note},
            )
            for c in sorted(clips, key=lambda c: c.name)
        ]
        return cls(items, source=f"samples:{samples.tier}")

    # -- output ----------------------------------------------------------------------------------

    def to_table(self, *, relative_to: str | os.PathLike[str] | None = None) -> pa.Table:
        """Columns id, path, title, text, then every extra key (first-seen order; absent -> null). A
        text-only catalogue (no item has a path) has no path column, so its manifest reads back."""
        base = Path(relative_to).resolve() if relative_to is not None else None
        extra_keys: dict[str, None] = {}
        for it in self._items:
            extra_keys.update(dict.fromkeys(it.extra))
        data: dict[str, Any] = {"id": pa.array([it.id for it in self._items], pa.string())}
        if any(it.path for it in self._items) or not self._items:
            data["path"] = pa.array([_portable(it.path, base) for it in self._items], pa.string())
        data["title"] = pa.array([it.title for it in self._items], pa.string())
        data["text"] = pa.array([it.text for it in self._items], pa.string())
        for k in extra_keys:
            data[k] = pa.array([it.extra.get(k) for it in self._items])
        return pa.table(data)

    def to_manifest(self, path: str | os.PathLike[str]) -> Path:
        """Write a manifest that :meth:`from_manifest` reads back to an equal catalog.

        Format by suffix (``.parquet``/``.pq``, ``.tsv``, else CSV). Files inside the manifest's folder
        are written relative to it (so the folder can move); others absolute; URIs as they are.
        """
        out = Path(path).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        table = self.to_table(relative_to=out.resolve().parent)
        tmp = out.with_name(f".{out.name}.tmp")
        if out.suffix.lower() in _PARQUET:
            pq.write_table(table, tmp)
        else:
            delimiter = "\t" if out.suffix.lower() in (".tsv", ".tab") else ","
            pcsv.write_csv(table, tmp, write_options=pcsv.WriteOptions(delimiter=delimiter))
        os.replace(tmp, out)
        return out


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if s.strip() else None


def _portable(path: str, base: Path | None) -> str:
    if base is None or _is_uri(path):
        return path
    p = Path(path)
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return str(p)


def _missing(path: Path, name: str, have: Sequence[str], line: int | None) -> DataFormatError:
    return DataFormatError(
        path, line, name, f"required column is missing (the file has: {', '.join(have) or 'no columns'})"
    )


def _check_columns(path: Path, names: Sequence[str], rename: Mapping[str, str], line: int | None) -> None:
    """``id`` always; ``path``, or else a ``title`` or ``text`` column (a text-only catalogue); any
    column the mapping names."""
    if rename.get("id", "id") not in names:
        raise _missing(path, rename.get("id", "id"), names, line)
    for ours in OPTIONAL:  # a column named for title/text must exist: a typo would read as no text
        if ours in rename and rename[ours] not in names:
            raise _missing(path, rename[ours], names, line)
    has_text = any(rename.get(k, k) in names for k in OPTIONAL)
    if rename.get("path", "path") not in names and not has_text:
        raise DataFormatError(
            path,
            line,
            rename.get("path", "path"),
            "required column is missing: a catalogue needs a path column (videos) or a title/text "
            f"column (a text-only catalogue); the file has: {', '.join(names) or 'no columns'}",
        )


def _read_delimited(path: Path, rename: Mapping[str, str]) -> pa.Table:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        header = read_first_line(path)
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, 1, None, f"not valid UTF-8 text: {exc.reason}") from exc
    if not header.strip():
        raise DataFormatError(path, 1, None, "no header line (expected at least: id, path)")
    names = tuple(next(csv.reader(io.StringIO(header), delimiter=delimiter)))
    names = tuple(n.strip() for n in names)
    _check_columns(path, names, rename, 1)
    id_col, path_col = rename.get("id", "id"), rename.get("path", "path")
    strings = [rename.get(k, k) for k in (*REQUIRED, *OPTIONAL) if rename.get(k, k) in names]
    spec = TextSpec(
        path=path,
        names=names,
        delimiter=delimiter,
        header_lines=1,
        types={n: pa.string() for n in strings},
        checks={col: ID for col in (id_col, path_col) if col in names},
        unique=id_col,
    )
    return read_table(spec)


def _read_parquet(path: Path, rename: Mapping[str, str]) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(path, None, None, f"not a readable Parquet file: {exc}") from exc
    names = table.column_names
    _check_columns(path, names, rename, None)
    for ours in REQUIRED:
        col = rename.get(ours, ours)
        if col not in names:  # no path column: a text-only catalogue
            continue
        values = table[col].to_pylist()
        for r, v in enumerate(values):
            if v is None or not str(v).strip():
                raise DataFormatError(path, None, col, f"row {r + 1}: empty {ours}")
        if ours == "id":
            seen: dict[str, int] = {}
            for r, v in enumerate(values):
                key = str(v).strip()
                if key in seen:
                    raise DataFormatError(
                        path, None, col, f"duplicate id {key!r} in rows {seen[key] + 1} and {r + 1}"
                    )
                seen[key] = r
    return table


def metadata_text(row: Mapping[str, Any]) -> str:
    """The text an item is known by when it has no video: "title (year); genre, genre" (+ other text)."""
    title = row.get("title") or ""
    year = row.get("year")
    genres = row.get("genres") or []
    text = f"{title} ({year})" if year else str(title)
    if genres:
        text += "; " + ", ".join(str(g) for g in genres)
    extra = row.get("text")
    return f"{text}. {extra}" if extra else text


def catalog_from_item_table(table: Any, item_ids: Iterable[Any] | None = None) -> Catalog:
    """A text-only catalog (no video paths) from an interaction log's item metadata, e.g. MovieLens
    titles and genres, for the ``text`` backbone. ``item_ids`` limits and orders it (default: all).
    The whole description goes in ``text`` ("Toy Story (1995); Animation, Comedy") and the title only
    in ``extra``, so the text backbone reads each fact once."""
    ids = list(item_ids) if item_ids is not None else table.ids.tolist()
    items = []
    for raw in ids:
        row = table.get(raw) or {}
        extra = {"title": row.get("title")}
        items.append(CatalogItem(id=str(raw), path="", title=None, text=metadata_text(row), extra=extra))
    return Catalog(items, source="item metadata")
