"""`ItemTable`: item metadata (title, year, genres, other text) as Arrow columns keyed by raw item id.

Columnar rather than a dict of dicts because catalogs reach 10^5-10^6 items and text encoders want whole
columns; it still reads like ``dict[raw_item_id, dict]`` (``table[42]["title"]``) for the odd lookup.
Readers map their own column names onto a few canonical ones so that downstream code does not care
whether the file said ``movie_title``, ``title`` or field 2 of ``u.item``:

- ``title``: str; ``year``: int (null when unknown); ``genres``: list[str].
Other columns keep the name and type the file gave them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID_COLUMN = "item_id"
CANONICAL = ("title", "year", "genres")


class ItemTable(Mapping):
    """One row per item; the first column is ``item_id`` (raw ids, unique)."""

    def __init__(self, table: pa.Table) -> None:
        if table.num_columns == 0 or table.column_names[0] != ID_COLUMN:
            raise ValueError(f"an ItemTable's first column must be {ID_COLUMN!r}")
        self._table = table.combine_chunks()
        self._index: dict[Any, int] | None = None

    @classmethod
    def empty(cls, id_type: pa.DataType = pa.int64()) -> ItemTable:
        return cls(pa.table({ID_COLUMN: pa.array([], id_type)}))

    @classmethod
    def from_columns(cls, item_ids, **columns) -> ItemTable:
        """``ItemTable.from_columns([1, 2], title=["A", "B"], year=[1995, None])``."""
        data = {ID_COLUMN: pa.array(np.asarray(item_ids) if not isinstance(item_ids, pa.Array) else item_ids)}
        for name, values in columns.items():
            data[name] = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        return cls(pa.table(data))

    # --- columnar access -------------------------------------------------------------------------
    @property
    def table(self) -> pa.Table:
        return self._table

    @property
    def ids(self) -> np.ndarray:
        return self._table[ID_COLUMN].to_numpy(zero_copy_only=False)

    @property
    def columns(self) -> list[str]:
        """Metadata columns (everything but ``item_id``)."""
        return self._table.column_names[1:]

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise KeyError(f"no metadata column {name!r}; columns: {self.columns}")
        return self._table[name].to_pylist()

    def aligned(self, item_ids) -> ItemTable:
        """Rows reordered to follow ``item_ids`` (e.g. ``Interactions.item_ids``), null where an id has
        no metadata, so row i describes item index i."""
        wanted = item_ids if isinstance(item_ids, pa.Array) else pa.array(np.asarray(item_ids))
        keys, own = wanted, self._table[ID_COLUMN].combine_chunks()
        if keys.type != own.type:
            keys, own = pc.cast(keys, pa.string()), pc.cast(own, pa.string())
        rows = pc.index_in(keys, value_set=own)
        body = self._table.drop_columns([ID_COLUMN]).take(rows)
        return ItemTable(body.add_column(0, ID_COLUMN, wanted))

    # --- mapping access: raw item id -> {column: value} ---------------------------------------------
    def _lookup(self) -> dict[Any, int]:
        if self._index is None:
            self._index = {iid: i for i, iid in enumerate(self._table[ID_COLUMN].to_pylist())}
        return self._index

    def __getitem__(self, item_id) -> dict:
        key = item_id.item() if isinstance(item_id, np.generic) else item_id
        row = self._lookup()[key]
        return {name: self._table[name][row].as_py() for name in self.columns}

    def __iter__(self) -> Iterator:
        return iter(self._table[ID_COLUMN].to_pylist())

    def __len__(self) -> int:
        return self._table.num_rows

    def __contains__(self, item_id) -> bool:
        key = item_id.item() if isinstance(item_id, np.generic) else item_id
        return key in self._lookup()

    def __eq__(self, other) -> bool:
        return isinstance(other, ItemTable) and self._table.equals(other._table)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ItemTable({len(self)} items; columns: {', '.join(self.columns) or 'none'})"
