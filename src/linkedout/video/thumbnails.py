"""Small JPEG thumbnails of clips, for the catalogue page: one home for the export (a frame from the
middle of each clip) and the server (a frame of a clip added online)."""

from __future__ import annotations

import io
import os

import numpy as np

from linkedout.video.sampling import sample_frames

THUMB_SIZE = 128  # short side, pixels: enough for a catalogue grid


def frame_jpeg(frame: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """An RGB uint8 frame ``[H, W, 3]`` as a JPEG whose short side is at most ``size`` pixels."""
    from PIL import Image

    image = Image.fromarray(frame)
    scale = size / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def clip_thumbnail(video_path: str | os.PathLike[str], size: int = THUMB_SIZE) -> bytes:
    """One frame from the middle of a clip as a small JPEG (raises VideoDecodeError)."""
    clip = sample_frames(video_path, 1, size=size, mode="keyframe")
    return frame_jpeg(clip.frames[0], size)
