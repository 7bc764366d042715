"""Frame sampling: T frames uniformly over a clip, or fixed-length segments of a long clip.

Design choices, and why:

* **Targets are segment centres**: frame i aims at ``(i + 0.5) * duration / T``, so T frames split
  the clip into T equal parts and no frame sits on the (often black, often missing) last instant.
* **The frame shown at a time**: a target gets the latest frame whose timestamp is at or before it
  (within half a frame interval, which makes constant-rate clips snap to the nearest frame). Screencasts
  hold one frame for seconds (zero-byte "repeat" packets); "first frame after t" would jump ahead to
  whatever changes next, while the viewer sees the held frame.
* **Seek or read through, by cost**: with a per-frame index (MP4, AVI) the keyframe positions are
  known, so the sampler counts the frames each plan must decode: seeking per target (from the
  keyframe before it, continuing without a seek when no keyframe lies in between) versus one
  sequential pass. Many phone/web MP4s have a single keyframe, where T seeks would each decode from
  the start. Without an index a 2 s GOP is assumed.
* **Fallbacks**: a seek that raises, lands after its target (retried from earlier, then given up),
  or finds no frame makes the clip fall back to one sequential pass. A file that ends long before its
  header says (truncated) is sampled over the part that exists, with a warning.
* Frames are converted to RGB (and resized) by FFmpeg's swscale, once per distinct frame.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
import av.error
import numpy as np

from linkedout.video.decode import (
    DecodeFailure,
    PathLike,
    VideoDecodeError,
    VideoReader,
    frame_to_rgb,
    output_size,
)

__all__ = [
    "SAMPLER_VERSION",
    "DecodedClip",
    "FrameSampler",
    "sample_frames",
    "sample_segments",
    "segment_windows",
    "try_sample_frames",
    "uniform_targets",
]

# Bump when the choice of frames for a given clip changes: it is part of the feature fingerprint.
SAMPLER_VERSION = 1

Mode = Literal["uniform", "keyframe"]
Strategy = Literal["auto", "seek", "sequential"]

_ASSUMED_GOP_SECONDS = 2.0  # keyframe spacing assumed when the container has no per-frame index
_SEEK_COST_FRAMES = 4.0  # a seek (I/O + decoder flush) costs about as much as decoding a few frames
_DEFAULT_FPS = 25.0


@dataclass
class DecodedClip:
    """Frames sampled from one clip (or one window of it) plus what a caller needs to trust them.

    ``timestamps`` are the times of the frames returned, ``target_timestamps`` where the sampler
    aimed; both in seconds from the start of the video stream. ``start``/``end`` bound the window
    (the whole clip for :func:`sample_frames`). ``repeated_frames`` is True when fewer distinct
    frames than T existed (short clip, held frame): some rows are copies. Packet counts are for the
    whole file. ``strategy`` says how the frames were found ("seek", "sequential", "keyframe").
    """

    path: str
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    timestamps: np.ndarray  # float64 [T]
    target_timestamps: np.ndarray  # float64 [T]
    duration: float
    fps: float | None
    codec: str
    start: float
    end: float
    num_distinct_frames: int
    repeated_frames: bool
    skipped_packets: int
    empty_packets: int
    strategy: str
    warnings: tuple[str, ...] = ()
    ok: bool = field(default=True, init=False)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# --------------------------------------------------------------------------------------------------
# targets and windows


def uniform_targets(start: float, end: float, num_frames: int) -> np.ndarray:
    """Centres of ``num_frames`` equal parts of ``[start, end]``."""
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    span = max(0.0, end - start)
    return start + (np.arange(num_frames, dtype=np.float64) + 0.5) * (span / num_frames)


def segment_windows(
    duration: float, segment_seconds: float, min_last_fraction: float = 0.5
) -> list[tuple[float, float]]:
    """Consecutive ``[start, end)`` windows of ``segment_seconds`` covering ``[0, duration]``.

    A last window shorter than ``min_last_fraction`` of a segment is merged into the previous one,
    so every second of the clip belongs to a window and no window is a sliver.
    """
    if segment_seconds <= 0:
        raise ValueError("segment_seconds must be > 0")
    n = max(1, math.ceil(duration / segment_seconds - 1e-9))
    wins = [(k * segment_seconds, min((k + 1) * segment_seconds, duration)) for k in range(n)]
    if len(wins) > 1 and (wins[-1][1] - wins[-1][0]) < min_last_fraction * segment_seconds:
        last = wins.pop()
        wins[-1] = (wins[-1][0], last[1])
    return wins


# --------------------------------------------------------------------------------------------------
# decoding core


class _SeekUnusable(Exception):
    """Seeking did not work for this file; the caller falls back to a sequential pass."""


_Chosen = list[tuple[float, np.ndarray] | None]


class _Converter:
    """Frame -> RGB array at one output size for the whole clip, converting each frame once.

    Converting at assignment time (rather than keeping decoded frames) bounds memory in segment mode
    to the output arrays. Targets sharing a frame are assigned one after another, so remembering the
    last frame is enough to convert it once.
    """

    def __init__(self, size: int | None, sar: Fraction | None) -> None:
        self.size = size
        self.sar = sar
        self.wh: tuple[int, int] | None = None
        self._last: tuple[av.VideoFrame, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._last is not None and self._last[0] is frame:
            return self._last[1]
        if self.wh is None:  # streams may change resolution midway: keep the first frame's size
            self.wh = output_size(frame.width, frame.height, self.size, self.sar)
        rgb = frame_to_rgb(frame, *self.wh)
        self._last = (frame, rgb)
        return rgb


def _timed(
    frames: Iterator[tuple[float | None, av.VideoFrame]], fps: float | None, *, after_seek: bool
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Fill missing timestamps (some AVI/raw streams) by counting frames at ``fps`` from the start.

    Counting only means something from the start of the file: after a seek a frame without a
    timestamp makes seeking unusable for this file.
    """
    step = 1.0 / (fps or _DEFAULT_FPS)
    prev: float | None = None
    for t, frame in frames:
        if t is None:
            if after_seek:
                raise _SeekUnusable("frames carry no timestamps")
            t = 0.0 if prev is None else prev + step
        prev = t
        yield t, frame


def _run(
    reader: VideoReader,
    targets: np.ndarray,
    lo: int,
    hi: int,
    tol: float,
    chosen: _Chosen,
    convert: _Converter,
    *,
    after_seek: bool,
    overshoot_check: bool,
) -> tuple[int, bool]:
    """Decode forward, giving each target in ``[lo, hi)`` the frame shown at its time.

    Returns ``(next unassigned target, overshoot)``; overshoot means the first frame decoded was
    already past ``targets[lo]`` (the seek landed too late).
    """
    cand: tuple[float, av.VideoFrame] | None = None
    j = lo
    frames = reader.frames(from_keyframe=after_seek)
    try:
        for t, frame in _timed(frames, reader.info.fps, after_seek=after_seek):
            if cand is None and overshoot_check and t > targets[lo] + tol:
                return j, True
            while j < hi and t > targets[j] + tol:
                t_use, f_use = cand if cand is not None else (t, frame)
                chosen[j] = (t_use, convert(f_use))
                j += 1
            if j >= hi:
                return j, False
            cand = (t, frame)
    finally:
        frames.close()
    while j < hi and cand is not None:  # EOF: the last frame stays on screen
        chosen[j] = (cand[0], convert(cand[1]))
        j += 1
    return j, False


def _key_before(keyframes: tuple[float, ...] | None, t: float) -> float:
    if keyframes is None:
        return max(0.0, t - _ASSUMED_GOP_SECONDS / 2)
    i = bisect.bisect_right(keyframes, t + 1e-9)
    return keyframes[i - 1] if i > 0 else 0.0


def _plan_runs(
    targets: np.ndarray, keyframes: tuple[float, ...] | None, fps: float, tol: float
) -> tuple[list[tuple[int, int]], float]:
    """Group sorted targets into seek runs; return the runs and the frames the plan decodes.

    A target joins the current run when no keyframe lies between the previous target and it (a seek
    would restart from a keyframe we already passed), or, without an index, when it is within half
    the assumed GOP.
    """
    runs: list[tuple[int, int]] = []
    cost = 0.0
    pos = -math.inf
    for j, t in enumerate(targets):
        k = _key_before(keyframes, float(t))
        if runs and (k <= pos + tol or (keyframes is None and t - pos <= _ASSUMED_GOP_SECONDS / 2)):
            cost += (t - pos) * fps
            runs[-1] = (runs[-1][0], j + 1)
        else:
            cost += (t - k) * fps + _SEEK_COST_FRAMES
            runs.append((j, j + 1))
        pos = float(t)
    return runs, cost


def _seek_pass(
    reader: VideoReader, targets: np.ndarray, tol: float, runs: list[tuple[int, int]], convert: _Converter
) -> _Chosen:
    chosen: _Chosen = [None] * len(targets)
    for lo, hi in runs:
        back = 0.0
        for _attempt in range(4):
            seek_to = max(0.0, float(targets[lo]) - back)
            try:
                reader.seek(seek_to)
            except (av.error.FFmpegError, OverflowError, ValueError) as exc:
                raise _SeekUnusable(f"seek failed ({type(exc).__name__})") from exc
            j, overshoot = _run(
                reader, targets, lo, hi, tol, chosen, convert, after_seek=True, overshoot_check=seek_to > 0
            )
            if not overshoot:  # (never an overshoot from 0: nothing earlier to try)
                break
            back = 4 * back if back else 1.0
        else:
            raise _SeekUnusable("seeks land after their target")
        if j < hi:
            raise _SeekUnusable("no frame found after a seek")
    return chosen


def _keyframe_pass(reader: VideoReader, targets: np.ndarray, tol: float, convert: _Converter) -> _Chosen:
    """One seek per target, keeping the first decoded frame: fast and approximate.

    MP4 indexes are in decode order, so with B-frames a seek can land on a keyframe shown just after
    the target; such a seek is retried from further back, so a frame never comes from the future.
    """
    chosen: _Chosen = [None] * len(targets)
    for j, t in enumerate(targets):
        back = 0.0
        first = None
        for _attempt in range(4):
            seek_to = max(0.0, float(t) - back)
            try:
                reader.seek(seek_to)
            except (av.error.FFmpegError, OverflowError, ValueError) as exc:
                raise _SeekUnusable(f"seek failed ({type(exc).__name__})") from exc
            frames = reader.frames(from_keyframe=True)
            try:
                first = next(_timed(frames, reader.info.fps, after_seek=True), None)
            finally:
                frames.close()
            if first is None or first[0] <= t + tol or seek_to == 0.0:
                break
            back = 4 * back if back else 1.0
        if first is None:
            raise _SeekUnusable("no frame found after a seek")
        chosen[j] = (first[0], convert(first[1]))
    return chosen


def _sequential_pass(
    reader: VideoReader, targets: np.ndarray, tol: float, fresh: bool, convert: _Converter
) -> _Chosen:
    if not fresh:
        reader.reopen()
    chosen: _Chosen = [None] * len(targets)
    _run(reader, targets, 0, len(targets), tol, chosen, convert, after_seek=False, overshoot_check=False)
    return chosen


@dataclass
class _Sampled:
    chosen: list[tuple[float, np.ndarray]]
    targets: np.ndarray
    duration: float
    strategy: str
    warnings: list[str]


def _sample_targets(
    reader: VideoReader,
    make_targets: Callable[[float], np.ndarray],
    size: int | None,
    *,
    mode: Mode = "uniform",
    strategy: Strategy = "auto",
) -> _Sampled:
    """Find the frames for the targets ``make_targets(duration)`` gives; all policy lives here."""
    info = reader.info
    convert = _Converter(size, info.sample_aspect_ratio)
    warnings: list[str] = []
    fresh = True  # reader positioned at the start, nothing decoded yet
    duration = info.duration
    if duration is None:
        end, packets = reader.scan_extent()
        if packets == 0:
            raise VideoDecodeError(reader.path, "no decodable frames (no video packets)")
        duration = end if end else packets / (info.fps or _DEFAULT_FPS)
        warnings.append("container states no duration; measured it by demuxing")
    targets = make_targets(duration)
    fps = info.fps or _DEFAULT_FPS
    tol = 0.5 / fps

    chosen: _Chosen | None = None
    used = "sequential"
    if mode == "keyframe":
        try:
            chosen, used = _keyframe_pass(reader, targets, tol, convert), "keyframe"
        except _SeekUnusable as why:
            warnings.append(f"keyframe seeking unusable ({why}); decoded sequentially")
        fresh = False
    elif mode != "uniform":
        raise ValueError(f"unknown sampling mode {mode!r}")
    elif strategy != "sequential":
        runs, seek_cost = _plan_runs(targets, info.keyframes, fps, tol)
        seq_cost = (float(targets[-1]) + tol) * fps
        if strategy == "seek" or seek_cost < 0.8 * seq_cost:
            try:
                chosen, used = _seek_pass(reader, targets, tol, runs, convert), "seek"
            except _SeekUnusable as why:
                warnings.append(f"{why}; decoded sequentially")
            fresh = False

    if chosen is None:
        chosen = _sequential_pass(reader, targets, tol, fresh, convert)
        used = "sequential"
        # Truncation: the demuxer ran out of packets well before the stated duration.
        got = reader.last_packet_end
        if reader.hit_eof and got is not None and got < 0.9 * duration - 0.5 and targets[-1] > got:
            warnings.append(
                f"file holds {got:.2f} s of the {duration:.2f} s its header states "
                "(truncated?); sampled the part that is there"
            )
            duration = got
            targets = make_targets(duration)
            chosen = _sequential_pass(reader, targets, tol, False, convert)

    if any(c is None for c in chosen):
        if all(c is None for c in chosen):
            bad = reader.stats.skipped_packets
            detail = f" ({bad} packets failed to decode)" if bad else ""
            raise VideoDecodeError(reader.path, f"no decodable frames{detail}")
        # Cannot happen with the passes above (EOF assigns the last frame); keep arrays full anyway.
        first = next(c for c in chosen if c is not None)
        chosen = [c if c is not None else first for c in chosen]
    return _Sampled(
        chosen=[c for c in chosen if c is not None],
        targets=targets,
        duration=duration,
        strategy=used,
        warnings=warnings,
    )


def _to_clip(
    reader: VideoReader, sampled: _Sampled, lo: int, hi: int, window: tuple[float, float]
) -> DecodedClip:
    part = sampled.chosen[lo:hi]
    times = np.array([c[0] for c in part], dtype=np.float64)
    distinct = len(set(times.tolist()))
    info = reader.info
    return DecodedClip(
        path=reader.path,
        frames=np.stack([c[1] for c in part]),
        timestamps=times,
        target_timestamps=np.asarray(sampled.targets[lo:hi], dtype=np.float64),
        duration=float(sampled.duration),
        fps=info.fps,
        codec=info.codec,
        start=float(window[0]),
        end=float(window[1]),
        num_distinct_frames=distinct,
        repeated_frames=distinct < hi - lo,
        skipped_packets=reader.stats.skipped_packets,
        empty_packets=reader.stats.empty_packets,
        strategy=sampled.strategy,
        warnings=tuple(sampled.warnings),
    )


def _guard(path: PathLike, fn: Callable[[], DecodedClip | list[DecodedClip]]) -> object:
    """Run ``fn``; turn any PyAV/OS error that escaped the specific handlers into VideoDecodeError."""
    try:
        return fn()
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, EOFError) as exc:
        raise VideoDecodeError(path, f"decode error: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# public API


def sample_frames(
    path: PathLike,
    num_frames: int = 8,
    *,
    size: int | None = None,
    mode: Mode = "uniform",
    strategy: Strategy = "auto",
    threads: int = 1,
) -> DecodedClip:
    """Sample ``num_frames`` RGB frames spread uniformly over a whole clip.

    ``size`` resizes so the short side is ``size`` pixels (aspect kept); ``None`` keeps the stored
    size (with anamorphic pixels made square). ``mode="keyframe"`` takes the keyframe at or before
    each target instead of the exact frame: about one decoded frame per target, for previews or
    very long files. ``strategy`` forces seeking or a sequential pass (default: cheapest, by the
    keyframe index). Raises :class:`VideoDecodeError` with a short reason on any failure.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")

    def work() -> DecodedClip:
        with VideoReader(path, threads=threads) as reader:
            sampled = _sample_targets(
                reader, lambda d: uniform_targets(0.0, d, num_frames), size, mode=mode, strategy=strategy
            )
            return _to_clip(reader, sampled, 0, num_frames, (0.0, sampled.duration))

    return _guard(path, work)  # type: ignore[return-value]


def sample_segments(
    path: PathLike,
    segment_seconds: float,
    frames_per_segment: int,
    *,
    size: int | None = None,
    min_last_fraction: float = 0.5,
    strategy: Strategy = "auto",
    threads: int = 1,
) -> list[DecodedClip]:
    """Cut a clip into fixed-length windows and sample ``frames_per_segment`` uniformly in each.

    Windows come from :func:`segment_windows` (a short tail merges into the last window), so the
    segments cover the clip. All targets are decoded in one go: with many targets the cost model
    picks a single sequential pass, with few (long segments, sparse keyframes) it seeks.
    """
    if frames_per_segment < 1:
        raise ValueError("frames_per_segment must be >= 1")

    def make_targets(duration: float) -> np.ndarray:
        wins = segment_windows(duration, segment_seconds, min_last_fraction)
        return np.concatenate([uniform_targets(a, b, frames_per_segment) for a, b in wins])

    def work() -> list[DecodedClip]:
        with VideoReader(path, threads=threads) as reader:
            sampled = _sample_targets(reader, make_targets, size, strategy=strategy)
            wins = segment_windows(sampled.duration, segment_seconds, min_last_fraction)
            n = frames_per_segment
            return [_to_clip(reader, sampled, k * n, (k + 1) * n, w) for k, w in enumerate(wins)]

    return _guard(path, work)  # type: ignore[return-value]


def try_sample_frames(path: PathLike, num_frames: int = 8, **kwargs: object) -> DecodedClip | DecodeFailure:
    """:func:`sample_frames` for batch callers: failures come back as :class:`DecodeFailure`.

    Catches every ``Exception`` (not just :class:`VideoDecodeError`) on purpose: one pathological
    file must never stop a multi-hour extraction; unexpected ones are labelled "unexpected error".
    """
    try:
        return sample_frames(path, num_frames, **kwargs)  # type: ignore[arg-type]
    except VideoDecodeError as exc:
        return DecodeFailure(path=str(path), reason=exc.reason)
    except Exception as exc:
        return DecodeFailure(path=str(path), reason=f"unexpected error: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class FrameSampler:
    """A frame-sampling configuration as a value: callable on a path, and fingerprintable.

    The extraction pipeline stores ``fingerprint()`` with the features, so changing T, the size, the
    mode or the sampler's semantics (``SAMPLER_VERSION``) never mixes features of different frames.
    """

    num_frames: int = 8
    size: int | None = None
    mode: Mode = "uniform"

    def __call__(self, path: PathLike) -> DecodedClip:
        return sample_frames(path, self.num_frames, size=self.size, mode=self.mode)

    def try_sample(self, path: PathLike) -> DecodedClip | DecodeFailure:
        return try_sample_frames(path, self.num_frames, size=self.size, mode=self.mode)

    def fingerprint(self) -> dict[str, object]:
        return {
            "sampler": "linkedout.video.sample_frames",
            "version": SAMPLER_VERSION,
            "num_frames": self.num_frames,
            "size": self.size,
            "mode": self.mode,
        }
