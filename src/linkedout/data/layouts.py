"""What every reader shares (`RawEvents`, column-role guessing, metadata normalisation) and the RecBole
atomic layout (``X.inter`` + ``X.item``: TSV whose header declares ``name:type``), read and written.

Each reader returns `RawEvents` (one row per event, file order, raw ids) and an optional `ItemTable`;
`linkedout.data.formats.load_interactions` picks the reader and builds `Interactions`. The MovieLens and
MicroLens layouts live in `linkedout.data.lens`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.data.interactions import Interactions
from linkedout.data.itemtable import ID_COLUMN, ItemTable
from linkedout.data.textio import (
    ID,
    NUMBER,
    TEXT,
    TIME,
    DataFormatError,
    TextSpec,
    canonical_ids,
    check_not_empty,
    read_first_line,
    read_table,
    time_values,
)


@dataclass
class RawEvents:
    """Events as read, before id factorisation: what every reader hands to `load_interactions`."""

    users: pa.Array
    items: pa.Array
    times: np.ndarray | None  # None: the file has no time; row order is used
    ratings: np.ndarray | None = None  # read only when min_rating asks for them
    notes: list[str] = field(default_factory=list)
    has_ratings: bool = False  # the file rates events (so a note can say the ratings were ignored)


# --- column roles ---------------------------------------------------------------------------------

ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("userid", "user", "uid", "visitorid", "customerid", "reviewerid", "memberid", "viewerid"),
    "item": (
        "itemid",
        "item",
        "iid",
        "videoid",
        "video",
        "movieid",
        "movie",
        "productid",
        "asin",
        "trackid",
        "songid",
        "articleid",
        "bookid",
        "photoid",
        "contentid",
        "vid",
    ),
    "time": (
        "timestamp",
        "time",
        "ts",
        "datetime",
        "date",
        "eventtime",
        "unixtime",
        "unixreviewtime",
        "createdat",
        "watchedat",
        "timestampms",
    ),
    "rating": ("rating", "ratings", "score", "stars", "rate"),
}
META_ROLES: dict[str, str] = {
    **dict.fromkeys(("title", "movietitle", "videotitle", "titleen", "name", "itemname"), "title"),
    **dict.fromkeys(("year", "releaseyear"), "year"),
    **dict.fromkeys(("genres", "genre", "class", "classes", "categories", "category"), "genres"),
}


def normalize_name(name: str) -> str:
    """``"userId"``, ``"user_id:token"``, ``"User ID"`` -> ``"userid"``."""
    return re.sub(r"[^a-z0-9]", "", name.split(":")[0].lower())


def find_column(
    names: list[str], role: str, given: str | None, path: Path, line: int | None, required: bool = True
) -> str | None:
    """The column playing ``role``: the name the user gave (checked), else the first common name."""
    available = ", ".join(repr(n) for n in names)
    if given is not None:
        if given in names:
            return given
        raise DataFormatError(path, line, given, f"no such column; available columns: {available}")
    by_norm: dict[str, str] = {}
    for n in names:
        by_norm.setdefault(normalize_name(n), n)
    for candidate in ROLE_NAMES[role]:
        if candidate in by_norm:
            return by_norm[candidate]
    if required:
        raise DataFormatError(
            path,
            line,
            None,
            f"cannot tell which column holds the {role} ids; pass {role}_col=... "
            f"(available columns: {available})",
        )
    return None


def events_from_table(
    table: pa.Table,
    user: str,
    item: str,
    time: str | None,
    rating: str | None,
    path: Path,
    rated: bool = False,
) -> RawEvents:
    try:
        users, items = canonical_ids(table[user]), canonical_ids(table[item])
    except ValueError as exc:
        raise DataFormatError(path, None, None, str(exc)) from exc
    times = time_values(table[time]) if time is not None else None
    ratings = table[rating].to_numpy() if rating is not None else None
    notes = [] if time is not None else ["no time column: events ordered as they appear in the file"]
    return RawEvents(users, items, times, ratings, notes, has_ratings=rated or rating is not None)


def item_table(table: pa.Table, id_col: str, path: Path) -> ItemTable:
    """An `ItemTable` from a metadata table: canonical ids, known columns mapped to title/year/genres."""
    try:
        columns: dict[str, pa.Array] = {ID_COLUMN: canonical_ids(table[id_col])}
    except ValueError as exc:
        raise DataFormatError(path, None, id_col, str(exc)) from exc
    for name in table.column_names:
        if name == id_col:
            continue
        values = table[name].combine_chunks()
        role = META_ROLES.get(normalize_name(name))
        if role is None or role in columns:
            columns.setdefault(name, values)
        elif role == "title":
            columns["title"] = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
        elif role == "year":
            columns["year"] = _years(values)
        else:
            columns["genres"] = _genres(values)
    return ItemTable(pa.table(columns))


def _years(values: pa.Array) -> pa.Array:
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.int64(), safe=False)
    digits = pc.extract_regex(pc.cast(values, pa.string()), r"(?P<y>\d{4})")
    return pc.cast(pc.struct_field(digits, "y"), pa.int64())


def _genres(values: pa.Array) -> pa.Array:
    """list<string>; RecBole token_seq splits on spaces, MovieLens ``movies.csv`` on '|'."""
    if pa.types.is_list(values.type):
        return values
    text = pc.cast(values, pa.string())
    piped = pc.any(pc.match_substring(text, "|")).as_py()
    return split_list(text, "|" if piped else None)


def split_list(text: pa.Array, pattern: str | None) -> pa.ListArray:
    """Split every string (on ``pattern``, or on whitespace) and drop empty pieces."""
    lists = pc.split_pattern(text, pattern) if pattern else pc.utf8_split_whitespace(text)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists)
    keep = pc.greater(pc.utf8_length(flat), 0)
    counts = np.bincount(parents.filter(keep).to_numpy(), minlength=len(text))
    offsets = np.zeros(len(text) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))


# --- RecBole atomic files --------------------------------------------------------------------------

ATOMIC_TYPES = {
    "token": pa.string(),
    "token_seq": pa.string(),
    "float": pa.float64(),
    "float_seq": pa.string(),
}


def atomic_header(path: Path, sep: str | None) -> tuple[list[str], dict[str, str | None], str]:
    """Names, declared types and delimiter of an atomic file's header (``user_id:token\\t...``).

    Untyped headers (``user_id,item_id,timestamp``, as MicroLens' own scripts write ``.inter``) are
    accepted and their types inferred; RecBole itself would reject them."""
    check_not_empty(path)
    line = read_first_line(path)
    delimiter = sep or ("\t" if "\t" in line else "," if "," in line else "\t")
    names: list[str] = []
    types: dict[str, str | None] = {}
    for k, raw in enumerate(line.split(delimiter)):
        name, colon, typ = raw.strip().partition(":")
        if not name:
            raise DataFormatError(path, 1, None, f"header field {k + 1} has no name")
        if colon and typ not in ATOMIC_TYPES:
            raise DataFormatError(
                path, 1, name, f"unknown type {typ!r}; RecBole atomic types are {', '.join(ATOMIC_TYPES)}"
            )
        if name in types:
            raise DataFormatError(path, 1, name, "column name appears twice in the header")
        names.append(name)
        types[name] = typ if colon else None
    return names, types, delimiter


def _atomic_spec(path: Path, sep: str | None, include: list[str], checks: dict[str, str]) -> TextSpec:
    names, declared, delimiter = atomic_header(path, sep)
    types = {}
    for n in include:
        if declared[n] is not None:
            types[n] = ATOMIC_TYPES[declared[n]]
        elif checks.get(n) in (ID, TEXT):
            types[n] = pa.string()
    return TextSpec(
        path=path,
        names=tuple(names),
        delimiter=delimiter,
        header_lines=1,
        quoting=delimiter == ",",
        types=types,
        checks=checks,
        include=tuple(include),
    )


def read_atomic_inter(
    path: Path,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    want_rating: bool,
    sep: str | None,
) -> RawEvents:
    names, declared, _ = atomic_header(path, sep)
    user = find_column(names, "user", user_col, path, 1)
    item = find_column(names, "item", item_col, path, 1)
    time = find_column(names, "time", time_col, path, 1, required=False)
    rating = find_column(names, "rating", None, path, 1, required=want_rating)
    checks = {user: ID, item: ID}
    if time is not None:
        checks[time] = NUMBER if declared[time] == "float" else TIME
    if want_rating and rating is not None:
        checks[rating] = NUMBER
    table = read_table(_atomic_spec(path, sep, list(checks), checks))
    if table.num_rows == 0:
        raise DataFormatError(path, 2, None, "no interactions after the header line")
    used = rating if want_rating else None
    return events_from_table(table, user, item, time, used, path, rated=rating is not None)


def read_atomic_items(path: Path, item_col: str | None, sep: str | None) -> ItemTable:
    names, _, _ = atomic_header(path, sep)
    item = find_column(names, "item", item_col, path, 1)
    checks = {n: TEXT for n in names}
    checks[item] = ID
    spec = replace(_atomic_spec(path, sep, names, checks), unique=item)
    return item_table(read_table(spec), item, path)


def write_atomic(
    interactions: Interactions, folder: str | Path, name: str, item_meta: ItemTable | None = None
) -> Path:
    """Write ``<folder>/<name>.inter`` (user_id, item_id, timestamp; users in order, each user's events
    oldest first) and ``<name>.item`` when there is metadata. Returns the ``.inter`` path.

    RecBole has no integer or list-of-strings types: ``year`` is written as a token, ``genres`` as a
    space-separated token_seq (a genre containing a space comes back as two), and tabs or newlines
    inside text are replaced by spaces because the format cannot quote them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter_path = folder / f"{name}.inter"
    user_rows = np.repeat(np.arange(interactions.n_users), interactions.lengths())
    table = pa.table(
        {
            "user_id": pa.array(interactions.user_ids[user_rows]),
            "item_id": pa.array(interactions.item_ids[interactions.items]),
            "timestamp": pa.array(interactions.timestamps),
        }
    )
    _write_tsv(table, ["user_id:token", "item_id:token", "timestamp:float"], inter_path)
    if item_meta is not None and len(item_meta):
        columns, header = {}, []
        for col_name, values in zip(item_meta.table.column_names, item_meta.table.columns, strict=True):
            values = values.combine_chunks()
            if col_name == ID_COLUMN:
                typ = "token"
            elif pa.types.is_list(values.type) and pa.types.is_floating(values.type.value_type):
                values, typ = pc.binary_join(pc.cast(values, pa.list_(pa.string())), " "), "float_seq"
            elif pa.types.is_list(values.type):
                values, typ = pc.binary_join(pc.cast(values, pa.list_(pa.string())), " "), "token_seq"
            elif pa.types.is_floating(values.type) or (
                pa.types.is_integer(values.type) and col_name != "year"
            ):
                typ = "float"
            elif pa.types.is_integer(values.type):
                typ = "token"
            else:
                values, typ = pc.cast(values, pa.string()), "token_seq"
            if pa.types.is_string(values.type) and col_name != ID_COLUMN:
                values = pc.replace_substring_regex(values, r"[\t\r\n]", " ")
            columns[col_name] = values
            header.append(f"{col_name}:{typ}")
        _write_tsv(pa.table(columns), header, folder / f"{name}.item")
    return inter_path


def _write_tsv(table: pa.Table, header: list[str], path: Path, chunk: int = 1 << 20) -> None:
    """Tab-separated, unquoted (RecBole reads fields verbatim), built column-wise by Arrow and written
    from the joined strings' data buffer: no Python loop over rows. Ids may not hold tabs or newlines;
    text columns have had them replaced."""
    id_like = [name for name, h in zip(table.column_names, header, strict=True) if h.endswith(":token")]
    for name in id_like:
        col = pc.cast(table[name], pa.string())
        if pc.any(pc.match_substring_regex(col, r"[\t\r\n]")).as_py():
            raise ValueError(f"{path}: a value of {name!r} holds a tab or newline; atomic files cannot")
    with open(path, "wb") as sink:
        sink.write(("\t".join(header) + "\n").encode())
        for start in range(0, table.num_rows, chunk):
            part = table.slice(start, chunk)
            fields = [pc.fill_null(pc.cast(c, pa.string()), "") for c in part.columns]
            lines = pc.binary_join_element_wise(*fields, "\t") if len(fields) > 1 else fields[0]
            lines = pc.cast(pc.binary_join_element_wise(lines, "", "\n"), pa.large_string())
            lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
            offsets = offsets[lines.offset : lines.offset + len(lines) + 1]
            sink.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])
