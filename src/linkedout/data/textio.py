"""Delimited text in, Arrow columns out, and errors that say where.

The fast path is pyarrow's multithreaded CSV reader with declared column types. pyarrow's own messages
carry no line number once it parses in parallel ("Expected 4 columns, got 3: ..."), so when it fails, or
when a check after it finds a missing or bad value, we re-read the file line by line with the same
rules (`scan_for_error`) to name the 1-based line and the column. The scan runs only on the error path,
so loading a clean 10M-line log costs nothing extra.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv


class DataFormatError(ValueError):
    """A malformed data file, located: ``str(err)`` reads ``ml.inter:17: column 'timestamp': ...``.

    ``line`` is the 1-based line in the file (None when the format has no lines, e.g. Parquet, or the
    problem concerns the whole file) and ``column`` the column name as the file spells it (None for
    row-level problems such as a wrong number of fields)."""

    def __init__(self, path: str | Path, line: int | None, column: str | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.column = column
        self.message = message
        where = str(path) if line is None else f"{path}:{line}"
        what = message if column is None else f"column '{column}': {message}"
        super().__init__(f"{where}: {what}")

    def __reduce__(self):  # keep the four fields through pickling (multiprocessing, pytest-xdist)
        return (self.__class__, (self.path, self.line, self.column, self.message))


# What the line scan checks per column; the same rules are applied after pyarrow has read the file.
ID = "id"  # non-empty
NUMBER = "number"  # finite decimal number
TIME = "time"  # finite number or an ISO-8601 date/time
TEXT = "text"  # anything

NUMBER_RE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


@dataclass(frozen=True)
class TextSpec:
    """How to read one delimited file; shared by the fast reader and the error scan so they agree."""

    path: Path
    names: tuple[str, ...]  # every column of the file, in order (header names or assigned ones)
    delimiter: str = ","
    header_lines: int = 0  # lines before the first data line
    quoting: bool = True  # RFC-4180 double quotes; off for RecBole/MovieLens files, whose titles hold '"'
    encoding: str = "utf8"
    types: Mapping[str, pa.DataType] = field(default_factory=dict)  # columns not listed are inferred
    checks: Mapping[str, str] = field(default_factory=dict)  # column -> ID | NUMBER | TIME | TEXT
    include: tuple[str, ...] | None = None  # columns to materialise (None = all)
    unique: str | None = None  # column whose values must not repeat (item ids of a metadata file)


def read_first_line(path: Path, encoding: str = "utf8") -> str:
    """The first line without its end-of-line (and without a UTF-8 byte-order mark)."""
    with open(path, "rb") as f:
        raw = f.readline()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, 1, None, f"not valid {encoding} text: {exc.reason}") from exc


def check_not_empty(path: Path) -> None:
    """Raise for a file with nothing but whitespace in it (pyarrow would only say 'Empty CSV file')."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise DataFormatError(path, None, None, "file is empty")


def read_table(spec: TextSpec) -> pa.Table:
    """Read ``spec.path`` with pyarrow and check the declared columns; every failure is re-located by a
    line scan and raised as `DataFormatError`."""
    check_not_empty(spec.path)
    if len(set(spec.names)) != len(spec.names):
        dup = next(n for n in spec.names if spec.names.count(n) > 1)
        raise DataFormatError(spec.path, spec.header_lines or None, dup, "column name appears twice")
    try:
        table = pcsv.read_csv(
            spec.path,
            read_options=pcsv.ReadOptions(
                skip_rows=spec.header_lines,
                column_names=list(spec.names),
                encoding=spec.encoding,
                block_size=1 << 24,
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=spec.delimiter,
                quote_char='"' if spec.quoting else False,
                newlines_in_values=spec.quoting,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=dict(spec.types),
                include_columns=list(spec.include) if spec.include is not None else None,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise locate_error(spec, str(exc)) from exc
    if not _values_ok(table, spec):
        raise locate_error(spec, "a check after reading failed")
    return table


def _values_ok(table: pa.Table, spec: TextSpec) -> bool:
    """Vectorised twin of the line scan: no nulls or empty ids, finite numbers, no repeated keys."""
    for name, kind in spec.checks.items():
        if name not in table.column_names:
            continue
        col = table[name]
        if col.null_count:
            return False
        if kind == ID and pa.types.is_string(col.type) and pc.any(pc.equal(col, "")).as_py():
            return False
        finite = pa.types.is_floating(col.type) and pc.all(pc.is_finite(col)).as_py() is not False
        if kind in (NUMBER, TIME) and pa.types.is_floating(col.type) and not finite:
            return False
        if kind == NUMBER and not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            return False
        if kind == TIME and not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            try:
                time_values(col)
            except (pa.ArrowInvalid, ValueError):
                return False
    if spec.unique is None or spec.unique not in table.column_names:
        return True
    return pc.count_distinct(table[spec.unique]).as_py() == table.num_rows


def locate_error(spec: TextSpec, arrow_message: str) -> DataFormatError:
    """The first problem in the file as a located error; pyarrow's message if the scan finds none."""
    found = scan_for_error(spec)
    if found is not None:
        return found
    return DataFormatError(spec.path, None, None, f"could not be read: {arrow_message}")


def scan_for_error(spec: TextSpec) -> DataFormatError | None:
    """Walk the file record by record (Python csv module, same delimiter/quoting as pyarrow) and return
    the first wrong field count or failed column check, with its 1-based starting line."""
    index = {name: i for i, name in enumerate(spec.names)}
    checks = [(index[name], name, kind) for name, kind in spec.checks.items() if name in index]
    unique_at = index.get(spec.unique) if spec.unique is not None else None
    seen: dict[str, int] = {}
    n_cols = len(spec.names)
    enc = "utf-8-sig" if spec.encoding.replace("-", "").lower() == "utf8" else spec.encoding
    quoting = csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE
    try:
        with open(spec.path, encoding=enc, newline="") as f:
            reader = csv.reader(f, delimiter=spec.delimiter, quoting=quoting, strict=spec.quoting)
            end = 0
            while True:
                start = end + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return None
                except csv.Error as exc:
                    return DataFormatError(spec.path, start, None, f"malformed quoting: {exc}")
                end = reader.line_num
                if start <= spec.header_lines or not row:
                    continue
                if len(row) != n_cols:
                    return DataFormatError(
                        spec.path,
                        start,
                        None,
                        f"expected {n_cols} fields ({', '.join(spec.names)}) separated by "
                        f"{spec.delimiter!r}, found {len(row)}",
                    )
                for i, name, kind in checks:
                    problem = _check_value(kind, row[i])
                    if problem:
                        return DataFormatError(spec.path, start, name, problem)
                if unique_at is not None:
                    key = row[unique_at]
                    if key in seen:
                        return DataFormatError(
                            spec.path, start, spec.names[unique_at], f"{key!r} already on line {seen[key]}"
                        )
                    seen[key] = start
    except UnicodeDecodeError as exc:
        line = _line_of_offset(spec.path, exc.start)
        return DataFormatError(spec.path, line, None, f"not valid {spec.encoding} text: {exc.reason}")


def _check_value(kind: str, value: str) -> str | None:
    if kind == ID:
        return "empty id" if not value.strip() else None
    if kind in (NUMBER, TIME):
        if not value.strip():
            return "missing value"
        if NUMBER_RE.match(value):
            return None
        if kind == TIME and is_iso_datetime(value):
            return None
        if value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
            return f"{value.strip()!r} is not a finite number"
        what = "a number or an ISO date/time" if kind == TIME else "a number"
        return f"could not parse {value!r} as {what}"
    return None


def is_iso_datetime(value: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def _line_of_offset(path: Path, offset: int) -> int:
    """1-based line holding byte ``offset`` (for decoding errors, which report a byte position)."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


# --- column conversions shared by every reader -------------------------------------------------------


def canonical_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Raw ids as int64 when every value is a canonical integer ("42", not "042" or " 42"), else strings.

    Tokens such as RecBole's ``user_id:token`` are strings, but numeric ids sort and print better as
    numbers; ids with leading zeros (Amazon ASINs) must stay strings or "0012" and "12" would merge."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.int64())
    if pa.types.is_floating(arr.type):
        as_int = pc.cast(arr, pa.int64(), safe=False)
        if pc.all(pc.equal(pc.cast(as_int, arr.type), arr)).as_py() is not False:
            return as_int
        raise ValueError("ids are fractional numbers; ids must be integers or strings")
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    for candidate in (arr, pc.utf8_trim_whitespace(arr)):
        try:
            as_int = pc.cast(candidate, pa.int64())
        except pa.ArrowInvalid:
            continue
        if pc.all(pc.equal(pc.cast(as_int, candidate.type), candidate)).as_py() is not False:
            return as_int
    return pc.utf8_trim_whitespace(arr)


def unify_id_types(a: pa.Array, b: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Make two id columns comparable (int64 in one file and strings in the other -> both strings)."""
    if a.type == b.type:
        return a, b
    return pc.cast(a, pa.string()), pc.cast(b, pa.string())


def time_values(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Event times as int64 (integers, dates, timestamps in their own unit) or float64."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    t = arr.type
    if pa.types.is_integer(t):
        return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_floating(t):
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pc.cast(pc.cast(arr, pa.timestamp("s")) if pa.types.is_date(t) else arr, pa.int64()).to_numpy(
            zero_copy_only=False
        )
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            return pc.cast(pc.cast(arr, pa.timestamp("us")), pa.int64()).to_numpy(zero_copy_only=False)
    raise ValueError(f"cannot use a {t} column as event time")
