"""Peak memory and speed of hook capture vs ``output_hidden_states=True`` on a mid-size random LLaVA-OV.

    .venv/bin/python benchmarks/vllm_capture_memory.py            # ~5 min on one core
    .venv/bin/python benchmarks/vllm_capture_memory.py --quick    # smaller model, ~1 min

Model: a randomly initialised LLaVA-OneVision-like checkpoint written to a temp folder (Qwen2-0.5B-sized
decoder: 24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4864; a small 2-layer SigLIP at 384 px with
patch 14, so one frame gives the real 196 tokens), one 8-frame 360x640 video, L/4 selected layers.

Variants, each in its own subprocess (one torch thread, same inputs, same greedy ``generate``):

* ``plain``   no capture at all: the model's own cost (activations, KV cache);
* ``hooks``   `VideoLLMBackbone.capture` (hooks on the L/4 layers, pooled on the device);
* ``hidden``  ``generate(output_hidden_states=True, return_dict_in_generate=True)``, then the same pooling
  applied to the selected layers of the returned states (the obvious way without hooks).

Memory method: Linux resident set size. Each worker loads the model, runs a 1-frame warm-up, records
``VmRSS`` (the *idle* baseline: weights + inputs), resets the kernel's peak counter (``echo 5 >
/proc/self/clear_refs``), runs the variant once and reads the peak ``VmHWM``. ``MALLOC_MMAP_THRESHOLD_``
is pinned to 64 KiB so that glibc returns freed tensor memory to the OS instead of keeping it, which
would hide later peaks. ``tracemalloc`` cannot see torch's allocations, hence RSS.

Two figures, both reported:

* *extra* = peak - idle baseline (activations + KV cache + whatever the capture keeps);
* *capture overhead* = extra(variant) - extra(plain): what capturing adds on top of running the model.
  The honest ratio for "hooks vs output_hidden_states" is overhead(hooks) / overhead(hidden).

The selected layers exclude the last one (``2, 6, ..., 22``), so both variants can be compared exactly:
``output_hidden_states[-1]`` has the final norm applied, the hooks see the raw layer output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import provenance

MID = {
    "text": {
        "num_hidden_layers": 24,
        "hidden_size": 896,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 4096,
        "max_position_embeddings": 8192,
    },
    "vision": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 384,
        "patch_size": 14,
    },
}
QUICK = {
    "text": {**MID["text"], "num_hidden_layers": 16, "hidden_size": 512, "num_attention_heads": 8},
    "vision": {**MID["vision"], "image_size": 224},
}
FRAMES, HEIGHT, WIDTH = 8, 360, 640
NEW_TOKENS = 8
SUMMARY = 4


def status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------- worker


def worker(path: str, variant: str, k: int, out_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    from transformers import AutoConfig

    from linkedout.backbones.base import ItemInput
    from linkedout.backbones.vllm import load_vllm_backbone, pooling_matrix
    from linkedout.testing import random_frames

    n = AutoConfig.from_pretrained(path).text_config.num_hidden_layers
    layers = list(range(2, n, 4))  # L/4 layers, never the last one (see module docstring)
    bb = load_vllm_backbone(path, layers=layers, new_tokens=k, summary_tokens=SUMMARY, keep_new_tokens=True)
    video = [ItemInput("v", random_frames(FRAMES, HEIGHT, WIDTH, seed=0), "a title")]
    warm = [ItemInput("w", random_frames(1, HEIGHT, WIDTH, seed=1), "a title")]
    gen_cfg = bb.generation_config()

    def run(items):
        if variant == "hooks":
            res = bb.capture(items)
            return bb.tokens(res), res.generated
        prepared = bb.prepare(items)
        inputs = prepared.model_inputs(bb.device, bb.dtype)
        with torch.no_grad():
            if variant == "plain":
                out = bb.model.generate(**inputs, generation_config=gen_cfg)
                return None, out[:, prepared.input_ids.shape[1] :]
            out = bb.model.generate(
                **inputs, generation_config=gen_cfg, output_hidden_states=True, return_dict_in_generate=True
            )
        pool = pooling_matrix(prepared.unit_ids, prepared.num_units, prepared.attention_mask, SUMMARY)
        prefill = out.hidden_states[0]
        old = torch.stack([torch.bmm(pool, prefill[i + 1])[:, : SUMMARY + 1] for i in bb.layers], 1)
        if k == 0:
            return old, out.sequences[:, prepared.input_ids.shape[1] :]
        steps = out.hidden_states[1 : k + 1]  # step j ran the decoder on generated token j
        new = torch.stack([torch.stack([s[i + 1][:, -1] for s in steps], 1) for i in bb.layers], 1)
        return torch.cat([old, new], 2), out.sequences[:, prepared.input_ids.shape[1] :]

    run(warm)  # kernels, lazy buffers, first-call allocations
    idle = status_kb()["VmRSS"]
    resettable = reset_peak()
    t0 = time.perf_counter()
    tokens, generated = run(video)
    seconds = time.perf_counter() - t0
    peak = status_kb()["VmHWM"]
    prompt_len = bb.prepare(video).input_ids.shape[1]
    if tokens is not None:
        torch.save({"tokens": tokens.cpu(), "generated": generated.cpu()}, out_file + ".pt")
    result = {
        "variant": variant,
        "k": k,
        "idle_mb": idle / 1024,
        "peak_mb": peak / 1024,
        "extra_mb": (peak - idle) / 1024,
        "seconds": seconds,
        "prompt_tokens": prompt_len,
        "layers": list(bb.layers),
        "num_layers": len(bb.decoder.layers),
        "peak_reset": resettable,
        "params_m": sum(p.numel() for p in bb.model.parameters()) / 1e6,
    }
    Path(out_file).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------- parent


def run_worker(path: str, variant: str, k: int, tmp: str) -> dict:
    out_file = os.path.join(tmp, f"{variant}-{k}.json")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--worker", path, variant, str(k), out_file]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads(Path(out_file).read_text())


def tiny_throughput(root: str) -> list[dict]:
    """Videos/s and tokens/s of the tiny test checkpoints (batch of 4 videos x 8 frames)."""
    import torch

    torch.set_num_threads(1)
    from linkedout.backbones.base import ItemInput
    from linkedout.backbones.vllm import load_vllm_backbone
    from linkedout.testing import random_frames, write_tiny_checkpoint

    rows = []
    for family in ("llava_onevision", "qwen2_vl", "smolvlm"):
        path = write_tiny_checkpoint(family, Path(root) / family)
        items = [ItemInput(f"v{i}", random_frames(8, HEIGHT, WIDTH, seed=i), "a title") for i in range(4)]
        timing = {}
        for k in (0, NEW_TOKENS):
            bb = load_vllm_backbone(str(path), layers="every:2", new_tokens=k, summary_tokens=SUMMARY)
            bb.encode(items)  # warm-up
            t0 = time.perf_counter()
            reps = 5
            for _ in range(reps):
                bb.encode(items)
            timing[k] = (time.perf_counter() - t0) / reps
        prompt = bb.prepare(items).input_ids.shape[1]
        rows.append(throughput_row(f"tiny {family}", len(items), prompt, timing[0], timing[NEW_TOKENS]))
    return rows


def throughput_row(name: str, videos: int, prompt: int, t_prefill: float, t_full: float) -> dict:
    decode = max(t_full - t_prefill, 1e-9)
    return {
        "config": name,
        "videos_per_s": videos / t_full,
        "prefill_tokens_per_s": videos * prompt / t_prefill,
        "new_tokens_per_s": videos * NEW_TOKENS / decode,
        "seconds_per_batch": t_full,
        "batch": videos,
        "prompt_tokens": prompt,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 layers x 512, 224 px frames")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    made_by = provenance()
    import torch
    from transformers.utils import logging as hf_logging

    from linkedout.testing import write_tiny_checkpoint

    hf_logging.disable_progress_bar()
    cfg = QUICK if args.quick else MID
    with tempfile.TemporaryDirectory() as tmp:
        path = str(
            write_tiny_checkpoint(
                "llava_onevision", Path(tmp) / "mid", text=cfg["text"], vision=cfg["vision"]
            )
        )
        results = {}
        for k in (0, NEW_TOKENS):
            for variant in ("plain", "hooks", "hidden"):
                results[(variant, k)] = run_worker(path, variant, k, tmp)
                r = results[(variant, k)]
                print(f"  {variant:6s} K={k}: {r['seconds']:.1f} s, extra {r['extra_mb']:.0f} MB", flush=True)
            hooks = torch.load(os.path.join(tmp, f"hooks-{k}.json.pt"))
            hidden = torch.load(os.path.join(tmp, f"hidden-{k}.json.pt"))
            same_ids = torch.equal(hooks["generated"][:, :k], hidden["generated"][:, :k])
            diff = float((hooks["tokens"] - hidden["tokens"]).abs().max())
            scale = float(hidden["tokens"].abs().max())
            results[("check", k)] = {"max_abs_diff": diff, "max_abs": scale, "same_generated": same_ids}
        tiny = tiny_throughput(tmp)

    first = results[("plain", 0)]
    print(
        f"\nmid-size random LLaVA-OV: {first['num_layers']} layers, {first['params_m']:.0f}M params, "
        f"one {FRAMES}-frame {HEIGHT}x{WIDTH} video = {first['prompt_tokens']} prompt tokens, "
        f"{len(first['layers'])} hooked layers {first['layers']}, 1 torch thread"
    )
    print(
        f"idle RSS (weights + inputs): {first['idle_mb']:.0f} MB; peak counter reset: {first['peak_reset']}\n"
    )
    print("| K | variant | time (s) | peak RSS (MB) | extra over idle (MB) | capture overhead (MB) |")
    print("|---|---|---|---|---|---|")
    for k in (0, NEW_TOKENS):
        base = results[("plain", k)]["extra_mb"]
        for variant in ("plain", "hooks", "hidden"):
            r = results[(variant, k)]
            over = "-" if variant == "plain" else f"{r['extra_mb'] - base:.0f}"
            cells = [k, variant, f"{r['seconds']:.1f}", f"{r['peak_mb']:.0f}", f"{r['extra_mb']:.0f}", over]
            print("| " + " | ".join(map(str, cells)) + " |")
    print()
    for k in (0, NEW_TOKENS):
        h, o, p = (results[(v, k)]["extra_mb"] for v in ("hooks", "hidden", "plain"))
        c = results[("check", k)]
        print(
            f"K={k}: overhead ratio hooks/hidden = {(h - p) / max(o - p, 1e-9):.3f}; "
            f"extra ratio = {h / o:.2f}; outputs: max |diff| {c['max_abs_diff']:.2e} "
            f"(max |x| {c['max_abs']:.2f}), same generated ids: {c['same_generated']}"
        )
    mid_row = throughput_row(
        "mid-size LLaVA-OV (hooks)",
        1,
        first["prompt_tokens"],
        results[("hooks", 0)]["seconds"],
        results[("hooks", NEW_TOKENS)]["seconds"],
    )
    print("\n| config | batch | prompt tokens | videos/s | prefill tokens/s | new tokens/s |")
    print("|---|---|---|---|---|---|")
    for row in [*tiny, mid_row]:
        print(
            f"| {row['config']} | {row['batch']} | {row['prompt_tokens']} | {row['videos_per_s']:.2f} | "
            f"{row['prefill_tokens_per_s']:.0f} | {row['new_tokens_per_s']:.1f} |"
        )
    if args.json:
        serial = {f"{a}-{b}": v for (a, b), v in results.items()}
        args.json.write_text(
            json.dumps({"provenance": made_by, "memory": serial, "throughput": [*tiny, mid_row]}, indent=1)
        )


if __name__ == "__main__":
    main()
