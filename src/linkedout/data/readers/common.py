"""What every reader shares: `RawEvents`, column-role guessing (`find_column`) and the normalisation of
item metadata into an `ItemTable` (`item_table`: title / year / genres recognised by column name).

Each reader returns `RawEvents` (one row per event, file order, raw ids) and an optional `ItemTable`;
`linkedout.data.formats.load_interactions` picks the reader and builds `Interactions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.data.itemtable import ID_COLUMN, ItemTable
from linkedout.data.textio import (
    DataFormatError,
    canonical_ids,
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
