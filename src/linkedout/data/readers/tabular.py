"""Generic tables of events: delimited text (``.csv/.tsv/.tab/.txt``, header line required, delimiter
sniffed from it unless given) and Parquet. User / item / time (/ rating) columns are the names the caller
gives, else the first common name (`linkedout.data.readers.common.ROLE_NAMES`); without a time column the
file order is the time."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from linkedout.data.readers.common import RawEvents, events_from_table, find_column
from linkedout.data.textio import (
    ID,
    NUMBER,
    TIME,
    DataFormatError,
    TextSpec,
    check_not_empty,
    read_first_line,
    read_table,
)


def _sniff_delimiter(path: Path, header: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    counts = {d: header.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_csv(
    path: Path,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    rating_col: str | None,
    want_rating: bool,
    sep: str | None,
) -> RawEvents:
    """A delimited text file with a header line naming its columns."""
    check_not_empty(path)
    header = read_first_line(path)
    delimiter = sep or _sniff_delimiter(path, header)
    names = [n.strip() for n in next(csv.reader([header], delimiter=delimiter))]
    for k, n in enumerate(names):
        if not n:
            raise DataFormatError(path, 1, None, f"header field {k + 1} is empty")
    user = find_column(names, "user", user_col, path, 1)
    item = find_column(names, "item", item_col, path, 1)
    tcol = find_column(names, "time", time_col, path, 1, required=False)
    rating = find_column(names, "rating", rating_col, path, 1, required=want_rating)
    rated = rating is not None
    rating = rating if want_rating else None
    checks = {user: ID, item: ID}
    if tcol is not None:
        checks[tcol] = TIME
    if rating is not None:
        checks[rating] = NUMBER
    spec = TextSpec(
        path,
        tuple(names),
        delimiter,
        header_lines=1,
        types={user: pa.string(), item: pa.string()},
        checks=checks,
        include=tuple(checks),
    )
    table = read_table(spec)
    if table.num_rows == 0:
        raise DataFormatError(path, 2, None, "no interactions after the header line")
    return events_from_table(table, user, item, tcol, rating, path, rated=rated)


def read_parquet(
    path: Path,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    rating_col: str | None,
    want_rating: bool,
) -> RawEvents:
    """A Parquet file: columns by name; nulls (and NaN / inf times or ratings) are refused up front."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(path, None, None, f"not a readable Parquet file: {exc}") from exc
    user = find_column(names, "user", user_col, path, None)
    item = find_column(names, "item", item_col, path, None)
    tcol = find_column(names, "time", time_col, path, None, required=False)
    rating = find_column(names, "rating", rating_col, path, None, required=want_rating)
    rated = rating is not None
    rating = rating if want_rating else None
    columns = [c for c in (user, item, tcol, rating) if c is not None]
    if path.stat().st_size == 0:
        raise DataFormatError(path, None, None, "file is empty")
    table = pq.read_table(path, columns=columns)
    if table.num_rows == 0:
        raise DataFormatError(path, None, None, "no interactions (0 rows)")
    for name in columns:
        col = table[name]
        bad = pc.is_null(col)
        if name in (tcol, rating) and pa.types.is_floating(col.type):
            bad = pc.or_(bad, pc.invert(pc.is_finite(col)))
        if pc.any(bad).as_py():
            first = pc.index(bad, True).as_py()
            n_bad = pc.sum(bad).as_py()
            msg = f"{n_bad} missing or non-finite values (first at row {first + 1})"
            raise DataFormatError(path, None, name, msg)
    try:
        return events_from_table(table, user, item, tcol, rating, path, rated=rated)
    except (pa.ArrowInvalid, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(path, None, tcol, f"cannot use as event time: {exc}") from exc
