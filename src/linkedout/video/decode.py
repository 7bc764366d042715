"""Low-level, failure-tolerant video reading on top of PyAV.

Why this layer exists: real clips are messy. GNOME's theora screencasts store "repeat the previous
frame" as zero-byte packets, and feeding one to the decoder (as a plain ``container.decode()`` loop
does) puts it in drain mode so the next packet fails with ``avcodec_send_packet() Invalid argument``;
deliberately corrupted AVIs carry packets that fail to decode; truncated MP4s lose their index; a PNG
or a text file renamed ``.mp4`` opens as a one-frame "video". This module therefore

* opens a file and turns every way that can fail into a :class:`VideoDecodeError` with a short,
  human reason (never a raw PyAV traceback), sniffing the first bytes to tell "corrupt or truncated
  media" from "not a media file at all";
* decodes packet by packet, skipping zero-byte packets (held frames, counted as ``empty_packets``)
  and packets the decoder rejects (counted as ``skipped_packets``), then drains the decoder at EOF;
* exposes the container's keyframe index when it is a full per-frame index (MP4, AVI), which lets the
  sampler plan seeks instead of guessing.

Frame selection policies live in :mod:`linkedout.video.sampling`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

__all__ = [
    "DecodeFailure",
    "DecodeStats",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "frame_to_rgb",
    "output_size",
]

PathLike = str | os.PathLike[str]

# Container formats FFmpeg opens as a "video" that are not videos: still-image pipes and the
# text-art demuxers (``tty`` picks up any ``.txt`` file).
_NOT_VIDEO_FORMATS = {"image2", "image2pipe", "tty", "bin", "idf", "adf", "xbin"}


class VideoDecodeError(Exception):
    """A clip could not be decoded; ``reason`` is short and meant for logs and failure tables.

    Picklable (``__reduce__``) so it survives DataLoader worker and Ray task boundaries.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[VideoDecodeError], tuple[str, str]]:
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class DecodeFailure:
    """A failed clip in a batch: returned instead of raised so one bad file never stops a batch."""

    path: str
    reason: str
    ok: bool = field(default=False, init=False)


@dataclass
class DecodeStats:
    """Counts gathered while decoding one file (all passes, all seeks)."""

    skipped_packets: int = 0  # packets the decoder rejected (corrupt data)
    empty_packets: int = 0  # zero-byte packets: the codec's "repeat previous frame"
    decoded_frames: int = 0
    seeks: int = 0


@dataclass(frozen=True)
class VideoInfo:
    """What the container claims about the video stream (before decoding anything).

    Times are seconds from the video stream's start. ``keyframes`` is ``None`` unless the container
    carries a per-frame index (MP4, AVI); sparse indexes such as Matroska cues are not trusted,
    because "no keyframe listed" there does not mean "no keyframe".
    """

    path: str
    format_name: str
    codec: str
    width: int
    height: int
    fps: float | None
    duration: float | None
    num_frames: int | None
    start_pts: int
    time_base: Fraction
    sample_aspect_ratio: Fraction | None
    keyframes: tuple[float, ...] | None


def _sniff(path: str) -> tuple[str, bool]:
    """Guess what a file is from its first bytes: ``(kind, is_media)``.

    Only used to word an error when FFmpeg refuses a file, so a wrong guess costs a less precise
    message, never a wrong decode.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return "unreadable", False
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "MP4/MOV", True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI", True
    if head[:4] == b"OggS":
        return "Ogg", True
    if head[:4] == b"\x1aE\xdf\xa3":
        return "Matroska/WebM", True
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "MPEG program stream", True
    if head[:3] == b"FLV":
        return "FLV", True
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "MPEG transport stream", True
    for magic, kind in (
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a zip archive"),
        (b"BM", "a BMP image"),
    ):
        if head.startswith(magic):
            return kind, False
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text", False
        except UnicodeDecodeError:
            pass
    return "unrecognised data", False


def _short(exc: BaseException) -> str:
    """One-line FFmpeg error text without the errno and file name PyAV adds."""
    msg = getattr(exc, "strerror", None) or str(exc)
    return str(msg).split(":")[0].strip() or type(exc).__name__


def _is_cover_art(stream: av.video.stream.VideoStream) -> bool:
    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    return flag is not None and bool(stream.disposition & flag)


def _positive(x: object) -> bool:
    return x is not None and x > 0  # type: ignore[operator]


class VideoReader:
    """An open video stream that decodes packet by packet and counts what it had to skip.

    Use as a context manager. ``frames()`` yields ``(seconds, frame)`` from the current position;
    ``seek(seconds)`` moves to the keyframe at or before a time. Codec threads default to 1 because
    extraction parallelises over clips (DataLoader workers / Ray tasks), and frame threading adds
    latency to every seek.
    """

    def __init__(self, path: PathLike, *, threads: int = 1) -> None:
        self.path = str(path)
        self.threads = threads
        self.stats = DecodeStats()
        # End time (s) of the last packet demuxed, empty ones included, and whether the demuxer hit
        # the end of the file: together they tell "held last frame" from "file cut short".
        self.last_packet_end: float | None = None
        self.hit_eof = False
        self._check_file()
        self._container: av.container.InputContainer | None = None
        self._open()
        self.info = self._read_info()

    # -- opening ---------------------------------------------------------------------------------

    def _check_file(self) -> None:
        if "://" in self.path:  # URL: let FFmpeg handle it
            return
        p = Path(self.path)
        if not p.exists():
            raise VideoDecodeError(self.path, "file not found")
        if not p.is_file():
            raise VideoDecodeError(self.path, "not a regular file")
        if p.stat().st_size == 0:
            raise VideoDecodeError(self.path, "file is empty")
        if not os.access(p, os.R_OK):
            raise VideoDecodeError(self.path, "permission denied")

    def _open(self) -> None:
        """(Re)open the container; reopening is the reliable reset after a failed seek."""
        self.close()
        try:
            container = av.open(self.path, metadata_errors="replace")
        except av.error.FFmpegError as exc:
            kind, is_media = _sniff(self.path)
            if is_media:
                raise VideoDecodeError(
                    self.path, f"corrupt or truncated file: {kind} container unreadable ({_short(exc)})"
                ) from exc
            what = f"looks like {kind}" if kind != "unrecognised data" else kind
            raise VideoDecodeError(self.path, f"not a media file: {what}") from exc
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise VideoDecodeError(self.path, f"cannot open: {_short(exc)}") from exc
        fmt = container.format.name
        if fmt in _NOT_VIDEO_FORMATS or fmt.endswith("_pipe"):
            container.close()
            kind, _ = _sniff(self.path)
            what = f"looks like {kind}" if kind != "unrecognised data" else f"{fmt} data"
            raise VideoDecodeError(self.path, f"not a media file: {what}")
        # Cover art in audio files is a one-picture "video" stream flagged attached_pic.
        streams = [s for s in container.streams.video if not _is_cover_art(s) and s.codec_context is not None]
        if not streams:
            container.close()
            raise VideoDecodeError(self.path, "no video stream")
        stream = max(streams, key=lambda s: (s.codec_context.width or 0) * (s.codec_context.height or 0))
        ctx = stream.codec_context
        ctx.thread_count = max(1, self.threads)
        ctx.thread_type = "AUTO" if self.threads > 1 else "SLICE"
        self._container = container
        self.stream = stream

    def _read_info(self) -> VideoInfo:
        s = self.stream
        ctx = s.codec_context
        tb = s.time_base or Fraction(1, 1_000_000)
        start_pts = s.start_time if s.start_time is not None else 0
        fps = None
        for rate in (s.average_rate, s.guessed_rate, s.base_rate):
            if _positive(rate) and float(rate) < 1000:
                fps = float(rate)
                break
        duration = None
        if _positive(s.duration):
            duration = float(s.duration * tb)
        elif self._container is not None and _positive(self._container.duration):
            duration = self._container.duration / av.time_base
        num_frames = s.frames if _positive(s.frames) else None
        if duration is None and num_frames and fps:
            duration = num_frames / fps
        if num_frames is None and duration and fps:
            num_frames = max(1, round(duration * fps))
        sar = s.sample_aspect_ratio or ctx.sample_aspect_ratio
        if sar is not None and sar <= 0:
            sar = None
        return VideoInfo(
            path=self.path,
            format_name=self._container.format.name if self._container else "",
            codec=ctx.name or "unknown",
            width=ctx.width or 0,
            height=ctx.height or 0,
            fps=fps,
            duration=duration if duration and duration > 0 else None,
            num_frames=num_frames,
            start_pts=start_pts,
            time_base=tb,
            sample_aspect_ratio=Fraction(sar) if sar is not None else None,
            keyframes=self._keyframe_index(num_frames, tb, start_pts),
        )

    def _keyframe_index(
        self, num_frames: int | None, tb: Fraction, start_pts: int
    ) -> tuple[float, ...] | None:
        entries = getattr(self.stream, "index_entries", None)  # PyAV >= 14
        if not entries or not num_frames or len(entries) < 0.9 * num_frames:
            return None
        keys = sorted(float((e.timestamp - start_pts) * tb) for e in entries if e.is_keyframe)
        return tuple(keys) if keys else None

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reopen(self) -> None:
        self._open()

    # -- reading ---------------------------------------------------------------------------------

    @property
    def container(self) -> av.container.InputContainer:
        if self._container is None:
            raise VideoDecodeError(self.path, "reader is closed")
        return self._container

    def to_seconds(self, pts: int) -> float:
        return float((pts - self.info.start_pts) * self.info.time_base)

    def seek(self, seconds: float) -> None:
        """Seek to the keyframe at or before ``seconds``; raises ``av.error.FFmpegError`` on failure."""
        offset = self.info.start_pts + math.floor(seconds / self.info.time_base)
        self.stats.seeks += 1
        self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)

    def frames(self, *, from_keyframe: bool = False) -> Iterator[tuple[float | None, av.VideoFrame]]:
        """Decode from the current position: ``(seconds or None, frame)`` in presentation order.

        ``from_keyframe`` drops packets until the first keyframe packet (use after a seek: a demuxer
        may land mid-GOP, and decoding from there yields frames built on missing references).
        Zero-byte packets are never sent to the decoder; rejected packets are counted and skipped.
        """
        stream = self.stream
        ctx = stream.codec_context
        started = not from_keyframe
        self.hit_eof = False
        try:
            for packet in self.container.demux(stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is not None:
                    end = self.to_seconds(pts + (packet.duration or 0))
                    if self.last_packet_end is None or end > self.last_packet_end:
                        self.last_packet_end = end
                if packet.size == 0:
                    if packet.pts is not None or packet.dts is not None:
                        self.stats.empty_packets += 1
                    continue  # the demuxer's own EOF flush packet is sent below, once
                if not started:
                    if not packet.is_keyframe:
                        continue
                    started = True
                try:
                    decoded = ctx.decode(packet)
                except (av.error.InvalidDataError, av.error.FFmpegError):
                    self.stats.skipped_packets += 1
                    continue
                for frame in decoded:
                    self.stats.decoded_frames += 1
                    yield self._time(frame), frame
        except av.error.FFmpegError:
            # A demuxer error (e.g. truncated file) ends the stream: keep what decoded so far.
            self.stats.skipped_packets += 1
        self.hit_eof = True
        try:
            tail = ctx.decode(None)  # drain frames the decoder still holds (B-frames, threads)
        except av.error.FFmpegError:
            tail = []
        for frame in tail:
            self.stats.decoded_frames += 1
            yield self._time(frame), frame

    def _time(self, frame: av.VideoFrame) -> float | None:
        pts = frame.pts if frame.pts is not None else frame.dts
        return None if pts is None else self.to_seconds(pts)

    def scan_extent(self) -> tuple[float | None, int]:
        """Demux (without decoding) to the end: ``(end time in seconds or None, number of packets)``.

        Cheap compared to decoding; used when the container states no duration, or claims more
        than the file holds (truncation).
        """
        self.reopen()
        end: float | None = None
        count = 0
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0 and packet.pts is None and packet.dts is None:
                    continue
                count += 1
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is not None:
                    t = self.to_seconds(pts + (packet.duration or 0))
                    end = t if end is None else max(end, t)
        except av.error.FFmpegError:
            pass
        self.reopen()
        return end, count


def output_size(
    width: int, height: int, size: int | None, sample_aspect_ratio: Fraction | None = None
) -> tuple[int, int]:
    """Output ``(width, height)``: square pixels (anamorphic SAR applied), short side ``size``.

    Keeping the aspect ratio (no crop, no stretch) is deliberate: the backbone's own processor
    decides how to crop, and a stretched frame would change what the model sees.
    """
    w = float(width)
    if sample_aspect_ratio is not None and sample_aspect_ratio != 1:
        w = width * float(sample_aspect_ratio)
    h = float(height)
    if size is None:
        return max(1, round(w)), max(1, round(h))
    scale = size / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def frame_to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """Decoded frame -> uint8 RGB ``[H, W, 3]`` via FFmpeg's swscale (fast; PIL is the slow path).

    Rotation metadata (phone clips) is applied so the array is upright as a viewer would show it;
    ``width``/``height`` are given in the stored (unrotated) orientation. Area interpolation: the
    right filter for the large downscales used here (1080p -> 224) and, measured, no slower than
    swscale's bilinear (about 1 ms a 1080p frame).
    """
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    rotation = getattr(frame, "rotation", 0) or 0
    k = round(rotation / 90) % 4
    if k:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=k))
    return rgb
