"""Audio decoding beside frame decoding: a clip's audio track as mono float32 at a model's rate.

Same habits as the frame decoder (:mod:`linkedout.video.decode`), for the same reasons: FFmpeg via
PyAV, packet by packet, zero-byte packets never sent to the decoder, packets the decoder rejects
counted and skipped, a demuxer error ending the stream with what decoded so far, and every way a
file can fail turned into a short reason (a :class:`~linkedout.video.decode.VideoDecodeError`, or a
:class:`~linkedout.video.decode.DecodeFailure` from ``try_sample``).

* **Mono, one rate.** ``av.AudioResampler`` (FFmpeg's swresample) downmixes any layout (stereo,
  5.1) and resamples to the rate the model was trained at, in one pass; its filter state is flushed
  at the end so the last few milliseconds are not lost.
* **No audio track** is a failure with reason ``"no audio track"`` (many clips are silent films or
  screencasts): the pipeline records it like any decode failure and a resumed run skips it.
* **Silence is data.** A track of zeros decodes to zeros; the backbone turns it into tokens.
* **Time.** Samples are concatenated in decode order from the track's first packet; gaps in the
  timestamps are not filled (rare in practice, and a recommender does not need sample-exact sync).
* ``max_seconds`` bounds memory and encode time for very long files (a 2-hour film at 44.1 kHz
  would be 1.3 GB of float32): the first ``max_seconds`` are kept and the clip says it was cut.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error
import numpy as np

from linkedout.video.decode import DecodeFailure, PathLike, VideoDecodeError, _short, _sniff

__all__ = [
    "AUDIO_SAMPLER_VERSION",
    "NO_AUDIO_TRACK",
    "AudioSampler",
    "DecodedAudio",
    "decode_audio",
    "try_decode_audio",
]

# Bump when the samples produced for a given file change: part of the feature fingerprint.
AUDIO_SAMPLER_VERSION = 1
NO_AUDIO_TRACK = "no audio track"


@dataclass
class DecodedAudio:
    """A clip's audio track as mono float32 samples at ``rate`` Hz.

    ``duration`` is the length of ``samples`` in seconds (after a ``max_seconds`` cut);
    ``source_rate``/``source_channels``/``codec`` describe the track as stored.
    """

    path: str
    samples: np.ndarray  # float32 [N], mono; about [-1, 1] (float codecs may overshoot a little)
    rate: int
    duration: float
    source_rate: int
    source_channels: int
    codec: str
    skipped_packets: int
    empty_packets: int
    cut: bool  # True when the track was longer than max_seconds and only its start was kept
    warnings: tuple[str, ...] = ()
    ok: bool = field(default=True, init=False)

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])


def _check_file(path: str) -> None:
    if "://" in path:
        return
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(path, "file not found")
    if not p.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty")
    if not os.access(p, os.R_OK):
        raise VideoDecodeError(path, "permission denied")


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        kind, is_media = _sniff(path)
        if is_media:
            raise VideoDecodeError(
                path, f"corrupt or truncated file: {kind} container unreadable ({_short(exc)})"
            ) from exc
        what = f"looks like {kind}" if kind != "unrecognised data" else kind
        raise VideoDecodeError(path, f"not a media file: {what}") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoDecodeError(path, f"cannot open: {_short(exc)}") from exc


def decode_audio(
    path: PathLike, rate: int, *, max_seconds: float | None = None, threads: int = 1
) -> DecodedAudio:
    """Decode the first audio track of ``path`` to mono float32 at ``rate`` Hz.

    Raises :class:`VideoDecodeError` with a short reason: ``"no audio track"``, ``"no decodable
    audio (N packets failed to decode)"``, or the open errors the frame decoder also reports.
    """
    if rate < 1:
        raise ValueError(f"rate must be a positive sample rate in Hz, got {rate}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0 (or None for no limit), got {max_seconds}")
    path = str(path)
    _check_file(path)
    limit = None if max_seconds is None else round(max_seconds * rate)
    try:
        container = _open(path)
        with container:
            streams = [s for s in container.streams.audio if s.codec_context is not None]
            if not streams:
                raise VideoDecodeError(path, NO_AUDIO_TRACK)
            stream = streams[0]  # the default track: FFmpeg lists it first
            ctx = stream.codec_context
            ctx.thread_count = max(1, threads)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks: list[np.ndarray] = []
            kept = 0
            skipped = empty = 0
            cut = False

            def take(frames: list[av.AudioFrame]) -> bool:
                """Append resampled samples; False once ``limit`` is reached."""
                nonlocal kept, cut
                for out in frames:
                    data = out.to_ndarray().reshape(-1)  # packed "flt" mono: [1, n]
                    if limit is not None and kept + data.shape[0] >= limit:
                        chunks.append(data[: limit - kept])
                        kept = limit
                        cut = True
                        return False
                    chunks.append(data)
                    kept += data.shape[0]
                return True

            going = True
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        if packet.pts is not None or packet.dts is not None:
                            empty += 1
                        continue
                    try:
                        decoded = ctx.decode(packet)
                    except (av.error.InvalidDataError, av.error.FFmpegError):
                        skipped += 1
                        continue
                    for frame in decoded:
                        frame.pts = None  # resample by sample count: broken timestamps must not stall it
                        if not take(resampler.resample(frame)):
                            going = False
                            break
                    if not going:
                        break
            except av.error.FFmpegError:
                skipped += 1  # a demuxer error (truncated file) ends the stream: keep what decoded
            if going:
                try:
                    tail = ctx.decode(None)
                except av.error.FFmpegError:
                    tail = []
                for frame in tail:
                    frame.pts = None
                    if not take(resampler.resample(frame)):
                        going = False
                        break
                if going:
                    take(resampler.resample(None))  # flush swresample's filter delay
            codec = ctx.name or "unknown"
            source_rate = int(ctx.sample_rate or stream.rate or 0)
            channels = int(getattr(ctx.layout, "nb_channels", 0) or getattr(ctx, "channels", 0) or 0)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, EOFError, ValueError) as exc:
        raise VideoDecodeError(path, f"audio decode error: {type(exc).__name__}: {exc}") from exc
    if kept == 0:
        detail = f" ({skipped} packets failed to decode)" if skipped else ""
        raise VideoDecodeError(path, f"no decodable audio{detail}")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    warnings: list[str] = []
    if cut:
        warnings.append(f"audio longer than {max_seconds:g} s: kept the first {max_seconds:g} s")
    if skipped:
        warnings.append(f"{skipped} audio packets failed to decode and were skipped")
    return DecodedAudio(
        path=path,
        samples=samples,
        rate=rate,
        duration=samples.shape[0] / rate,
        source_rate=source_rate,
        source_channels=channels,
        codec=codec,
        skipped_packets=skipped,
        empty_packets=empty,
        cut=cut,
        warnings=tuple(warnings),
    )


def try_decode_audio(
    path: PathLike, rate: int, *, max_seconds: float | None = None
) -> DecodedAudio | DecodeFailure:
    """:func:`decode_audio` for batch callers: failures come back as :class:`DecodeFailure`.

    Catches every ``Exception`` on purpose, like ``try_sample_frames``: one pathological file must
    never stop a long extraction.
    """
    try:
        return decode_audio(path, rate, max_seconds=max_seconds)
    except VideoDecodeError as exc:
        return DecodeFailure(path=str(path), reason=exc.reason)
    except Exception as exc:
        return DecodeFailure(path=str(path), reason=f"unexpected error: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class AudioSampler:
    """An audio decoding configuration as a value: callable on a path, and fingerprintable, with the
    same ``try_sample`` shape as `~linkedout.video.FrameSampler` so the extraction pipeline's decode
    workers run either one. ``rate`` is the model's sample rate; ``max_seconds`` keeps the start of
    longer tracks (None: the whole track)."""

    rate: int = 16000
    max_seconds: float | None = 600.0

    def __post_init__(self) -> None:
        if int(self.rate) != self.rate or self.rate < 1:
            raise ValueError(f"AudioSampler rate must be a positive integer (Hz), got {self.rate!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"AudioSampler max_seconds must be > 0 or None, got {self.max_seconds!r}")

    def __call__(self, path: PathLike) -> DecodedAudio:
        return decode_audio(path, self.rate, max_seconds=self.max_seconds)

    def try_sample(self, path: PathLike) -> DecodedAudio | DecodeFailure:
        return try_decode_audio(path, self.rate, max_seconds=self.max_seconds)

    def to_json(self) -> dict[str, object]:
        """Settings to rebuild it (`linkedout.backbones.extractor.ExtractorSpec`)."""
        return {"kind": "audio", "rate": self.rate, "max_seconds": self.max_seconds}

    def fingerprint(self) -> dict[str, object]:
        return {
            "sampler": "linkedout.video.decode_audio",
            "version": AUDIO_SAMPLER_VERSION,
            "rate": self.rate,
            "channels": "mono (swresample downmix)",
            "max_seconds": self.max_seconds,
        }
