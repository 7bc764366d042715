"""linkedout.video: robust frame sampling from real-world clips (PyAV, packet by packet).

Public API: :func:`sample_frames`, :func:`sample_segments`, :func:`try_sample_frames`,
:class:`FrameSampler`, :class:`DecodedClip`, :class:`DecodeFailure`, :class:`VideoDecodeError`;
audio tracks: :class:`AudioSampler`, :class:`DecodedAudio`, :func:`decode_audio` (``audio.py``).
"""

from linkedout.video.audio import (
    AUDIO_SAMPLER_VERSION,
    NO_AUDIO_TRACK,
    AudioSampler,
    DecodedAudio,
    decode_audio,
    try_decode_audio,
)
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
    "AUDIO_SAMPLER_VERSION",
    "NO_AUDIO_TRACK",
    "SAMPLER_VERSION",
    "AudioSampler",
    "DecodeFailure",
    "DecodedAudio",
    "DecodedClip",
    "FrameSampler",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "clip_thumbnail",
    "decode_audio",
    "frame_jpeg",
    "sample_frames",
    "sample_segments",
    "segment_windows",
    "try_decode_audio",
    "try_sample_frames",
    "uniform_targets",
]
