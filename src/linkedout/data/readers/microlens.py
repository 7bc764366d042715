"""The MicroLens layout (westlake-repl/MicroLens): ``<prefix>_pairs.csv`` (user, item, timestamp) or
``<prefix>_pairs.tsv`` (user TAB space-separated items in time order) + ``<prefix>_title_en.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.data.itemtable import ItemTable
from linkedout.data.readers.common import RawEvents, events_from_table, item_table, normalize_name, split_list
from linkedout.data.textio import (
    ID,
    NUMBER_RE,
    TIME,
    DataFormatError,
    TextSpec,
    canonical_ids,
    check_not_empty,
    is_iso_datetime,
    read_first_line,
    read_table,
)


def read_microlens_csv(path: Path, want_rating: bool) -> RawEvents:
    """``<prefix>_pairs.csv``: user, item, timestamp; a header line (``userID,videoID,timestamp``) is
    optional and recognised by its non-numeric third field."""
    check_not_empty(path)
    first = [f.strip() for f in read_first_line(path).split(",")]
    if len(first) != 3:
        raise DataFormatError(path, 1, None, f"expected 3 fields (user, item, timestamp), found {len(first)}")
    header = not (NUMBER_RE.match(first[2]) or is_iso_datetime(first[2]))
    names = tuple(first) if header else ("user_id", "item_id", "timestamp")
    user, item, time = names
    spec = TextSpec(
        path,
        names,
        ",",
        header_lines=int(header),
        types={user: pa.string(), item: pa.string()},
        checks={user: ID, item: ID, time: TIME},
    )
    table = read_table(spec)
    if table.num_rows == 0:
        raise DataFormatError(path, 2, None, "no interactions after the header line")
    if want_rating:
        raise DataFormatError(path, None, None, "MicroLens pairs have no ratings; drop min_rating")
    return events_from_table(table, user, item, time, None, path)


def read_microlens_tsv(path: Path, want_rating: bool) -> RawEvents:
    """``<prefix>_pairs.tsv``: user TAB space-separated item ids, oldest first; no timestamps, so an
    event's position in the file is its time (order within a user is what matters)."""
    check_not_empty(path)
    first = read_first_line(path).split("\t")[0]
    header = normalize_name(first) in ("user", "userid", "uid")
    spec = TextSpec(
        path,
        ("user_id", "item_ids"),
        "\t",
        header_lines=int(header),
        quoting=False,
        types={"user_id": pa.string(), "item_ids": pa.string()},
        checks={"user_id": ID},
    )
    table = read_table(spec)
    if want_rating:
        raise DataFormatError(path, None, None, "MicroLens pairs have no ratings; drop min_rating")
    lists = split_list(table["item_ids"].combine_chunks(), None)
    rows = pc.list_parent_indices(lists)
    try:
        users = canonical_ids(table["user_id"].combine_chunks().take(rows))
        items = canonical_ids(pc.list_flatten(lists))
    except ValueError as exc:
        raise DataFormatError(path, None, None, str(exc)) from exc
    if len(items) == 0:
        raise DataFormatError(path, None, None, "no interactions: every user's item list is empty")
    times = np.arange(len(items), dtype=np.int64)
    return RawEvents(users, items, times, None, ["no timestamps (pairs.tsv): file position used as time"])


def read_microlens_titles(path: Path) -> ItemTable:
    """``<prefix>_title_en.csv``: ``item id,title`` per line, titles unquoted and often holding commas,
    so each line is split at its first comma (a quoted title is unquoted). Header line optional."""
    ids: list[str] = []
    titles: list[str] = []
    seen: dict[str, int] = {}
    check_not_empty(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            key, comma, title = line.partition(",")
            key = key.strip().strip('"')
            if not ids and not seen and normalize_name(key) in ("item", "itemid", "videoid", "id", "vid"):
                seen[""] = lineno  # header line
                continue
            if not comma:
                raise DataFormatError(path, lineno, None, "expected 'item id,title'")
            if not key:
                raise DataFormatError(path, lineno, "item_id", "empty id")
            if key in seen:
                raise DataFormatError(path, lineno, "item_id", f"{key!r} already on line {seen[key]}")
            title = title.strip()
            if title.startswith('"') and title.endswith('"') and len(title) > 1:
                title = next(csv.reader([title]))[0]
            seen[key] = lineno
            ids.append(key)
            titles.append(title)
    table = pa.table({"item_id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string())})
    return item_table(table, "item_id", path)
