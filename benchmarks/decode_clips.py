"""Benchmark frame sampling over real clips: seconds per clip, clips/s, frames/s, failures, per codec.

Usage:
    python benchmarks/decode_clips.py                    # bench tier (fetched into the cache if needed)
    python benchmarks/decode_clips.py --tier small
    python benchmarks/decode_clips.py --folder ~/videos  # any folder, searched recursively
    python benchmarks/decode_clips.py --frames 16 --size 336 --json out.json

Why it exists: decoding is the CPU-bound first stage of extraction; this measures it on the real codec
mix (h264, mpeg4, theora, VP8/9, cinepak, msvideo1, ...) and checks the promise that every valid clip
yields frames. Edge-case clips (deliberately corrupt, black frames) are listed separately and never
count as failures of valid files. Exit status 1 when a valid clip fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import av

from linkedout.video import DecodeFailure, VideoDecodeError, VideoReader, try_sample_frames
from provenance import provenance

VIDEO_EXTENSIONS = (".mp4", ".webm", ".ogv", ".avi", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".gif")


def _clips(args: argparse.Namespace) -> list[tuple[str, Path, bool, str]]:
    """``(name, path, valid, note)`` for every clip to time."""
    if args.folder:
        root = Path(args.folder).expanduser()
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        return [(str(p.relative_to(root)), p, True, "") for p in files]
    from linkedout.samples import fetch_samples

    samples = fetch_samples(args.tier, quiet=True)
    return [(c.name, c.path, c.valid, c.edge or "") for c in samples.clips]


def _probe(path: Path) -> tuple[str, str]:
    """``(codec, container)`` for the per-codec table; "?" when the file does not open."""
    try:
        with VideoReader(path) as r:
            return r.info.codec, r.info.format_name.split(",")[0]
    except VideoDecodeError:
        return "?", "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="bench", choices=["small", "bench"])
    ap.add_argument("--folder", help="time every video under this folder instead of a sample tier")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="short side in pixels; 0 = native size")
    ap.add_argument("--mode", default="uniform", choices=["uniform", "keyframe"])
    ap.add_argument("--strategy", default="auto", choices=["auto", "seek", "sequential"])
    ap.add_argument("--repeat", type=int, default=1, help="decode each clip this many times, keep the best")
    ap.add_argument("--json", help='write {"provenance": ..., "clips": [per-clip results]} here')
    args = ap.parse_args(argv)
    made_by = provenance(None if argv is None else [sys.argv[0], *argv])
    size = args.size or None

    clips = _clips(args)
    rows = []
    for name, path, valid, note in clips:
        codec, container = _probe(path)
        best = float("inf")
        res = None
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            res = try_sample_frames(path, args.frames, size=size, mode=args.mode, strategy=args.strategy)
            best = min(best, time.perf_counter() - t0)
        row = {
            "name": name,
            "valid": valid,
            "note": note,
            "codec": codec,
            "container": container,
            "seconds": best,
            "size_bytes": path.stat().st_size if path.exists() else 0,
        }
        if isinstance(res, DecodeFailure):
            row.update(ok=False, reason=res.reason)
        else:
            assert res is not None
            row.update(
                ok=True,
                duration=res.duration,
                shape=list(res.frames.shape),
                strategy=res.strategy,
                distinct=res.num_distinct_frames,
                skipped_packets=res.skipped_packets,
                empty_packets=res.empty_packets,
                warnings=list(res.warnings),
            )
        rows.append(row)
        status = (
            f"{row['strategy']:<10} {row['duration']:7.1f}s  distinct {row['distinct']}/{args.frames}"
            f"  bad {row['skipped_packets']} empty {row['empty_packets']}"
            if row["ok"]
            else f"FAILED: {row['reason']}"
        )
        flag = "" if valid else f"  [edge case: {note}]"
        print(f"{name[:44]:<44} {codec:<9} {container:<9} {best:6.3f}s  {status}{flag}", flush=True)

    timed = [r for r in rows if r["valid"]]
    ok = [r for r in timed if r["ok"]]
    failed = [r for r in timed if not r["ok"]]
    total_s = sum(r["seconds"] for r in timed)
    print()
    print(
        f"PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}), Python {platform.python_version()}, "
        f"T={args.frames} size={size} mode={args.mode} strategy={args.strategy}, 1 decoder thread"
    )
    if timed:
        secs = sorted(r["seconds"] for r in timed)
        print(
            f"valid clips: {len(timed)}  ok: {len(ok)}  failed: {len(failed)}  total {total_s:.2f} s  "
            f"-> {len(timed) / total_s:.1f} clips/s, {len(ok) * args.frames / total_s:.0f} frames/s  "
            f"(median {statistics.median(secs):.3f} s, p90 {secs[int(0.9 * (len(secs) - 1))]:.3f} s, "
            f"max {secs[-1]:.3f} s a clip)"
        )
    by_codec: dict[str, list[dict]] = defaultdict(list)
    for r in timed:
        by_codec[r["codec"]].append(r)
    print(f"\n{'codec':<10} {'clips':>5} {'failed':>6} {'mean s':>8} {'max s':>7}  containers")
    for codec, rs in sorted(by_codec.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        conts = ",".join(sorted({r["container"] for r in rs}))
        secs = [r["seconds"] for r in rs]
        failures = sum(not r["ok"] for r in rs)
        print(
            f"{codec:<10} {len(rs):>5} {failures:>6} {statistics.mean(secs):>8.3f} {max(secs):>7.3f}  {conts}"
        )
    edge = [r for r in rows if not r["valid"]]
    if edge:
        print("\nedge-case clips (not counted):")
        for r in edge:
            print(f"  {r['name']}: " + ("ok" if r["ok"] else f"failed: {r['reason']}") + f" ({r['note']})")
    if failed:
        print("\nFAILURES on valid clips:")
        for r in failed:
            print(f"  {r['name']}: {r['reason']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"provenance": made_by, "clips": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
