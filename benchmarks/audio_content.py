"""Which audio model should be the `audio` backbone's default? Speed and a content check, on real clips.

Usage:
    python benchmarks/audio_content.py                    # every bench-tier clip with sound >= 5 s
    python benchmarks/audio_content.py --clips 6          # a small run (one clip per source first)

Per model (YAMNet 8-bit ONNX, aisfx CNN), on the bench-tier clips that have a non-silent audio track
of at least ``--min-seconds``:

* **load** seconds (weights fetched beforehand), **decode** seconds per clip (PyAV, mono, the model's
  rate), **encode** seconds per clip (the whole track -> `LayerTokens`, what `linkedout extract` does);
* **segment retrieval** (no invented labels, see /work/shared/data-sources.md "Content structure
  check"): each clip's track is cut into ``--segment-seconds`` windows, each window is encoded alone
  (its S tokens averaged per layer, cosine), and R@1 asks whether a window's nearest other window comes
  from the same clip (windows from each clip's first ``--segment-span`` s, 30 by default, so one
  long clip does not dominate). Adjacent windows share a scene, which makes that easy: "R@1 no adj." drops the
  query's two neighbours from the candidates. Per layer and for the layers concatenated (each
  L2-normalised), with the chance level (a random other window).

Clips whose track is digital silence (peak below 1e-4: imageio/cockatoo, mecavideo/balle-jbart, ...)
are left out of the retrieval check: all their windows are identical, which any model "retrieves".
Writes ``benchmarks/results/audio_content.json`` (with provenance) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from linkedout.backbones import get_backbone
from linkedout.backbones.base import ItemInput
from linkedout.samples import fetch_samples
from linkedout.samples.weights import fetch_weights
from linkedout.video import AudioSampler, segment_windows
from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "audio_content.json"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def recall_at_1(x: np.ndarray, clip_of: np.ndarray, pos: np.ndarray, no_adjacent: bool) -> float:
    """Share of windows whose nearest other window (cosine) comes from the same clip."""
    sim = _unit(x) @ _unit(x).T
    np.fill_diagonal(sim, -np.inf)
    if no_adjacent:
        same = clip_of[:, None] == clip_of[None, :]
        sim[same & (np.abs(pos[:, None] - pos[None, :]) == 1)] = -np.inf
    return float(np.mean(clip_of[sim.argmax(1)] == clip_of))


def chance(clip_of: np.ndarray, pos: np.ndarray, no_adjacent: bool) -> float:
    out = []
    for i in range(len(clip_of)):
        cand = np.ones(len(clip_of), bool)
        cand[i] = False
        if no_adjacent:
            cand &= ~((clip_of == clip_of[i]) & (np.abs(pos - pos[i]) == 1))
        out.append(np.mean(clip_of[cand] == clip_of[i]))
    return float(np.mean(out))


def pick_clips(samples: object, min_seconds: float, limit: int | None) -> list[tuple[str, Path]]:
    """Clips with a non-silent track of >= min_seconds; with a limit, one per source package in turn
    (so a small run is not six planetblupi cutscenes)."""
    probe = AudioSampler(16000, max_seconds=None)
    by_source: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for c in samples.valid_clips():  # type: ignore[attr-defined]
        got = probe.try_sample(c.path)
        if not got.ok or got.duration < min_seconds or float(np.abs(got.samples).max()) < 1e-4:
            continue
        by_source[c.source].append((c.name, c.path))
    order: list[tuple[str, Path]] = []
    lists = [sorted(v) for _, v in sorted(by_source.items())]
    while any(lists):
        for lst in lists:
            if lst:
                order.append(lst.pop(0))
    return order[:limit] if limit else order


def run_model(
    model: str, clips: list[tuple[str, Path]], seg_seconds: float, seg_span: float
) -> dict[str, object]:
    fetch_weights(model)
    t0 = time.perf_counter()
    backbone = get_backbone("audio", model=model)
    load = time.perf_counter() - t0
    sampler = backbone.audio_sampler()  # type: ignore[attr-defined]
    decode_s, encode_s, durations = [], [], []
    vecs: list[np.ndarray] = []
    clip_of, pos = [], []
    for k, (name, path) in enumerate(clips):
        t0 = time.perf_counter()
        audio = sampler(path)
        decode_s.append(time.perf_counter() - t0)
        durations.append(audio.duration)
        meta = {"sample_rate": audio.rate}
        t0 = time.perf_counter()
        backbone.encode([ItemInput(name, audio=audio.samples, meta=meta)])
        encode_s.append(time.perf_counter() - t0)
        # windows from the first seg_span seconds only: one 180 s clip would otherwise hold most
        # windows and push the chance level towards 1
        for j, (a, b) in enumerate(segment_windows(min(audio.duration, seg_span), seg_seconds)):
            seg = audio.samples[round(a * audio.rate) : round(b * audio.rate)]
            tok = backbone.encode([ItemInput(f"{name}#{j}", audio=seg, meta=meta)])[0].tokens
            vecs.append(tok.astype(np.float32).mean(axis=1))  # [L, D]
            clip_of.append(k)
            pos.append(j)
    x = np.stack(vecs)
    c, p = np.asarray(clip_of), np.asarray(pos)
    reps = {name: x[:, i, : backbone.widths[i]] for i, name in enumerate(backbone.layer_names)}  # type: ignore[attr-defined]
    reps["concat"] = np.concatenate([_unit(v) for v in reps.values()], axis=1)
    retrieval = {
        name: {"r1": recall_at_1(v, c, p, False), "r1_no_adj": recall_at_1(v, c, p, True)}
        for name, v in reps.items()
    }
    audio_seconds = float(sum(durations))
    return {
        "model": model,
        "load_seconds": round(load, 3),
        "decode_seconds_per_clip": round(float(np.mean(decode_s)), 4),
        "encode_seconds_per_clip": round(float(np.mean(encode_s)), 4),
        "encode_seconds_per_audio_minute": round(60 * float(sum(encode_s)) / audio_seconds, 3),
        "audio_seconds": round(audio_seconds, 2),
        "segments": len(c),
        "retrieval": {k: {m: round(v, 4) for m, v in r.items()} for k, r in retrieval.items()},
        "chance": {"r1": round(chance(c, p, False), 4), "r1_no_adj": round(chance(c, p, True), 4)},
        "fingerprint": backbone.fingerprint(),  # type: ignore[attr-defined]
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=None, help="at most N clips (default: all that qualify)")
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--segment-seconds", type=float, default=2.5)
    ap.add_argument("--segment-span", type=float, default=30.0, help="windows from the first N s of a clip")
    ap.add_argument("--models", default="yamnet,aisfx")
    ap.add_argument("--tier", default="bench", choices=("small", "bench"))
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    made_by = provenance(None if argv is None else [sys.argv[0], *argv])
    samples = fetch_samples(args.tier, quiet=True)
    clips = pick_clips(samples, args.min_seconds, args.clips)
    if len(clips) < 2:
        print("need at least two clips with sound for the retrieval check", file=sys.stderr)
        return 2
    rows = [run_model(m, clips, args.segment_seconds, args.segment_span) for m in args.models.split(",")]
    print(f"{len(clips)} clips ({', '.join(n for n, _ in clips)}), windows of {args.segment_seconds} s")
    print(
        f"{'model':8} {'layer':10} {'R@1':>6} {'R@1 no adj':>10} {'decode/clip':>11} {'encode/clip':>11} load"
    )
    for r in rows:
        for layer, m in r["retrieval"].items():  # type: ignore[union-attr]
            print(
                f"{r['model']:8} {layer:10} {m['r1']:6.3f} {m['r1_no_adj']:10.3f} "
                f"{r['decode_seconds_per_clip']:10.3f}s {r['encode_seconds_per_clip']:10.3f}s "
                f"{r['load_seconds']:.1f}s"
            )
        ch = r["chance"]
        print(f"{r['model']:8} {'chance':10} {ch['r1']:6.3f} {ch['r1_no_adj']:10.3f}")  # type: ignore[index]
    out = {
        "about": "audio backbone models on bench-tier clips: speed and segment retrieval (no labels)",
        "clips": [n for n, _ in clips],
        "segment_seconds": args.segment_seconds,
        "segment_span_seconds": args.segment_span,
        "min_seconds": args.min_seconds,
        "models": rows,
        "licences": "clips: see `linkedout fetch-samples`; weights: docs/extraction.md (Audio)",
        "provenance": made_by,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
