"""Content structure check on real clips, with no invented labels: what does each depth of the frames
backbone know?

Usage:
    python benchmarks/content_check.py                       # bench tier
    python benchmarks/content_check.py --segment-seconds 3 --segment-frames 4 --json out.json

Two tasks whose "labels" are facts about the files, not annotations:

(a) **segment retrieval**: clips of at least ``--min-seconds`` (20 s: vtest 79 s, openboard 180 s, tree
    30 s, glines 35 s, ...) are cut into ``--segment-seconds`` windows (`sample_segments`); each window
    is embedded and queries all other windows by cosine. R@5 = share of its 5 nearest windows that come
    from the same clip (every clip has >= 8 windows, so 5 are always possible). Adjacent windows share
    a scene, which makes that easy; "R@5 no adj." drops the query's two neighbours from the candidates.
    ``macro`` averages per clip first (openboard alone has 72 of the windows).
(b) **same source package**: 1-nearest-neighbour, leave-one-out, over whole clips (T frames each) from
    Debian/PyPI packages that hold 3+ clips (planetblupi cutscenes, lebiniou visualiser clips,
    mecavideo physics-lab clips, ...): is the nearest other clip from the same package?

Each is computed per layer of the frames backbone (the S summary tokens averaged, cosine), on the
layers concatenated (each L2-normalised first), and for a colour histogram (joint RGB, 8 bins per
channel, over all frames). Chance rows: a random neighbour (expected accuracy) and, for (b), always
guessing the largest package. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from linkedout.backbones import get_backbone
from linkedout.backbones.base import ItemInput
from linkedout.samples import fetch_samples
from linkedout.video import DecodedClip, FrameSampler, VideoReader, sample_segments
from provenance import provenance


def colour_histogram(frames: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint RGB histogram of all pixels of all frames, L1-normalised: ``[bins**3]``."""
    q = (frames.reshape(-1, 3).astype(np.int64) * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins**3).astype(np.float64)
    return h / h.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed(backbone: object, inputs: list[ItemInput], batch: int = 8) -> np.ndarray:
    """``[N, L, D]`` float32: each layer's S summary tokens averaged."""
    out = []
    for start in range(0, len(inputs), batch):
        for tok in backbone.encode(inputs[start : start + batch]):  # type: ignore[attr-defined]
            out.append(tok.tokens.astype(np.float32).mean(axis=1))
    return np.stack(out)


def representations(tokens: np.ndarray, hist: np.ndarray, layer_names: list[str]) -> dict[str, np.ndarray]:
    """Name -> unit vectors ``[N, d]``: one per layer, the concatenation, the colour histogram."""
    reps = {name: _unit(tokens[:, i]) for i, name in enumerate(layer_names)}
    # Per-layer normalisation first: otherwise the head (1280 wide, largest norms) would dominate.
    reps["concat"] = _unit(np.concatenate([_unit(tokens[:, i]) for i in range(len(layer_names))], axis=1))
    reps["colour hist"] = _unit(hist)
    return reps


def segment_recall(x: np.ndarray, clip_of: np.ndarray, pos: np.ndarray, k: int = 5) -> dict[str, float]:
    """R@k (share of the k nearest other segments from the same clip), micro and macro over clips,
    with and without the query's adjacent segments among the candidates."""
    sim = x @ x.T
    n = len(x)
    out: dict[str, float] = {}
    for name, drop_adjacent in (("", False), (" no adj.", True)):
        per_query = np.empty(n)
        for q in range(n):
            s = sim[q].copy()
            s[q] = -np.inf
            if drop_adjacent:
                s[(clip_of == clip_of[q]) & (np.abs(pos - pos[q]) == 1)] = -np.inf
            top = np.argpartition(-s, k)[:k]
            per_query[q] = np.mean(clip_of[top] == clip_of[q])
        out[f"R@{k}{name}"] = float(per_query.mean())
        out[f"R@{k}{name} macro"] = float(
            np.mean([per_query[clip_of == c].mean() for c in np.unique(clip_of)])
        )
    return out


def segment_chance(clip_of: np.ndarray, pos: np.ndarray, k: int = 5) -> dict[str, float]:
    """Expected R@k when the k neighbours are drawn at random from the candidates."""
    n = len(clip_of)
    out: dict[str, float] = {}
    for name, drop_adjacent in (("", False), (" no adj.", True)):
        per_query = np.empty(n)
        for q in range(n):
            same = clip_of == clip_of[q]
            adj = same & (np.abs(pos - pos[q]) == 1) if drop_adjacent else np.zeros(n, bool)
            cand = n - 1 - adj.sum()
            per_query[q] = (same.sum() - 1 - adj.sum()) / cand
        out[f"R@{k}{name}"] = float(per_query.mean())
        out[f"R@{k}{name} macro"] = float(
            np.mean([per_query[clip_of == c].mean() for c in np.unique(clip_of)])
        )
    return out


def nn_accuracy(x: np.ndarray, group: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy (cosine on unit vectors)."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(group[sim.argmax(axis=1)] == group))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", default="bench", choices=["small", "bench"])
    ap.add_argument("--frames", type=int, default=8, help="T frames per whole clip, task (b)")
    ap.add_argument("--size", type=int, default=256, help="decode short side (the backbone's resize)")
    ap.add_argument("--segment-seconds", type=float, default=2.5)
    ap.add_argument("--segment-frames", type=int, default=4)
    ap.add_argument("--min-seconds", type=float, default=20.0, help="clips this long are cut, task (a)")
    ap.add_argument("--min-package", type=int, default=3, help="packages with this many clips, task (b)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    made_by = provenance(None if argv is None else [sys.argv[0], *argv])
    t_start = time.perf_counter()

    samples = fetch_samples(args.tier, quiet=True)
    clips = sorted(samples.valid_clips(), key=lambda c: c.name)
    backbone = get_backbone("frames")
    names = list(backbone.layer_names)

    # (a) segments of long clips
    long_clips = []
    for c in clips:
        with VideoReader(c.path) as r:
            if (r.info.duration or 0) >= args.min_seconds:
                long_clips.append(c)
    seg_inputs, seg_hist, seg_clip, seg_pos = [], [], [], []
    for ci, c in enumerate(long_clips):
        segs = sample_segments(c.path, args.segment_seconds, args.segment_frames, size=args.size)
        for k, seg in enumerate(segs):
            seg_inputs.append(ItemInput(f"{c.name}#{k}", frames=seg.frames))
            seg_hist.append(colour_histogram(seg.frames))
            seg_clip.append(ci)
            seg_pos.append(k)
    clip_of, pos = np.array(seg_clip), np.array(seg_pos)
    seg_reps = representations(embed(backbone, seg_inputs), np.stack(seg_hist), names)
    del seg_inputs
    seg_rows = {name: segment_recall(x, clip_of, pos) for name, x in seg_reps.items()}
    seg_rows["chance"] = segment_chance(clip_of, pos)

    # (b) whole clips from packages with 3+ clips
    counts = Counter(c.source for c in clips)
    pkg_clips = [c for c in clips if counts[c.source] >= args.min_package]
    sampler = FrameSampler(args.frames, args.size)
    decoded = [sampler(c.path) for c in pkg_clips]
    assert all(isinstance(d, DecodedClip) for d in decoded)
    pkg_inputs = [ItemInput(c.name, frames=d.frames) for c, d in zip(pkg_clips, decoded, strict=True)]
    pkg_hist = np.stack([colour_histogram(d.frames) for d in decoded])
    del decoded
    group = np.array([c.source for c in pkg_clips])
    pkg_reps = representations(embed(backbone, pkg_inputs), pkg_hist, names)
    pkg_rows = {name: nn_accuracy(x, group) for name, x in pkg_reps.items()}
    sizes = np.array(list(Counter(group.tolist()).values()))
    n = len(group)
    pkg_rows["chance"] = float(((sizes * (sizes - 1)).sum()) / (n * (n - 1)))
    pkg_rows["majority package"] = float(sizes.max() / n)

    # report
    per_clip = defaultdict(int)
    for ci in seg_clip:
        per_clip[long_clips[ci].name] += 1
    print(
        f"(a) {len(clip_of)} segments of {args.segment_seconds} s ({args.segment_frames} frames each) "
        f"from {len(long_clips)} clips >= {args.min_seconds} s: "
        + ", ".join(f"{k} {v}" for k, v in per_clip.items())
    )
    print(
        f"(b) {n} clips in {len(sizes)} packages with >= {args.min_package} clips: "
        + ", ".join(f"{k} {v}" for k, v in Counter(group.tolist()).most_common())
        + f"; T={args.frames}"
    )
    keys = ["R@5", "R@5 macro", "R@5 no adj.", "R@5 no adj. macro"]
    print(f"\n{'representation':<18}" + "".join(f"{k:>19}" for k in keys) + f"{'pkg 1-NN':>10}")
    for name in [*names, "concat", "colour hist", "chance", "majority package"]:
        seg = seg_rows.get(name, {})
        cells = "".join(f"{seg[k]:>19.3f}" if k in seg else f"{'':>19}" for k in keys)
        print(f"{name:<18}{cells}{pkg_rows.get(name, float('nan')):>10.3f}")
    result = {
        "bench": "content_check",
        "provenance": made_by,
        "tier": args.tier,
        "segments": {
            "seconds": args.segment_seconds,
            "frames": args.segment_frames,
            "count": len(clip_of),
            "clips": dict(per_clip),
            "results": {k: {m: round(v, 4) for m, v in row.items()} for k, row in seg_rows.items()},
        },
        "packages": {
            "frames": args.frames,
            "clips": n,
            "sizes": dict(Counter(group.tolist())),
            "one_nn": {k: round(v, 4) for k, v in pkg_rows.items()},
        },
        "layers": names,
        "size": args.size,
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {
            "cores": os.cpu_count(),
            "gpu": torch.cuda.is_available(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
