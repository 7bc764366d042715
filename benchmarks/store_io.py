"""FeatureStore I/O: Lance (the store) against safetensors shards + a JSON manifest (the alternative).

Writes N random items of LayerTokens ``[L, S, D]`` float16 in batches (as the extraction pipeline
does), then measures random-access reads (batches of random ids, like a training loader or the
server's cold-start path) and one full read into a single array (training), plus bytes per item.
Reads are measured cold (the files' pages evicted from the OS cache with posix_fadvise, no root
needed) and warm (second pass). Lance is measured as written (one fragment per append) and after
``compact()``.

    .venv/bin/python benchmarks/store_io.py                      # 20k items of [8, 6, 384]
    .venv/bin/python benchmarks/store_io.py --items 2000 --keep  # quick look, keep the files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from linkedout.backbones.base import ItemTokens
from linkedout.store import FeatureStore
from provenance import provenance


def evict_page_cache(path: Path) -> None:
    """Best-effort cold cache: ask the kernel to drop the clean pages of every file under ``path``."""
    if not hasattr(os, "posix_fadvise"):
        return
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def batches_of_items(n: int, shape: tuple[int, ...], batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        count = min(batch, n - start)
        data = rng.standard_normal((count, *shape), dtype=np.float32).astype(np.float16)
        yield [f"item{start + k}" for k in range(count)], data


def time_random_reads(
    read: Callable[[list[str]], np.ndarray], ids: list[str], batch: int, rounds: int
) -> float:
    rng = np.random.default_rng(1)
    picks = [[ids[j] for j in rng.choice(len(ids), size=batch, replace=False)] for _ in range(rounds)]
    t = time.perf_counter()
    for p in picks:
        read(p)
    return rounds * batch / (time.perf_counter() - t)


# --------------------------------------------------------------------------- safetensors baseline
class SafetensorsShards:
    """One ``.safetensors`` file per written batch + ``manifest.json`` (rewritten atomically after
    each shard: the shard is only "in" once the manifest names it). Reads memory-map the shards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._handles: dict[str, object] = {}

    def append(self, ids: list[str], data: np.ndarray) -> None:
        from safetensors.numpy import save_file

        name = f"shard-{len(self.shards):06d}.safetensors"
        save_file({"tokens": data}, str(self.path / name))
        self.shards.append({"file": name, "ids": ids})
        tmp = self.path / "manifest.json.tmp"
        tmp.write_text(json.dumps({"shards": self.shards}))
        os.replace(tmp, self.path / "manifest.json")
        self._index = None

    def _ensure(self) -> None:
        if getattr(self, "_index", None) is None:
            self._index = {i: (s, r) for s, sh in enumerate(self.shards) for r, i in enumerate(sh["ids"])}

    def _open(self, shard: int):
        from safetensors import safe_open

        name = self.shards[shard]["file"]
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.path / name), framework="numpy")
        return self._handles[name]

    def read(self, ids: list[str]) -> np.ndarray:
        self._ensure()
        rows = [self._index[i] for i in ids]
        return np.stack([self._open(s).get_slice("tokens")[r] for s, r in rows])

    def read_all(self) -> tuple[list[str], np.ndarray]:
        n = sum(len(s["ids"]) for s in self.shards)
        first = self._open(0).get_slice("tokens")
        out = np.empty((n, *first.get_shape()[1:]), dtype=np.float16)
        ids: list[str] = []
        for s, sh in enumerate(self.shards):
            out[len(ids) : len(ids) + len(sh["ids"])] = self._open(s).get_tensor("tokens")
            ids.extend(sh["ids"])
        return ids, out

    def drop_handles(self) -> None:
        self._handles.clear()


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--shape", type=int, nargs=3, default=[8, 6, 384], metavar=("L", "S", "D"))
    ap.add_argument("--write-batch", type=int, default=256)
    ap.add_argument("--read-batch", type=int, default=256)
    ap.add_argument("--read-rounds", type=int, default=40)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written stores")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    made_by = provenance()

    shape = tuple(args.shape)
    root = Path(args.dir or tempfile.mkdtemp(prefix="store_io_"))
    root.mkdir(parents=True, exist_ok=True)
    raw = args.items * int(np.prod(shape)) * 2
    results: dict[str, dict] = {}
    print(f"{args.items} items of {list(shape)} float16 = {raw / 1e6:.0f} MB raw, batch {args.write_batch}")

    # ---- Lance FeatureStore
    lance_path = root / "lance"
    store = FeatureStore.create(
        lance_path, {"bench": "store_io"}, range(shape[0]), ["t"] * shape[1], shape[2]
    )
    t = time.perf_counter()
    for ids, data in batches_of_items(args.items, shape, args.write_batch):
        store.append([ItemTokens(i, d) for i, d in zip(ids, data, strict=True)])
    write_s = time.perf_counter() - t
    all_ids = store.ids()

    def lance_reads(label: str) -> dict:
        row: dict = {}
        evict_page_cache(lance_path)
        fresh = FeatureStore.open(lance_path)
        fresh.done_ids()  # build the id index outside the timed region (a server does it once)
        row["random_cold_items_per_s"] = time_random_reads(
            fresh.read, all_ids, args.read_batch, args.read_rounds
        )
        row["random_warm_items_per_s"] = time_random_reads(
            fresh.read, all_ids, args.read_batch, args.read_rounds
        )
        evict_page_cache(lance_path)
        fresh = FeatureStore.open(lance_path)
        t = time.perf_counter()
        ids, arr = fresh.read_all()
        row["read_all_cold_s"] = time.perf_counter() - t
        assert len(ids) == args.items and arr.shape == (args.items, *shape)
        del arr
        info = fresh.info()
        row["bytes_per_item"] = info["bytes_on_disk"] / args.items
        row["fragments"] = info["fragments"]
        results[label] = row
        return row

    results_write = {"lance": write_s}
    lance_reads("lance (as written)")
    t = time.perf_counter()
    store.compact(cleanup=True)
    compact_s = time.perf_counter() - t
    lance_reads("lance (compacted)")

    # check: random read returns what was written
    check_ids, check_data = next(batches_of_items(args.items, shape, args.write_batch))
    assert np.array_equal(FeatureStore.open(lance_path).read(check_ids[:7]), check_data[:7])

    # ---- safetensors shards + manifest
    st_path = root / "safetensors"
    shards = SafetensorsShards(st_path)
    t = time.perf_counter()
    for ids, data in batches_of_items(args.items, shape, args.write_batch):
        shards.append(ids, data)
    results_write["safetensors"] = time.perf_counter() - t
    row: dict = {}
    evict_page_cache(st_path)
    shards.drop_handles()
    row["random_cold_items_per_s"] = time_random_reads(
        shards.read, all_ids, args.read_batch, args.read_rounds
    )
    row["random_warm_items_per_s"] = time_random_reads(
        shards.read, all_ids, args.read_batch, args.read_rounds
    )
    evict_page_cache(st_path)
    shards.drop_handles()
    t = time.perf_counter()
    ids, arr = shards.read_all()
    row["read_all_cold_s"] = time.perf_counter() - t
    assert np.array_equal(arr[:7], check_data[:7])
    del arr
    row["bytes_per_item"] = dir_bytes(st_path) / args.items
    row["fragments"] = len(shards.shards)
    results["safetensors shards"] = row

    # ---- report
    print(
        f"write: lance {results_write['lance']:.1f} s, safetensors {results_write['safetensors']:.1f} s;"
        f" lance compact {compact_s:.1f} s"
    )
    print(f"{'store':<22}{'files':>7}{'rand cold it/s':>16}{'rand warm it/s':>16}{'read_all s':>12}", end="")
    print(f"{'B/item':>10}")
    for label, r in results.items():
        print(
            f"{label:<22}{r['fragments']:>7}{r['random_cold_items_per_s']:>16,.0f}"
            f"{r['random_warm_items_per_s']:>16,.0f}{r['read_all_cold_s']:>12.2f}{r['bytes_per_item']:>10,.0f}"
        )
    payload = int(np.prod(shape)) * 2
    print(f"raw payload {payload} B/item; reads: {args.read_rounds} x {args.read_batch} random ids")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "provenance": made_by,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "write_s": results_write,
                    "compact_s": compact_s,
                    "results": results,
                },
                indent=2,
            )
        )
    if not args.keep and args.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
