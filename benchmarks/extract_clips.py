"""Benchmark the extraction pipeline on real clips: is decoding hidden behind the backbone?

Usage:
    python benchmarks/extract_clips.py                                  # bench tier, frames backbone, T=8
    python benchmarks/extract_clips.py --configs inline,threads:1,processes:1 --rounds 3
    python benchmarks/extract_clips.py --tier small --frames 4 --limit 8 --json out.json

For each decode configuration it runs `linkedout.extract.extract` end to end into a fresh store, and
compares with the backbone alone on the very same frames (decoded beforehand, kept in memory, fed in
the same batches). The headline number is ``ratio = end-to-end seconds / backbone-only seconds``: 1.0
means decoding, batching and writing cost nothing on top of the model (goal <= 1.15). Backbone-only is
timed before and after each round of end-to-end runs and averaged, because a shared machine drifts;
``--rounds N`` repeats everything (configs in rotated order) and reports medians.

Also reported: clips/s, frames/s, the main thread's time spent waiting for decoded clips, decode-only
seconds (one thread, sequential), peak RSS (this process; decode worker processes separately), and
failures on valid clips (goal 0). One JSON line per configuration is printed at the end.
Peak RSS is sampled during each end-to-end run (this process, and with decode worker processes), and
measured once for a fresh `linkedout extract` process with default settings (the clean number).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from linkedout.backbones import get_backbone
from linkedout.backbones.base import ItemInput
from linkedout.backbones.extractor import Extractor
from linkedout.data.catalog import Catalog
from linkedout.extract import default_frame_size, extract
from linkedout.samples import fetch_samples
from linkedout.video import DecodedClip, FrameSampler
from provenance import provenance


class _PeakRSS:
    """Peak resident memory during a block, sampled every 20 ms: a process (this one by default), and
    it plus its children (decode worker processes). ``ru_maxrss`` cannot do this: it is a lifetime
    peak, and for a child it includes the parent's size between fork and exec."""

    def __init__(self, pid: int | None = None) -> None:
        self.me = psutil.Process(pid)
        self.peak_self = self.peak_total = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        try:
            mine = self.me.memory_info().rss
            children = self.me.children(recursive=True)
        except psutil.Error:  # the watched process has exited
            return
        total = mine
        for child in children:
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


def _decode_all(catalog: Catalog, extractor: Extractor) -> tuple[list[ItemInput], float, dict[str, str]]:
    """Every clip's frames, decoded sequentially in this thread (also times decode-only)."""
    inputs, failed = [], {}
    t0 = time.perf_counter()
    assert extractor.sampler is not None
    for item in catalog:
        got = extractor.sampler.try_sample(item.path)
        if isinstance(got, DecodedClip):
            inputs.append(
                extractor.item_input(item.id, got, title=item.title, text=item.text, path=item.path)
            )
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


def _machine(load0: tuple[float, ...]) -> dict:
    return {
        "cores": os.cpu_count(),
        "gpu": torch.cuda.is_available(),
        "torch_default_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="bench", choices=["small", "bench"])
    ap.add_argument("--limit", type=int, help="only the first N valid clips (quick A/B runs)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--configs", default="threads:1", help="comma list: inline, threads:N, processes:N")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything, configs in rotated order")
    ap.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default (all cores)")
    ap.add_argument("--no-cli-rss", action="store_true", help="skip the fresh-process RSS run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    made_by = provenance(None if argv is None else [sys.argv[0], *argv])

    samples = fetch_samples(args.tier, quiet=True)
    catalog = Catalog.from_samples(samples)[: args.limit]  # valid clips only: edge cases are not items
    backbone = get_backbone("frames")
    sampler = FrameSampler(args.frames, default_frame_size(backbone))
    configs = [_parse_config(c.strip()) for c in args.configs.split(",")]
    load0 = os.getloadavg()
    torch_default = torch.get_num_threads()

    def threads_for(workers: int) -> int:
        """torch threads of an end-to-end run; its backbone-only reference uses the same count.
        (One count for all configs today; per-config counts were tried, see docs/extraction.md.)"""
        return args.torch_threads or torch_default

    thread_counts = sorted({threads_for(w) for _, w, _ in configs})

    def backbone_only() -> tuple[dict[int, float], float, dict[str, str], int]:
        inputs, decode_s, failed = _decode_all(catalog, Extractor(backbone, sampler))
        frames = sum(len(i.frames) for i in inputs if i.frames is not None)
        times = {}
        for n in thread_counts:
            torch.set_num_threads(n)
            times[n] = _backbone_only(backbone, inputs, args.batch_size)
        torch.set_num_threads(torch_default)
        return times, decode_s, failed, frames
        # (inputs freed on return: the end-to-end runs' peak RSS must not include them)

    warm, _, _ = _decode_all(catalog[:2], Extractor(backbone, sampler))
    backbone.encode(warm)  # first-call allocations and kernel selection are not steady state
    del warm

    # Rounds: backbone-only, then every config (rotated), then backbone-only again; each config's
    # ratio uses the mean of the backbone-only times measured just before and after its round.
    bb_times: list[dict[int, float]] = []
    decode_times: list[float] = []
    runs: dict[str, list[tuple]] = {label: [] for label, _, _ in configs}
    bb_s, decode_s, precheck_failed, n_frames = backbone_only()
    bb_times.append(bb_s)
    decode_times.append(decode_s)
    for rnd in range(args.rounds):
        order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
        round_runs = []
        for label, workers, parallel in order:
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
                    torch_threads=threads_for(workers),
                )
            round_runs.append((label, r, rss.peak_self / 2**20, rss.peak_total / 2**20))
            print(f"round {rnd + 1} {label:<12} {r.summary()}", flush=True)
        bb_s, decode_s, _, _ = backbone_only()
        bb_times.append(bb_s)
        decode_times.append(decode_s)
        for label, r, rss_self, rss_total in round_runs:
            n = threads_for(r.workers)
            ref = (bb_times[-2][n] + bb_times[-1][n]) / 2
            runs[label].append((r, r.seconds / ref, rss_self, rss_total))
        show = "; ".join(
            f"{n} thread(s) {bb_times[-2][n]:.1f} -> {bb_times[-1][n]:.1f} s" for n in thread_counts
        )
        print(f"round {rnd + 1} backbone only, before -> after: {show}", flush=True)

    # Peak RSS of a real `linkedout extract` in a fresh process: in this process, memory the
    # backbone-only passes freed stays mapped (glibc keeps freed heap), inflating every later peak.
    cli_rss = None
    if not args.no_cli_rss:
        tier = f"samples:{args.tier}"
        with tempfile.TemporaryDirectory(prefix="linkedout-bench-") as tmp:
            cmd = [sys.executable, "-c", "from linkedout.cli import app; app()", "extract", "--catalog", tier]
            cmd += ["--store", str(Path(tmp) / "s"), "--frames", str(args.frames), "-q", "--json"]
            cmd += ["--batch-size", str(args.batch_size)] + (
                ["--limit", str(args.limit)] if args.limit else []
            )
            if args.torch_threads:
                cmd += ["--torch-threads", str(args.torch_threads)]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            with _PeakRSS(proc.pid) as child_rss:  # Popen returns after exec: no pre-exec sample
                stdout, stderr = proc.communicate()
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"linkedout extract failed:\n{stderr}")
        report = json.loads(stdout)
        cli_rss = {
            "peak_rss_mb": round(child_rss.peak_total / 2**20, 1),
            "wall_seconds_incl_startup": round(wall, 2),
            "e2e_seconds": report["seconds"],
            "workers": report["workers"],
            "parallel": report["parallel"],
            "failed": report["failed"],
        }
        print(f"fresh `linkedout extract` process: {cli_rss}", flush=True)

    machine = _machine(load0)
    print(
        f"\n{len(catalog)} valid clips, T={args.frames}, size={sampler.size}, batch {args.batch_size}, "
        f"{args.rounds} round(s); backbone only by torch threads (s): "
        f"{'; '.join(', '.join(f'{n}: {t:.1f}' for n, t in bt.items()) for bt in bb_times)}; "
        f"decode only {statistics.median(decode_times):.1f} s (1 thread, median); load average "
        f"{load0[0]:.1f} -> {machine['loadavg_end'][0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'config':<12} {'threads':>7} {'e2e s':>7} {'ratio':>6} {'clips/s':>8} {'frames/s':>9} "
        f"{'wait s':>7} {'RSS MB':>7} {'fail':>5}   (medians; ratio = e2e / backbone-only, same threads)"
    )
    results = []
    for label, rows in runs.items():
        med = statistics.median
        e2e = med(r.seconds for r, *_ in rows)
        ratio = med(x for _, x, _, _ in rows)
        fails = max(len(r.failed) for r, *_ in rows)
        r0 = rows[0][0]
        threads = threads_for(r0.workers)
        print(
            f"{label:<12} {threads:7d} {e2e:7.1f} {ratio:6.2f} {len(catalog) / e2e:8.2f} "
            f"{r0.frames / e2e:9.1f} "
            f"{med(r.decode_wait_seconds for r, *_ in rows):7.1f} {max(x for *_, x in rows):7.0f} {fails:5d}"
        )
        results.append(
            {
                "bench": "extract_clips",
                "tier": args.tier,
                "config": label,
                "rounds": args.rounds,
                "clips": len(catalog),
                "extracted": min(r.extracted for r, *_ in rows),
                "failures_on_valid": fails,
                "failed": {k: v for r, *_ in rows for k, v in r.failed.items()},
                "frames": r0.frames,
                "num_frames": args.frames,
                "size": sampler.size,
                "batch_size": args.batch_size,
                "torch_threads": threads,
                "e2e_seconds": round(e2e, 2),
                "e2e_seconds_all": [round(r.seconds, 2) for r, *_ in rows],
                "clips_per_second": round(len(catalog) / e2e, 3),
                "frames_per_second": round(r0.frames / e2e, 2),
                "ratio_e2e_to_backbone": round(ratio, 3),
                "ratio_all": [round(x, 3) for _, x, _, _ in rows],
                "backbone_only_seconds_all": [round(t[threads], 2) for t in bb_times],
                "decode_wait_seconds": round(med(r.decode_wait_seconds for r, *_ in rows), 2),
                "decode_seconds_in_workers": round(med(r.decode_seconds for r, *_ in rows), 2),
                "decode_only_seconds_1_thread": round(statistics.median(decode_times), 2),
                "backbone_seconds_in_run": round(med(r.backbone_seconds for r, *_ in rows), 2),
                "write_seconds": round(med(r.write_seconds + r.compact_seconds for r, *_ in rows), 2),
                "peak_rss_mb": round(max(x for _, _, x, _ in rows), 1),
                "peak_rss_mb_with_worker_processes": round(max(x for *_, x in rows), 1),
                "decode_failed_in_precheck": precheck_failed,
                "frames_checked": n_frames,
                "cli_default_run": cli_rss,
                "machine": machine,
                "provenance": made_by,
            }
        )
    for row in results:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if any(row["failures_on_valid"] for row in results) else 0


if __name__ == "__main__":
    sys.exit(main())
