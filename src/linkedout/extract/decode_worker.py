"""What a decode worker runs. Its own module on purpose: process workers (and the forkserver that
starts them) import only this and `linkedout.video` (PyAV, numpy), never torch or Lance. Lance warns
when a process that imported it forks, and the forkserver forks every worker."""

from __future__ import annotations

import os
import threading
import time

import psutil

from linkedout.video import AudioSampler, DecodedAudio, DecodedClip, DecodeFailure, FrameSampler

__all__ = ["decode_clip", "exit_with_parent"]


def decode_clip(
    sampler: FrameSampler | AudioSampler, path: str
) -> tuple[DecodedClip | DecodedAudio | DecodeFailure, float]:
    """``(clip or audio track or failure, seconds)``; never raises: errors come back as `DecodeFailure`."""
    t0 = time.perf_counter()
    out = sampler.try_sample(path)
    return out, time.perf_counter() - t0


def exit_with_parent(pid: int, created: float, interval: float = 0.5) -> None:
    """Process-pool initializer: end this worker when the extracting process ``pid`` is gone.

    Why: after a ``kill -9`` of the extractor, pool workers stay blocked on their task queue forever
    (each holds the queue's write end, so they never see end-of-file). ``created`` (the process's
    start time) guards against a reused pid; a zombie awaiting its reaper counts as gone.
    """

    def alive() -> bool:
        try:
            p = psutil.Process(pid)
            return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def watch() -> None:
        while alive():
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="linkedout-exit-with-parent", daemon=True).start()
