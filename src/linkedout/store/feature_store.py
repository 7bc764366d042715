"""FeatureStore: per-item `LayerTokens` ``[L, S, D]`` float16 on local disk, keyed by item id and by
the fingerprint of the extractor that produced them.

Layout of a store directory (one store = one extractor fingerprint)::

    <path>/store.json      manifest: fingerprint, fingerprint fields, layers, token kinds, shape, dtype
    <path>/tokens.lance    Lance dataset: item_id, fingerprint, tokens (fixed-size float16 list), caption
    <path>/failures.lance  Lance dataset: item_id, fingerprint, reason, time (UTC)

Why Lance: every ``append`` is one ``lance.write_dataset(mode="append")`` call, i.e. one commit. Lance
writes the data files first and then publishes a new manifest atomically, so a process killed at any
moment leaves either the whole batch visible or none of it (unreferenced data files at worst, which
``compact(cleanup=True)`` deletes). ``take`` gives random access by row offset without reading whole
files. `benchmarks/store_io.py` measures it against safetensors shards + a JSON manifest.

Duplicates: resuming from ``done_ids()`` never writes an item twice, but a caller can append the same
id again on purpose (re-extraction) or two writers can race. Reads therefore resolve every id to its
*last written* row; ``info()`` counts the shadowed rows and ``compact()`` drops them.

The store never imports a backbone: it only knows shapes, names and a fingerprint.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from linkedout.backbones.base import ItemTokens, fingerprint

MANIFEST = "store.json"
TOKENS = "tokens.lance"
FAILURES = "failures.lance"
FORMAT_VERSION = 1
DTYPE = "float16"


class FingerprintMismatchError(ValueError):
    """The store on disk was written by a different extractor than the one requested."""


@dataclass(frozen=True)
class StoreMeta:
    fingerprint: str
    fingerprint_fields: dict[str, Any]
    layers: tuple[int, ...]
    layer_names: tuple[str, ...]
    token_kinds: tuple[str, ...]
    dim: int
    dtype: str = DTYPE
    created: str = ""
    # How to build the extractor again (`linkedout.backbones.extractor.ExtractorSpec.to_json()`), as
    # recorded at extraction time; None for stores written before it was recorded, or by a backbone
    # not built through `get_backbone`. Not part of the fingerprint: it says how, the fingerprint what.
    extractor: dict[str, Any] | None = None
    # Stage one of a caption store (`linkedout.backbones.extractor.CaptionSource.to_json()`): the store
    # whose generated captions were encoded, its fingerprint (also inside ``fingerprint_fields``) and
    # fields. None for every other store. Not part of the fingerprint either: the path may move.
    source: dict[str, Any] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.layers), len(self.token_kinds), self.dim)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "fingerprint_fields": self.fingerprint_fields,
            "layers": list(self.layers),
            "layer_names": list(self.layer_names),
            "token_kinds": list(self.token_kinds),
            "dim": self.dim,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "created": self.created,
            "extractor": self.extractor,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StoreMeta:
        return cls(
            fingerprint=d["fingerprint"],
            fingerprint_fields=dict(d["fingerprint_fields"]),
            layers=tuple(int(x) for x in d["layers"]),
            layer_names=tuple(d["layer_names"]),
            token_kinds=tuple(d["token_kinds"]),
            dim=int(d["dim"]),
            dtype=d.get("dtype", DTYPE),
            created=d.get("created", ""),
            extractor=d.get("extractor"),
            source=d.get("source"),
        )


def _normalise_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    # JSON round trip so that tuples/lists and numpy scalars compare equal to what was read back.
    return json.loads(json.dumps(dict(fields), sort_keys=True, default=str))


def _field_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    miss = "<missing>"
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, miss) != b.get(k, miss)]
    return [f"{k}: store={a.get(k, miss)!r} requested={b.get(k, miss)!r}" for k in keys]


def _write_json_atomic(path: Path, obj: Any) -> None:
    # tmp + fsync + rename: a crash leaves either the old file or the new one, never half of one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _open_lance(path: Path) -> lance.LanceDataset | None:
    """The dataset at ``path``, or None if nothing was ever committed there. A process killed during
    the very first write leaves a directory with data files but no version: that is "no dataset"."""
    if not path.exists():
        return None
    try:
        return lance.dataset(str(path))
    except ValueError as e:
        if "not found" in str(e).lower():
            return None
        raise


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed by a concurrent cleanup
                total += os.path.getsize(os.path.join(root, name))
    return total


class FeatureStore:
    """Append/read `LayerTokens` by item id. See the module docstring for layout and guarantees.

    Not safe for several *writer processes* at once beyond what Lance's optimistic commits give
    (both appends land; duplicates are resolved on read). One writer + many readers is the intended use.
    """

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        self.path = path
        self.meta = meta
        self._ds: lance.LanceDataset | None = None
        # id -> row offset of its last write, built lazily from the item_id column (cheap: ids only).
        self._index: dict[str, int] | None = None
        self._rows = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        fingerprint_fields: Mapping[str, Any],
        layers: Sequence[int],
        token_kinds: Sequence[str],
        dim: int,
        layer_names: Sequence[str] | None = None,
        extractor: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> FeatureStore:
        """New empty store. Fails if ``path`` already holds one (use `open_or_create` to resume).
        ``extractor``: how to build the extractor again (see `StoreMeta.extractor`); ``source``: the
        store a caption store's text came from (`StoreMeta.source`)."""
        p = Path(path)
        if (p / MANIFEST).exists():
            raise FileExistsError(f"a feature store already exists at {p}; use FeatureStore.open_or_create")
        fields = _normalise_fields(fingerprint_fields)
        layers_t = tuple(int(x) for x in layers)
        names = tuple(layer_names) if layer_names is not None else tuple(str(x) for x in layers_t)
        if len(names) != len(layers_t):
            raise ValueError(f"{len(names)} layer names for {len(layers_t)} layers")
        if not layers_t or not token_kinds or dim <= 0:
            raise ValueError("a store needs at least one layer, one token kind and dim > 0")
        meta = StoreMeta(
            fingerprint=fingerprint(fields),
            fingerprint_fields=fields,
            layers=layers_t,
            layer_names=names,
            token_kinds=tuple(token_kinds),
            dim=int(dim),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            extractor=_normalise_fields(extractor) if extractor is not None else None,
            source=_normalise_fields(source) if source is not None else None,
        )
        p.mkdir(parents=True, exist_ok=True)
        # The manifest is the only thing `open` needs; the Lance datasets appear with the first write, so
        # a crash between the two leaves a valid empty store.
        _write_json_atomic(p / MANIFEST, meta.to_json())
        return cls(p, meta)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        expected_fingerprint: str | Mapping[str, Any] | None = None,
    ) -> FeatureStore:
        """Open an existing store; if ``expected_fingerprint`` (a hash or the fields) is given and
        differs from the store's, raise `FingerprintMismatchError` naming the fields that differ."""
        p = Path(path)
        try:
            with open(p / MANIFEST) as f:
                meta = StoreMeta.from_json(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"no feature store at {p} (missing {MANIFEST})") from None
        if expected_fingerprint is not None:
            if isinstance(expected_fingerprint, str):
                want, diff = expected_fingerprint, []
            else:
                want_fields = _normalise_fields(expected_fingerprint)
                want, diff = fingerprint(want_fields), _field_diff(meta.fingerprint_fields, want_fields)
            if want != meta.fingerprint:
                detail = "; ".join(diff) if diff else f"store={meta.fingerprint} requested={want}"
                raise FingerprintMismatchError(
                    f"feature store at {p} holds tokens from another extractor ({detail}). "
                    "Use a new store path for the new settings (one store = one fingerprint)."
                )
        return cls(p, meta)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        fingerprint_fields: Mapping[str, Any],
        layers: Sequence[int],
        token_kinds: Sequence[str],
        dim: int,
        layer_names: Sequence[str] | None = None,
        extractor: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> FeatureStore:
        """The extraction pipeline's entry point: resume a store with the same fingerprint, create
        one if absent, refuse (FingerprintMismatchError) one written with other settings."""
        if not (Path(path) / MANIFEST).exists():
            return cls.create(
                path, fingerprint_fields, layers, token_kinds, dim, layer_names, extractor, source
            )
        store = cls.open(path, expected_fingerprint=fingerprint_fields)
        m = store.meta
        if m.layers != tuple(layers) or m.token_kinds != tuple(token_kinds) or m.dim != dim:
            raise FingerprintMismatchError(
                f"feature store at {path} has shape {m.shape} (layers {m.layers}, kinds {m.token_kinds}), "
                f"requested layers {tuple(layers)}, kinds {tuple(token_kinds)}, dim {dim}; the fingerprint "
                "fields should cover these: add them to the backbone's fingerprint_fields()"
            )
        if extractor is not None and m.extractor is None:
            # a store from before the spec was recorded, resumed with the same fingerprint: record it
            store.meta = replace(m, extractor=_normalise_fields(extractor))
            _write_json_atomic(store.path / MANIFEST, store.meta.to_json())
        if source is not None and store.meta.source != _normalise_fields(source):
            # same fingerprint (same stage one), found at another path: remember where it is now
            store.meta = replace(store.meta, source=_normalise_fields(source))
            _write_json_atomic(store.path / MANIFEST, store.meta.to_json())
        return store

    # ------------------------------------------------------------------ properties
    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.meta.shape

    @property
    def layers(self) -> tuple[int, ...]:
        return self.meta.layers

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.meta.layer_names

    @property
    def token_kinds(self) -> tuple[str, ...]:
        return self.meta.token_kinds

    @property
    def dim(self) -> int:
        return self.meta.dim

    def _schema(self) -> pa.Schema:
        n = int(np.prod(self.shape))
        return pa.schema(
            [
                pa.field("item_id", pa.string(), nullable=False),
                pa.field("fingerprint", pa.string(), nullable=False),
                pa.field("tokens", pa.list_(pa.float16(), n), nullable=False),
                pa.field("caption", pa.string()),
            ],
            metadata={"linkedout.store": json.dumps(self.meta.to_json(), sort_keys=True)},
        )

    @staticmethod
    def _failures_schema() -> pa.Schema:
        return pa.schema(
            [
                pa.field("item_id", pa.string(), nullable=False),
                pa.field("fingerprint", pa.string(), nullable=False),
                pa.field("reason", pa.string()),
                pa.field("time", pa.timestamp("us", tz="UTC")),
            ]
        )

    def _dataset(self) -> lance.LanceDataset | None:
        if self._ds is None:
            self._ds = _open_lance(self.path / TOKENS)
        return self._ds

    def refresh(self) -> None:
        """Pick up commits made by another process since this handle last looked."""
        self._ds = None
        self._index = None

    def _ensure_index(self) -> dict[str, int]:
        if self._index is None:
            index: dict[str, int] = {}
            ds = self._dataset()
            rows = 0
            if ds is not None:
                # Scan in dataset order so that a later write of the same id overwrites the earlier offset.
                for batch in ds.to_batches(columns=["item_id"], batch_size=65536, scan_in_order=True):
                    for i, item_id in enumerate(batch.column(0).to_pylist()):
                        index[item_id] = rows + i
                    rows += batch.num_rows
            self._index, self._rows = index, rows
        return self._index

    # ------------------------------------------------------------------ writing
    def append(self, items: Sequence[ItemTokens]) -> int:
        """Write one batch as one Lance commit: after a crash it is either fully visible or absent.
        Returns the number of rows written. Within a batch the last entry of a repeated id wins."""
        if not items:
            return 0
        latest: dict[str, ItemTokens] = {}
        for it in items:
            latest.pop(it.item_id, None)  # keep batch order = order of last occurrence
            latest[it.item_id] = it
        batch = list(latest.values())
        shape = self.shape
        flat = np.empty((len(batch), int(np.prod(shape))), dtype=np.float16)
        for row, it in enumerate(batch):
            t = np.asarray(it.tokens)
            if t.shape != shape:
                raise ValueError(f"item {it.item_id!r}: tokens shape {t.shape}, store expects {shape}")
            if not np.issubdtype(t.dtype, np.floating):
                raise TypeError(f"item {it.item_id!r}: tokens dtype {t.dtype}, expected float16")
            flat[row] = t.reshape(-1)  # casts float32 -> float16
        n_items = len(batch)
        table = pa.Table.from_arrays(
            [
                pa.array([it.item_id for it in batch], pa.string()),
                pa.array([self.fingerprint] * n_items, pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]),
                pa.array([it.caption for it in batch], pa.string()),
            ],
            schema=self._schema(),
        )
        index = self._ensure_index()
        uri = str(self.path / TOKENS)
        ds = self._dataset()
        # "create" also writes over the leftovers of a first write that was killed before its commit.
        self._ds = lance.write_dataset(table, uri, mode="append" if ds is not None else "create")
        # Offsets of the new rows follow the rows we knew about, unless another writer committed in
        # between (then our cached offsets would be wrong): detect that and rebuild instead.
        if self._ds.count_rows() == self._rows + n_items:
            for i, it in enumerate(batch):
                index[it.item_id] = self._rows + i
            self._rows += n_items
        else:
            self._index = None
        return n_items

    def record_failures(self, failures: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
        """Log items that could not be extracted (item_id -> reason). One commit, like `append`."""
        pairs = list(failures.items()) if isinstance(failures, Mapping) else list(failures)
        if not pairs:
            return 0
        now = datetime.now(timezone.utc)
        table = pa.Table.from_arrays(
            [
                pa.array([str(i) for i, _ in pairs], pa.string()),
                pa.array([self.fingerprint] * len(pairs), pa.string()),
                pa.array([str(r) for _, r in pairs], pa.string()),
                pa.array([now] * len(pairs), pa.timestamp("us", tz="UTC")),
            ],
            schema=self._failures_schema(),
        )
        uri = self.path / FAILURES
        mode = "append" if _open_lance(uri) is not None else "create"
        lance.write_dataset(table, str(uri), mode=mode)
        return len(pairs)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._ensure_index())

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ensure_index()

    def done_ids(self) -> set[str]:
        """Ids with tokens in the store: what a resumed extraction run skips."""
        return set(self._ensure_index())

    def ids(self) -> list[str]:
        """Stored ids ordered by the row of their last write (the order `read_all` returns)."""
        index = self._ensure_index()
        return sorted(index, key=index.__getitem__)

    def _offsets(self, ids: Sequence[str]) -> np.ndarray:
        index = self._ensure_index()
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the store, e.g. {missing[:5]}")
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))

    def read(self, ids: Sequence[str]) -> np.ndarray:
        """Random access: ``[N, L, S, D]`` float16 in the order of ``ids`` (KeyError if any is missing)."""
        ids = list(ids)
        if not ids:
            return np.empty((0, *self.shape), dtype=np.float16)
        offsets = self._offsets(ids)
        ds = self._dataset()
        assert ds is not None
        uniq, inverse = np.unique(offsets, return_inverse=True)
        col = ds.take(pa.array(uniq), columns=["tokens"]).column("tokens").combine_chunks()
        arr = col.flatten().to_numpy(zero_copy_only=False).reshape(len(uniq), *self.shape)
        # Fancy indexing restores the caller's order and copies out of Arrow's read-only buffer.
        return arr[inverse]

    def captions(self, ids: Sequence[str]) -> list[str | None]:
        ids = list(ids)
        if not ids:
            return []
        offsets = self._offsets(ids)
        ds = self._dataset()
        assert ds is not None
        uniq, inverse = np.unique(offsets, return_inverse=True)
        caps = ds.take(pa.array(uniq), columns=["caption"]).column("caption").to_pylist()
        return [caps[j] for j in inverse]

    def read_all(
        self, layers: Sequence[int] | None = None, batch_size: int = 2048
    ) -> tuple[list[str], np.ndarray]:
        """Every stored item as one array ``[N, L', S, D]`` (``layers`` = positions along L to keep,
        None = all), for training. Memory: the result plus one scan batch; shadowed duplicates skipped."""
        index = self._ensure_index()
        ds = self._dataset()
        keep_layers = None if layers is None else np.asarray(list(layers), dtype=np.int64)
        n_layers = self.shape[0] if keep_layers is None else len(keep_layers)
        out = np.empty((len(index), n_layers, *self.shape[1:]), dtype=np.float16)
        ids: list[str] = []
        if ds is None:
            return ids, out
        has_dups = self._rows != len(index)
        row, filled = 0, 0
        for batch in ds.to_batches(columns=["item_id", "tokens"], batch_size=batch_size, scan_in_order=True):
            batch_ids = batch.column(0).to_pylist()
            arr = (
                batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(len(batch_ids), *self.shape)
            )
            if has_dups:
                live = np.array([index[i] == row + k for k, i in enumerate(batch_ids)], dtype=bool)
                arr = arr[live]
                batch_ids = [i for i, keep in zip(batch_ids, live, strict=True) if keep]
            if keep_layers is not None:
                arr = arr[:, keep_layers]
            out[filled : filled + len(batch_ids)] = arr
            ids.extend(batch_ids)
            filled += len(batch_ids)
            row += batch.num_rows
        # The handle is pinned to one dataset version, the one the index was built from, so a
        # concurrent writer cannot make these disagree; a mismatch is a bug worth a loud error.
        if filled != len(out):
            raise RuntimeError(f"read_all filled {filled} of {len(out)} rows: id index out of sync")
        return ids, out

    def failures(self) -> pa.Table:
        """All recorded failures (item_id, fingerprint, reason, time), oldest first."""
        ds = _open_lance(self.path / FAILURES)
        return self._failures_schema().empty_table() if ds is None else ds.to_table()

    def failed_ids(self) -> set[str]:
        """Ids that failed at least once and have no tokens (a later success clears a failure)."""
        return set(self.failures().column("item_id").to_pylist()) - self.done_ids()

    # ------------------------------------------------------------------ maintenance
    def info(self) -> dict[str, Any]:
        index = self._ensure_index()
        ds = self._dataset()
        fails = self.failures()
        size = _dir_size(self.path)
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "fingerprint_fields": self.meta.fingerprint_fields,
            "layers": list(self.layers),
            "layer_names": list(self.layer_names),
            "token_kinds": list(self.token_kinds),
            "shape": list(self.shape),
            "dtype": self.meta.dtype,
            "items": len(index),
            "rows": self._rows,
            "duplicate_rows": self._rows - len(index),
            "failures": fails.num_rows,
            "failed_items": len(set(fails.column("item_id").to_pylist()) - set(index)),
            "fragments": len(ds.get_fragments()) if ds is not None else 0,
            "version": ds.version if ds is not None else 0,
            "bytes_on_disk": size,
            "bytes_per_item": size / len(index) if index else None,
            "created": self.meta.created,
        }

    def compact(self, cleanup: bool = True) -> None:
        """Merge small fragments (one per `append`) into large files, drop rows shadowed by a later
        write of the same id, and with ``cleanup`` delete old versions and files orphaned by a crash.
        Run it with no writer active: ``cleanup`` deletes unreferenced files, which include the data
        files of a commit still in flight. Readers holding an old version break after cleanup."""
        ds = self._dataset()
        if ds is None:
            return
        index = self._ensure_index()
        if self._rows != len(index):
            # Rewriting the live rows is one atomic overwrite commit; fine at feature-store sizes.
            table = ds.to_table(scan_in_order=True)
            offsets = np.array(sorted(index.values()), dtype=np.int64)
            live = table.take(pa.array(offsets))
            self._ds = lance.write_dataset(live, str(self.path / TOKENS), mode="overwrite")
        else:
            ds.optimize.compact_files()
        if cleanup:
            ds = lance.dataset(str(self.path / TOKENS))
            ds.cleanup_old_versions(older_than=timedelta(seconds=0), delete_unverified=True)
        self.refresh()

    def __repr__(self) -> str:
        n = len(self._index) if self._index is not None else "?"
        fp, shape = self.fingerprint, self.shape
        return f"FeatureStore({str(self.path)!r}, fingerprint={fp}, shape={shape}, items={n})"
