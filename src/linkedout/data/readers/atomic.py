"""The RecBole atomic layout, read and written: ``X.inter`` + ``X.item``, TSV whose header declares
``name:type`` (``user_id:token  item_id:token  timestamp:float``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.data.interactions import Interactions
from linkedout.data.itemtable import ID_COLUMN, ItemTable
from linkedout.data.readers.common import RawEvents, events_from_table, find_column, item_table
from linkedout.data.textio import (
    ID,
    NUMBER,
    TEXT,
    TIME,
    DataFormatError,
    TextSpec,
    check_not_empty,
    read_first_line,
    read_table,
)

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
