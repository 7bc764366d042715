"""Cost of one SASRec training step under the recbole protocol, per optimisation (issue: foundation).

    .venv/bin/python benchmarks/sasrec_step.py [--steps 40] [--rounds 3] [--out FILE]

Same model, batch and optimizer for every variant; variants are interleaved round by round so a
slower minute of the machine hits them all alike, and the median over rounds is reported:

- ``reference``: every item's logit with untrained items masked to -inf, torch dropout, fp32
- ``+gather``: softmax over the trained items' rows only (SequentialRecommender.softmax_logits)
- ``+bytedrop``: dropout masks from random bytes (ByteDropout) instead of torch's bernoulli_
- ``+bf16``: the forward under bfloat16 autocast (TrainConfig.precision = "bf16")

Threads: torch's default (set OMP_NUM_THREADS to change). Run it on idle cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linkedout.data.batches import PAD, TrainWindows
from linkedout.data.protocol import get_protocol, split
from linkedout.models.base import TrainBatch
from linkedout.models.user_encoders import ByteDropout
from linkedout.train.recipes import recipe
from linkedout.train.run import DatasetSpec, build_for_split
from provenance import provenance

VARIANTS = {  # name -> (gather, byte dropout, bf16)
    "reference": (False, False, False),
    "+gather": (True, False, False),
    "+gather +bytedrop": (True, True, False),
    "+gather +bytedrop +bf16": (True, True, True),
}


def masked_loss(model, batch: TrainBatch) -> torch.Tensor:
    """The loss as computed before the gather: every item's logit, untrained ones masked."""
    valid = (batch.inputs != PAD) & (batch.targets != PAD)
    matrix = model.item_encoder.all_items()
    states = model.encode_history(batch.inputs, matrix)[valid]
    return F.cross_entropy(model.reference_softmax_logits(states, matrix), batch.targets[valid])


def with_torch_dropout(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ByteDropout):
            setattr(module, name, nn.Dropout(child.p))
        else:
            with_torch_dropout(child)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    made_by = provenance()

    protocol = get_protocol("recbole")
    data = split(DatasetSpec("ml-100k").load().interactions, protocol)
    model_config, train_config = recipe("sasrec", "recbole")
    items, starts, ends = data.train_sequences()
    windows = TrainWindows(starts, ends, protocol.max_seq_len)
    w_start, w_end = windows.sample(np.random.default_rng(0))
    bs = train_config.batch_size
    batches = []
    for lo in range(0, args.steps * bs, bs):
        inputs, targets = windows.batch(items, w_start[lo : lo + bs], w_end[lo : lo + bs])
        batches.append(TrainBatch(torch.from_numpy(inputs), torch.from_numpy(targets)))

    runs = {}
    for name, (gather, bytedrop, bf16) in VARIANTS.items():
        torch.manual_seed(0)
        model, _, _ = build_for_split(model_config, data)
        model.train()
        if not bytedrop:
            with_torch_dropout(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr)
        loss_fn = model.loss if gather else (lambda b, m=model: masked_loss(m, b))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        runs[name] = (model, optimizer, loss_fn, autocast)

    def step(model, optimizer, loss_fn, autocast, batch) -> None:
        with autocast:
            loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for batch in batches[:3]:  # warm-up
                step(*run, batch)
            t0 = time.perf_counter()
            for batch in batches:
                step(*run, batch)
            times[name].append((time.perf_counter() - t0) / len(batches) * 1000)

    reference = statistics.median(times["reference"])
    result = {
        "threads": torch.get_num_threads(),
        "batch_size": bs,
        "steps": args.steps,
        "rounds": args.rounds,
        "ms_per_step": {},
        "provenance": made_by,
    }
    print(f"SASRec training step, recbole protocol, batch {bs}, {torch.get_num_threads()} torch threads")
    for name, ts in times.items():
        med = statistics.median(ts)
        result["ms_per_step"][name] = {"median": round(med, 2), "rounds": [round(t, 2) for t in ts]}
        rounds = [round(t, 1) for t in ts]
        print(f"  {name:26s} {med:6.1f} ms/step  (x{reference / med:.2f})  rounds {rounds}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
