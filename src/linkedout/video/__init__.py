"""linkedout.video: robust frame sampling from real-world clips (PyAV, packet by packet).

Public API: :func:`sample_frames`, :func:`sample_segments`, :func:`try_sample_frames`,
:class:`FrameSampler`, :class:`DecodedClip`, :class:`DecodeFailure`, :class:`VideoDecodeError`.
"""

from linkedout.video.decode import DecodeFailure, VideoDecodeError, VideoInfo, VideoReader
from linkedout.video.sampling import (
    SAMPLER_VERSION,
    DecodedClip,
    FrameSampler,
    sample_frames,
    sample_segments,
    segment_windows,
    try_sample_frames,
    uniform_targets,
)
from linkedout.video.thumbnails import clip_thumbnail, frame_jpeg

__all__ = [
    "SAMPLER_VERSION",
    "DecodeFailure",
    "DecodedClip",
    "FrameSampler",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "clip_thumbnail",
    "frame_jpeg",
    "sample_frames",
    "sample_segments",
    "segment_windows",
    "try_sample_frames",
    "uniform_targets",
]
