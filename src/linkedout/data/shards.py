"""Sharded interaction logs: a directory of Parquet shards holding whole users, read one shard at a
time so that a log larger than RAM trains in bounded memory (`linkedout train --dataset DIR`).

Layout::

    DIR/manifest.json          counts, shards, training item counts' total, fingerprint, where it came from
    DIR/items.parquet          item_id (raw id, ascending: row r = item index r), train_count
    DIR/shard-00000.parquet    user_id (raw), item (int32 item index), timestamp; sorted by (user, time, item)

Every user lives in exactly one shard (a hash of the raw user id modulo the number of shards, or, for a
generated log, the shard that generated it), so a user's leave-one-out split needs only its own shard:
`ShardedLog.split_shard` runs the in-RAM `split` on one shard and gives every user the same train, valid
and test events as `split` of the whole log (tests/test_shards.py checks it). Item indices are global
(the ascending raw ids, as `Interactions.from_arrays` numbers them), so one shard's windows feed the
same model as any other's. ``train_count`` (each item's events in training position under leave-one-out)
is what logQ and the model's "trained items" read; it is summed while the shards are written.

The manifest is written last: a directory without one is an interrupted write, never a short log.

Streaming (`ShardStream`): an epoch visits the shards in a shuffled order, the next shard loading on a
thread while the current one trains; windows are shuffled within a shard and a batch may straddle two
shards (the carried windows are already materialised), so every step has the full batch size. At most
two shards are resident at once (the one training, the one loading), whatever the log's size:
`ShardStream.peak_resident` counts them.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import weakref
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from linkedout.data.batches import TrainWindows
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, Split, get_protocol, split
from linkedout.data.textio import DataFormatError

FORMAT = "linkedout-shards/1"
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
DEFAULT_EVAL_USERS = 10_000


def is_sharded_log(path: str | Path) -> bool:
    """True when ``path`` is a directory written by `ShardSetWriter` (it has a shard manifest)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def check_streamable(protocol: Protocol) -> None:
    """A shard holds whole users but not whole items: filters that count an item's events across the
    log (and cold items, drawn over the catalogue) cannot be applied one shard at a time."""
    refused = {
        "min_user_interactions": protocol.min_user_interactions,
        "min_item_interactions": protocol.min_item_interactions,
        "k_core": protocol.k_core,
        "keep_last": protocol.keep_last,
        "cold_items": protocol.cold_items,
    }
    set_ = [f"{k}={v}" for k, v in refused.items() if v]
    if set_:
        raise ValueError(
            f"protocol {protocol.name!r} sets {', '.join(set_)}: a sharded log trains under leave-one-out "
            "without filtering or cold items (use --protocol recbole, or filter the log before sharding)"
        )


# ---------------------------------------------------------------------------------------------- writing
class ShardSetWriter:
    """Writes a sharded log: `add` one shard's events at a time (raw user ids, item indices, times, in
    any order), then `close` writes items.parquet and, last, the manifest."""

    def __init__(self, root: str | Path, item_ids: np.ndarray, source: dict) -> None:
        self.root = Path(root)
        if (self.root / MANIFEST).exists():
            raise FileExistsError(f"{self.root} already holds a sharded log; remove it or pick another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        self.item_ids = np.asarray(item_ids)
        self.source = source
        self.train_counts = np.zeros(len(self.item_ids), dtype=np.int64)
        self.shards: list[dict] = []
        self._digest = hashlib.sha256()

    def add(self, users, items: np.ndarray, timestamps: np.ndarray | None = None) -> None:
        """One shard: every event of its users. ``items`` are item indices (into ``item_ids``)."""
        items = np.asarray(items)
        if len(items) and (items.min() < 0 or items.max() >= len(self.item_ids)):
            raise ValueError(f"item indices must lie in [0, {len(self.item_ids)})")
        # from_arrays sorts by (user, time, item); item indices order like the raw ids they stand for
        local = Interactions.from_arrays(users, items, timestamps)
        shard = Interactions(
            local.offsets,
            local.item_ids[local.items].astype(np.int32),
            local.timestamps,
            local.user_ids,
            self.item_ids,
        )
        name = f"shard-{len(self.shards):05d}.parquet"
        table = pa.table(
            {
                "user_id": np.repeat(shard.user_ids, shard.lengths()),
                "item": shard.items,
                "timestamp": shard.timestamps,
            }
        )
        tmp = self.root / (name + ".part")
        pq.write_table(table, tmp)
        tmp.replace(self.root / name)
        train = split(shard, get_protocol("recbole"))
        train_lengths = train.train_lengths()
        self.train_counts += train.train_item_counts()
        self.shards.append(
            {
                "file": name,
                "users": shard.n_users,
                "events": shard.n_events,
                "first_user": sum(s["users"] for s in self.shards),
                "train_events": int(train_lengths.sum()),
                "train_targets": int(np.maximum(train_lengths - 1, 0).sum()),
            }
        )
        for array in (table["user_id"], shard.items, shard.timestamps):
            self._digest.update(_array_bytes(array))

    def close(self) -> ShardedLog:
        items = pa.table({"item_id": self.item_ids, "train_count": self.train_counts})
        pq.write_table(items, self.root / ITEMS)
        self._digest.update(_array_bytes(items["item_id"]))
        manifest = {
            "format": FORMAT,
            "n_users": sum(s["users"] for s in self.shards),
            "n_items": len(self.item_ids),
            "n_events": sum(s["events"] for s in self.shards),
            "train_events": sum(s["train_events"] for s in self.shards),
            "train_targets": sum(s["train_targets"] for s in self.shards),
            "split": "leave-one-out by time (ties: item id): valid = seq[-2], test = seq[-1]",
            "source": self.source,
            "fingerprint": self._digest.hexdigest(),
            "shards": self.shards,
        }
        tmp = self.root / (MANIFEST + ".part")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(self.root / MANIFEST)  # last: its presence says the log is whole
        return ShardedLog.open(self.root)


def _array_bytes(values) -> bytes:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    if values.dtype.kind in "OUS":
        return "\x1f".join(map(str, values.tolist())).encode()
    return np.ascontiguousarray(values).tobytes()


def shard_log(
    path: str | Path,
    out: str | Path,
    n_shards: int,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    batch_rows: int = 1 << 20,
) -> ShardedLog:
    """Write the log file ``path`` (Parquet, or CSV/TSV with a header) as ``n_shards`` shards under
    ``out`` without holding it in memory: pass 1 streams record batches and appends each row to its
    user's shard (hash of the raw user id) in a temporary file while collecting the item ids; pass 2
    sorts one shard at a time. Memory: one shard plus the item ids. Ids are read as the file types
    them (integer columns as int64, text as strings); without a time column the row order is time."""
    import pyarrow.csv as pcsv
    import pyarrow.dataset as pds

    from linkedout.data.readers.common import find_column
    from linkedout.data.textio import time_values

    path, root = Path(path), Path(out)
    if n_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {n_shards}")
    if not path.is_file():
        raise FileNotFoundError(f"no log file at {path}")
    fmt = "parquet" if path.suffix in (".parquet", ".pq") else "csv"
    if fmt == "csv" and path.suffix in (".tsv", ".tab"):
        fmt = pds.CsvFileFormat(parse_options=pcsv.ParseOptions(delimiter="\t"))
    try:
        dataset = pds.dataset(path, format=fmt)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(path, None, None, f"not a readable log file: {exc}") from exc
    names = dataset.schema.names
    user = find_column(names, "user", user_col, path, None)
    item = find_column(names, "item", item_col, path, None)
    tcol = find_column(names, "time", time_col, path, None, required=False)
    columns = [c for c in (user, item, tcol) if c is not None]
    if (root / MANIFEST).exists():
        raise FileExistsError(f"{root} already holds a sharded log; remove it or pick another --out")
    tmp_dir = root / "_partitions"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    uniques: list[pa.Array] = []
    row = 0
    try:
        for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
            if batch.num_rows == 0:
                continue
            for name in columns:
                nulls = batch.column(name).null_count
                if nulls:
                    raise DataFormatError(path, None, name, f"{nulls} missing values")
            users, items = _ids(batch.column(user)), _ids(batch.column(item))
            times = (
                pa.array(time_values(batch.column(tcol)))
                if tcol
                else pa.array(np.arange(row, row + batch.num_rows, dtype=np.int64))
            )
            row += batch.num_rows
            part = pa.table({"user_id": users, "item_id": items, "timestamp": times})
            owner = user_shard(users, n_shards)
            for k in np.unique(owner).tolist():
                rows = part.filter(pa.array(owner == k))
                if k not in writers:
                    writers[k] = pq.ParquetWriter(tmp_dir / f"{k:05d}.parquet", rows.schema)
                writers[k].write_table(rows)
            uniques.append(pc.unique(items))
            if len(uniques) > 16:  # keep the running set of item ids small
                uniques = [pc.unique(pa.chunked_array(uniques))]
    finally:
        for w in writers.values():
            w.close()
    if row == 0:
        raise DataFormatError(path, None, None, "no interactions (0 rows)")
    all_items = pc.unique(pa.chunked_array(uniques))
    item_ids = all_items.take(pc.sort_indices(all_items))
    writer = ShardSetWriter(root, item_ids.to_numpy(zero_copy_only=False), {"log": str(path)})
    for k in range(n_shards):
        part_path = tmp_dir / f"{k:05d}.parquet"
        if not part_path.exists():
            continue  # more shards than users: this one got none
        part = pq.read_table(part_path)
        index = pc.index_in(part["item_id"], value_set=item_ids).to_numpy(zero_copy_only=False)
        writer.add(part["user_id"].combine_chunks(), index, part["timestamp"].to_numpy())
        part_path.unlink()
    tmp_dir.rmdir()
    return writer.close()


def _ids(values: pa.Array) -> pa.Array:
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        from linkedout.data.textio import canonical_ids

        return canonical_ids(values)
    return pc.utf8_trim_whitespace(values.cast(pa.string()))


def user_shard(users: pa.Array, n_shards: int) -> np.ndarray:
    """The shard of every raw user id: a hash (splitmix64 of integers, CRC-32 of strings) modulo
    ``n_shards``; stable across runs and machines, unlike Python's salted ``hash``."""
    if pa.types.is_integer(users.type):
        x = users.to_numpy(zero_copy_only=False).astype(np.uint64)
        with np.errstate(over="ignore"):  # the mixing relies on wrap-around
            x = (x + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
        return ((x ^ (x >> np.uint64(29))) % np.uint64(n_shards)).astype(np.int64)
    encoded = pc.dictionary_encode(users)
    per_value = np.array(
        [zlib.crc32(v.encode()) % n_shards for v in encoded.dictionary.to_pylist()], dtype=np.int64
    )
    return per_value[encoded.indices.to_numpy(zero_copy_only=False)]


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardedLog:
    root: Path
    manifest: dict
    item_ids: np.ndarray  # raw item ids, ascending: index = row
    train_counts: np.ndarray  # int64 [n_items]: training events per item under leave-one-out

    @classmethod
    def open(cls, root: str | Path) -> ShardedLog:
        root = Path(root)
        if not is_sharded_log(root):
            hint = " (an interrupted write: no manifest)" if (root / ITEMS).exists() else ""
            raise FileNotFoundError(f"{root} is not a sharded log{hint}: expected {MANIFEST} of {FORMAT}")
        manifest = json.loads((root / MANIFEST).read_text())
        items = pq.read_table(root / ITEMS)
        return cls(
            root,
            manifest,
            items["item_id"].to_numpy(),
            items["train_count"].to_numpy().astype(np.int64),
        )

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    @property
    def n_users(self) -> int:
        return int(self.manifest["n_users"])

    @property
    def n_events(self) -> int:
        return int(self.manifest["n_events"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def summary(self) -> dict:
        m = self.manifest
        keys = ("n_users", "n_items", "n_events", "train_events", "train_targets", "fingerprint")
        return {**{k: m[k] for k in keys}, "shards": self.n_shards, "source": m["source"]}

    def read_shard(self, k: int) -> Interactions:
        """Shard ``k``'s users (rows in raw-id order) with global item indices."""
        info = self.manifest["shards"][k]
        table = pq.read_table(self.root / info["file"])
        user_ids = table["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if len(user_ids) else []
        offsets = np.append(np.asarray(starts, dtype=np.int64), len(user_ids))
        if len(offsets) - 1 != info["users"] or len(user_ids) != info["events"]:
            raise DataFormatError(self.root / info["file"], None, None, "does not match the manifest")
        return Interactions(
            offsets,
            table["item"].to_numpy().astype(np.int32, copy=False),
            table["timestamp"].to_numpy(),
            user_ids[offsets[:-1]],
            self.item_ids,
        )

    def split_shard(self, k: int, protocol: Protocol) -> Split:
        """The in-RAM `split` of shard ``k`` alone: each of its users split as in the whole log."""
        check_streamable(protocol)
        return split(self.read_shard(k), protocol)

    def eval_split(
        self, protocol: Protocol, n_users: int | None = DEFAULT_EVAL_USERS, seed: int = 0
    ) -> Split:
        """Validation and test on a seeded sample of ``n_users`` evaluable users (None: all of them),
        read from as few shards as hold that many: users are spread over shards by a hash, so whole
        shards in a random order are a random sample of users. Its training part is those users' only
        (training reads every shard through `stream`)."""
        check_streamable(protocol)
        rng = np.random.default_rng(seed)
        parts: list[Interactions] = []
        wanted = math.inf if n_users is None else n_users
        have = 0
        for k in rng.permutation(self.n_shards).tolist():
            if have >= wanted:
                break
            shard = self.read_shard(k)
            evaluable = np.flatnonzero(shard.lengths() >= 3)
            if have + len(evaluable) > wanted:
                evaluable = np.sort(rng.choice(evaluable, int(wanted - have), replace=False))
            have += len(evaluable)
            parts.append(_select_users(shard, evaluable))
        if not parts:
            raise ValueError(f"{self.root} has no shards")
        return split(_concat_users(parts, self.item_ids), protocol)

    def stream(self, protocol: Protocol) -> ShardStream:
        check_streamable(protocol)
        return ShardStream(self, protocol)


def _select_users(data: Interactions, rows: np.ndarray) -> Interactions:
    from linkedout.data.batches import ragged_positions

    starts, ends = data.offsets[rows], data.offsets[rows + 1]
    index = ragged_positions(starts, ends)[1]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    return Interactions(
        offsets, data.items[index], data.timestamps[index], data.user_ids[rows], data.item_ids
    )


def _concat_users(parts: list[Interactions], item_ids: np.ndarray) -> Interactions:
    lengths = np.concatenate([p.lengths() for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Interactions(
        offsets,
        np.concatenate([p.items for p in parts]),
        np.concatenate([p.timestamps for p in parts]),
        np.concatenate([p.user_ids for p in parts]),
        item_ids,
    )


# -------------------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class _TrainShard:
    """What training needs of one shard: its training sequences as ragged ranges, and user indices."""

    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    users: np.ndarray  # global user index of each sequence


class ShardStream:
    """Training windows of a sharded log, one shard at a time: what `train(..., batches=)` iterates.

    ``epoch(rng, batch_size, jitter)`` yields (inputs, targets, users) numpy batches; with ``rng`` None
    the shards and windows come in file order, unshuffled (what the equivalence test compares)."""

    def __init__(self, log: ShardedLog, protocol: Protocol) -> None:
        self.log = log
        self.protocol = protocol
        self.max_len = protocol.max_seq_len
        self._lock = threading.Lock()
        self.resident = 0  # shards loaded and still referenced (training or prefetched)
        self.peak_resident = 0
        self.shards_loaded = 0

    def _load(self, k: int) -> _TrainShard:
        part = self.log.split_shard(k, self.protocol)
        items, starts, ends = part.train_sequences()
        first = self.log.manifest["shards"][k]["first_user"]
        shard = _TrainShard(items, starts, ends, first + np.arange(len(starts), dtype=np.int64))
        with self._lock:
            self.resident += 1
            self.shards_loaded += 1
            self.peak_resident = max(self.peak_resident, self.resident)
        weakref.finalize(shard, self._released)
        return shard

    def _released(self) -> None:
        with self._lock:
            self.resident -= 1

    def _shards(self, order: list[int]) -> Iterator[_TrainShard]:
        """The shards in ``order``, the next one loading on a thread while the caller trains on this one.
        Neither this generator nor its caller keeps a shard past its turn (see `epoch`), so at most two
        are resident."""
        if not order:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") as pool:
            pending = pool.submit(self._load, order[0])
            for i in range(len(order)):
                shard = pending.result()
                pending = None
                if i + 1 < len(order):
                    pending = pool.submit(self._load, order[i + 1])
                yield shard
                del shard

    def epoch(
        self, rng: np.random.Generator | None, batch_size: int, jitter: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        order = list(range(self.log.n_shards)) if rng is None else rng.permutation(self.log.n_shards).tolist()
        carried: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        n_carried = 0
        for shard in self._shards(order):
            windows = TrainWindows(shard.starts, shard.ends, self.max_len)
            w_start, w_end = windows.sample(rng if jitter else None)
            if rng is not None and not jitter:
                order_w = rng.permutation(len(w_end))
                w_start, w_end = w_start[order_w], w_end[order_w]
            users = shard.users[np.searchsorted(shard.starts, w_start, side="right") - 1]
            lo = 0
            while lo < len(w_end):
                take = min(batch_size - n_carried, len(w_end) - lo)
                inputs, targets = windows.batch(shard.items, w_start[lo : lo + take], w_end[lo : lo + take])
                carried.append((inputs, targets, users[lo : lo + take]))
                n_carried += take
                lo += take
                if n_carried == batch_size:
                    yield _stack(carried)
                    carried, n_carried = [], 0
            del shard, windows, w_start, w_end, users  # release this shard before the next one loads
        if carried:
            yield _stack(carried)


def _stack(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
