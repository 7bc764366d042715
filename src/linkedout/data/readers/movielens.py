"""The MovieLens-100K original zip layout: ``u.data`` (user TAB item TAB rating TAB unix time) +
``u.item`` (latin-1, '|'-separated, 19 genre flags) [+ ``u.genre``]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.data.itemtable import ItemTable
from linkedout.data.readers.common import RawEvents, events_from_table, item_table
from linkedout.data.textio import (
    ID,
    NUMBER,
    TextSpec,
    read_table,
)

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def read_movielens_data(path: Path, want_rating: bool) -> RawEvents:
    """``u.data``: user TAB item TAB rating TAB unix time, no header."""
    names = ("user_id", "item_id", "rating", "timestamp")
    checks = {"user_id": ID, "item_id": ID, "rating": NUMBER, "timestamp": NUMBER}
    spec = TextSpec(
        path,
        names,
        "\t",
        quoting=False,
        types={"user_id": pa.string(), "item_id": pa.string()},
        checks=checks,
    )
    table = read_table(spec)
    return events_from_table(
        table, "user_id", "item_id", "timestamp", "rating" if want_rating else None, path, rated=True
    )


def read_movielens_items(path: Path) -> ItemTable:
    """``u.item`` (latin-1, '|'): id|title (year)|release date|video release date|IMDb URL|19 genre flags."""
    genre_file = path.with_name("u.genre")
    genres = ML100K_GENRES
    if genre_file.exists():
        with open(genre_file, encoding="latin-1") as f:
            found = [line.split("|")[0] for line in f if line.strip()]
        if len(found) == len(ML100K_GENRES):
            genres = tuple(found)
    flag_names = tuple(f"genre:{g}" for g in genres)
    names = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_names)
    checks = {"item_id": ID, **dict.fromkeys(flag_names, NUMBER)}
    types = {n: pa.string() for n in names[:5]}
    spec = TextSpec(
        path, names, "|", quoting=False, encoding="latin-1", types=types, checks=checks, unique="item_id"
    )
    table = read_table(spec)
    title = pc.utf8_trim_whitespace(table["title"].combine_chunks())
    parts = pc.extract_regex(title, r"^(?P<t>.*?)\s*\((?P<y>\d{4})\)\s*$")
    title_only = pc.if_else(pc.is_valid(parts), pc.struct_field(parts, "t"), title)
    released = pc.extract_regex(table["release_date"].combine_chunks(), r"(?P<y>\d{4})$")
    year = pc.coalesce(pc.struct_field(parts, "y"), pc.struct_field(released, "y"))
    flags = np.column_stack([table[n].to_numpy() for n in flag_names]) > 0
    rows, cols = np.nonzero(flags)
    offsets = np.zeros(table.num_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=table.num_rows), out=offsets[1:])
    names_of_flags = pa.array(np.asarray(genres, dtype=object)[cols], pa.string())
    genre_lists = pa.ListArray.from_arrays(pa.array(offsets), names_of_flags)
    meta = pa.table(
        {
            "item_id": table["item_id"],
            "title": title_only,
            "year": pc.cast(year, pa.int64()),
            "genres": genre_lists,
            "release_date": table["release_date"],
            "imdb_url": table["imdb_url"],
        }
    )
    return item_table(meta, "item_id", path)
