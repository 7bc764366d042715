"""Benchmark the extraction pipeline on real clips: is decoding hidden behind the backbone?

Usage:
    python benchmarks/extract_clips.py                                  # bench tier, frames backbone, T=8
    python benchmarks/extract_clips.py --configs inline,threads:1,threads:2,processes:1,processes:2
    python benchmarks/extract_clips.py --tier small --frames 4 --json out.json

For each decode configuration it runs `linkedout.extract.extract` end to end into a fresh store, and
compares with the backbone alone on the very same frames (decoded beforehand, kept in memory, fed in
the same batches). The headline number is ``ratio = end-to-end seconds / backbone-only seconds``: 1.0
means decoding, batching and writing cost nothing on top of the model (goal <= 1.15). Backbone-only is
timed before and after the end-to-end runs and averaged, because a shared machine drifts.

Also reported: clips/s, frames/s, the main thread's time spent waiting for decoded clips, decode-only
seconds (one thread, sequential), peak RSS (this process; decode worker processes separately), and
failures on valid clips (goal 0). One JSON line per configuration is printed at the end.
Peak RSS is sampled during each end-to-end run (this process, and with decode worker processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from linkedout.backbones import get_backbone
from linkedout.backbones.base import ItemInput
from linkedout.data.catalog import Catalog
from linkedout.data.samples import fetch_samples
from linkedout.extract import default_frame_size, extract, item_text
from linkedout.video import DecodedClip, FrameSampler


class _PeakRSS:
    """Peak resident memory during a block, sampled every 20 ms: this process, and this process plus
    its children (decode worker processes). ``ru_maxrss`` cannot do this: it is a lifetime peak."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.peak_self = self.peak_total = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        mine = self.me.memory_info().rss
        total = mine
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += child.memory_info().rss
        self.peak_self, self.peak_total = max(self.peak_self, mine), max(self.peak_total, total)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> _PeakRSS:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _decode_all(catalog: Catalog, sampler: FrameSampler) -> tuple[list[ItemInput], float, dict[str, str]]:
    """Every clip's frames, decoded sequentially in this thread (also times decode-only)."""
    inputs, failed = [], {}
    t0 = time.perf_counter()
    for item in catalog:
        got = sampler.try_sample(item.path)
        if isinstance(got, DecodedClip):
            meta = {"timestamps": got.timestamps, "duration": got.duration, "fps": got.fps}
            inputs.append(ItemInput(item.id, frames=got.frames, text=item_text(item), meta=meta))
        else:
            failed[item.id] = got.reason
    return inputs, time.perf_counter() - t0, failed


def _backbone_only(backbone: object, inputs: list[ItemInput], batch_size: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        backbone.encode(inputs[start : start + batch_size])  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def _parse_config(text: str) -> tuple[str, int, str]:
    """``inline`` | ``threads:N`` | ``processes:N`` -> (label, workers, parallel)."""
    kind, _, n = text.partition(":")
    if kind == "inline":
        return "inline", 0, "threads"
    if kind not in ("threads", "processes"):
        raise SystemExit(f"unknown config {text!r}: use inline, threads:N or processes:N")
    return text, int(n or 1), kind


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="bench", choices=["small", "bench"])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--configs", default="threads:1", help="comma list: inline, threads:N, processes:N")
    ap.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    samples = fetch_samples(args.tier, quiet=True)
    catalog = Catalog.from_samples(samples)  # valid clips only: edge cases are not catalog items
    backbone = get_backbone("frames")
    sampler = FrameSampler(args.frames, default_frame_size(backbone))
    load0 = os.getloadavg()

    inputs, decode_only_s, decode_failed = _decode_all(catalog, sampler)
    backbone.encode(inputs[:2])  # warm-up: first-call allocations and kernel selection are not steady state
    before = _backbone_only(backbone, inputs, args.batch_size)
    n_frames = sum(len(i.frames) for i in inputs if i.frames is not None)
    del inputs  # the end-to-end runs' peak RSS must not include this copy of every frame

    runs = []
    for cfg in args.configs.split(","):
        label, workers, parallel = _parse_config(cfg.strip())
        with tempfile.TemporaryDirectory(prefix="linkedout-bench-") as tmp, _PeakRSS() as rss:
            r = extract(
                catalog,
                backbone,
                Path(tmp) / "store",
                sampler=sampler,
                batch_size=args.batch_size,
                workers=workers,
                parallel=parallel,  # type: ignore[arg-type]
                progress=False,
            )
        runs.append((label, r, rss.peak_self / 2**20, rss.peak_total / 2**20))
        print(f"{label:<12} {r.summary()}", flush=True)

    inputs, _, _ = _decode_all(catalog, sampler)
    after = _backbone_only(backbone, inputs, args.batch_size)
    backbone_s = (before + after) / 2
    load1 = os.getloadavg()

    machine = {
        "cores": os.cpu_count(),
        "gpu": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in load1],
    }
    print(
        f"\n{len(catalog)} valid clips, T={args.frames}, size={sampler.size}, batch {args.batch_size}; "
        f"backbone only {before:.1f} s before / {after:.1f} s after the runs (mean {backbone_s:.1f} s); "
        f"decode only {decode_only_s:.1f} s (1 thread); load average {load0[0]:.1f} -> {load1[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print(
        f"{'config':<12} {'e2e s':>7} {'ratio':>6} {'clips/s':>8} {'frames/s':>9} {'wait s':>7} {'fail':>5}"
    )
    results = []
    for label, r, rss, rss_total in runs:
        ratio = r.seconds / backbone_s
        print(
            f"{label:<12} {r.seconds:7.1f} {ratio:6.2f} {r.items_per_second:8.2f} "
            f"{r.frames_per_second:9.1f} {r.decode_wait_seconds:7.1f} {len(r.failed):5d}"
        )
        results.append(
            {
                "bench": "extract_clips",
                "tier": args.tier,
                "config": label,
                "clips": len(catalog),
                "extracted": r.extracted,
                "failures_on_valid": len(r.failed),
                "failed": r.failed,
                "frames": r.frames,
                "num_frames": args.frames,
                "size": sampler.size,
                "batch_size": args.batch_size,
                "e2e_seconds": round(r.seconds, 2),
                "clips_per_second": round(r.items_per_second, 3),
                "frames_per_second": round(r.frames_per_second, 2),
                "backbone_only_seconds": round(backbone_s, 2),
                "backbone_only_before_after": [round(before, 2), round(after, 2)],
                "ratio_e2e_to_backbone": round(ratio, 3),
                "decode_wait_seconds": round(r.decode_wait_seconds, 2),
                "decode_seconds_in_workers": round(r.decode_seconds, 2),
                "decode_only_seconds_1_thread": round(decode_only_s, 2),
                "backbone_seconds_in_run": round(r.backbone_seconds, 2),
                "write_seconds": round(r.write_seconds + r.compact_seconds, 2),
                "peak_rss_mb": round(rss, 1),
                "peak_rss_mb_with_worker_processes": round(rss_total, 1),
                "decode_failed_in_precheck": decode_failed,
                "frames_checked": n_frames,
                "machine": machine,
            }
        )
    for row in results:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if any(row["failures_on_valid"] for row in results) else 0


if __name__ == "__main__":
    sys.exit(main())
