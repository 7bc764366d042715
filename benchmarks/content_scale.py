"""Do content item encoders cost what the batch touches, or what the catalogue holds? SASRec training
steps with id-only, DFF and LinkedOut item encoders on SYNTHETIC catalogues of 10k and 100k items.

    .venv/bin/python benchmarks/content_scale.py [--items 10000 100000] [--events 300000]
        [--protocol microlens] [--steps 30] [--ce-steps 1] [--rounds 3]
        [--out benchmarks/results/content_scale.json]

What runs, per catalogue size (all variants interleaved round by round, so a slower minute of this
shared machine hits them all alike; the median over rounds is reported):
- ``id ce`` / ``id inbatch``: id-only SASRec, full softmax (its default loss) and in-batch + logQ.
- ``ENC inbatch``: DFF / LinkedOut with the in-batch softmax + logQ as it runs now: one encode of the
  batch's distinct items (`SequentialRecommender.in_batch_loss`).
- ``ENC inbatch-reference``: the same loss as first written (history encoded with PAD as item 0,
  candidates encoded a second time; `reference_in_batch_loss`): the "before" of the dedup.
- ``ENC ce``: full softmax, which encodes the whole catalogue every step (timed over ``--ce-steps``
  only: at 100k items a step takes seconds).
Seconds per epoch = median seconds per step x steps in one epoch of this log (an extrapolation from
``--steps`` timed steps, not a timed epoch); validation is not included (it encodes the catalogue
once per epoch: ``encode_all_seconds`` is that cost, printed beside). Ratio = content / ``id inbatch``
(same loss), and content / ``id ce`` (id-only's default) beside it. Precision fp32 for every variant
(the recipe's bf16 applies to id-only only, which would make the comparison unfair); one torch thread
unless ``--threads`` says otherwise.

The data is SYNTHETIC: users with 5-13 events (geometric), items drawn Zipf-like (s=1, flattened
head), every item at least once so the catalogue has exactly ``--items`` items; token features
random normal, in a real `FeatureStore` of the ml-100k-text store's shape (6 layers x 2 tokens x 384,
float16), written once into $LINKEDOUT_CACHE/features/synthetic-content-N (not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from linkedout.data.batches import PAD, TrainWindows
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Split, get_protocol, split
from linkedout.models import build_model
from linkedout.models.base import TrainBatch
from linkedout.models.features import ItemFeatures
from linkedout.train.recipes import encoder_settings, recipe
from provenance import provenance

SHAPE = (6, 2, 384)  # layers, tokens per layer, width: the ml-100k-text store (MiniLM layers 1-6)
TOKEN_KINDS = ("text", "prompt")
ENCODERS = ("dff", "linkedout")


def synthetic_log(n_items: int, n_events: int, seed: int) -> Interactions:
    """Users of 5-13 events, items Zipf-like, every item drawn at least once (see the docstring).
    13 at most: the microlens protocol keeps each user's last 13, and an item whose only event fell
    before those would leave the catalogue (a first version lost 21 % of a 100k catalogue that way)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(4 + rng.geometric(1 / 6, size=n_events // 5), 13)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_events) + 1]
    lengths[-1] -= lengths.sum() - n_events
    users = np.repeat(np.arange(len(lengths)), lengths)
    weights = 1.0 / (np.arange(n_items) + 10.0)
    cdf = np.cumsum(weights / weights.sum())
    rank = np.minimum(np.searchsorted(cdf, rng.random(n_events)), n_items - 1)
    rank[rng.choice(n_events, n_items, replace=False)] = np.arange(n_items)  # every item at least once
    items = rng.permutation(n_items)[rank]  # popularity unrelated to the id
    return Interactions.from_arrays(users, items, np.arange(n_events))


def synthetic_store(n_items: int, seed: int) -> Path:
    """A FeatureStore of random tokens for items 0..n_items-1 (written once, then reused)."""
    from linkedout.backbones.base import ItemTokens
    from linkedout.samples import cache_dir
    from linkedout.store import FeatureStore

    path = cache_dir() / "features" / f"synthetic-content-{n_items}"
    fields = {
        "backbone": "synthetic",
        "seed": seed,
        "note": "random normal tokens (benchmarks/content_scale.py)",
    }
    store = FeatureStore.open_or_create(
        path, fields, layers=range(1, SHAPE[0] + 1), token_kinds=TOKEN_KINDS, dim=SHAPE[2],
        layer_names=[f"layer{i}" for i in range(1, SHAPE[0] + 1)],
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    done = store.done_ids()
    for lo in range(0, n_items, 5000):
        ids = [str(i) for i in range(lo, min(lo + 5000, n_items))]
        tokens = rng.standard_normal((len(ids), *SHAPE), dtype=np.float32).astype(np.float16)
        todo = [ItemTokens(i, t) for i, t in zip(ids, tokens, strict=True) if i not in done]
        store.append(todo)
    return path


def windows_and_batches(data: Split, batch_size: int, steps: int, seed: int):
    """(steps in one epoch, the first ``steps`` batches of a shuffled epoch)."""
    items, starts, ends = data.train_sequences()
    windows = TrainWindows(starts, ends, data.protocol.max_seq_len)
    w_start, w_end = windows.sample(np.random.default_rng(seed))
    per_epoch = -(-len(w_end) // batch_size)
    batches = []
    for lo in range(0, min(steps, per_epoch) * batch_size, batch_size):
        inputs, targets = windows.batch(items, w_start[lo : lo + batch_size], w_end[lo : lo + batch_size])
        batches.append(TrainBatch(torch.from_numpy(inputs), torch.from_numpy(targets)))
    return per_epoch, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--protocol", default="microlens")
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant and round")
    ap.add_argument("--ce-steps", type=int, default=1, help="timed steps of content full-softmax variants")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/content_scale.json"))
    args = ap.parse_args()
    made_by = provenance()
    # two threads on two cores shared with other jobs ran steps ~10x slower than one (spinning OpenMP
    # workers waiting for a core): one thread measures the work, not the contention
    torch.set_num_threads(args.threads)
    protocol = get_protocol(args.protocol)
    result: dict = {
        "benchmark": "content_scale",
        "data": "SYNTHETIC (see benchmarks/content_scale.py)",
        "protocol": protocol.describe(),
        "events": args.events,
        "threads": torch.get_num_threads(),
        "precision": "fp32",
        "sizes": {},
        "provenance": made_by,
    }
    for n_items in args.items:
        data = split(synthetic_log(n_items, args.events, args.seed), protocol)
        features = ItemFeatures.from_store(synthetic_store(n_items, args.seed), data.data.item_ids)
        counts = data.train_item_counts()
        variants: dict[str, tuple] = {}  # name -> (model, optimizer, loss fn, steps)
        batch_size = 0
        for encoder in ("id", *args.encoders):
            for loss in ("ce", "inbatch"):
                settings = encoder_settings(encoder)
                mc, tc = recipe("sasrec", protocol.name, loss=loss, logq=loss == "inbatch", **settings)
                batch_size = tc.batch_size
                torch.manual_seed(args.seed)
                feats = None if encoder == "id" else features
                model = build_model(mc, data.n_items, protocol.max_seq_len, counts, feats).train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr)
                steps = args.steps if encoder == "id" or loss == "inbatch" else args.ce_steps
                variants[f"{encoder} {loss}"] = (model, optimizer, model.loss, steps, tc.grad_clip)
                if loss == "inbatch" and encoder != "id":

                    def reference(batch: TrainBatch, m=model) -> torch.Tensor:
                        valid = (batch.inputs != PAD) & (batch.targets != PAD)
                        loss_value, aux = m.reference_in_batch_loss(batch, valid)
                        return loss_value if aux is None else loss_value + aux

                    variants[f"{encoder} inbatch-reference"] = (
                        model,
                        optimizer,
                        reference,
                        steps,
                        tc.grad_clip,
                    )
        per_epoch, batches = windows_and_batches(data, batch_size, args.steps + 1, args.seed)

        def step(model, optimizer, loss_fn, grad_clip, batch: TrainBatch) -> None:
            loss_value = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss_value.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()

        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (model, optimizer, loss_fn, steps, clip) in variants.items():
                step(model, optimizer, loss_fn, clip, batches[0])  # warm-up (optimizer state, allocator)
                t0 = time.perf_counter()
                for batch in batches[1 : 1 + steps]:
                    step(model, optimizer, loss_fn, clip, batch)
                times[name].append((time.perf_counter() - t0) / steps)
                print(f"  {n_items} items {name:28s} {times[name][-1] * 1000:8.1f} ms/step", flush=True)
        encode_all = {}
        for encoder in args.encoders:
            model = variants[f"{encoder} inbatch"][0].eval()
            with torch.no_grad():
                t0 = time.perf_counter()
                model.item_encoder.encode_all()
                encode_all[encoder] = round(time.perf_counter() - t0, 2)
        rows = {}
        id_inbatch = statistics.median(times["id inbatch"]) * per_epoch
        id_ce = statistics.median(times["id ce"]) * per_epoch
        distinct = [len(torch.unique(torch.cat([b.inputs[b.inputs != PAD], b.targets[b.targets != PAD]])))
                    for b in batches]  # fmt: skip
        for name, ts in times.items():
            seconds = statistics.median(ts) * per_epoch
            rows[name] = {
                "ms_per_step": round(statistics.median(ts) * 1000, 2),
                "rounds_ms": [round(t * 1000, 2) for t in ts],
                "timed_steps": variants[name][3],
                "seconds_per_epoch": round(seconds, 1),
                "ratio_to_id_inbatch": round(seconds / id_inbatch, 2),
                "ratio_to_id_ce": round(seconds / id_ce, 2),
            }
        if data.n_items != n_items:
            raise RuntimeError(f"the split kept {data.n_items} of {n_items} items: the log generator is off")
        result["sizes"][str(n_items)] = {
            "items": data.n_items,
            "users": data.data.n_users,
            "train_steps_per_epoch": per_epoch,
            "batch_size": batch_size,
            "distinct_items_per_batch": round(float(np.mean(distinct)), 1),
            "encode_all_seconds": encode_all,
            "variants": rows,
        }
        head = f"{n_items} items, {per_epoch} steps/epoch, batch {batch_size}"
        print(f"{head}, {np.mean(distinct):.0f} distinct items per batch")
        for name, row in rows.items():
            print(
                f"  {name:28s} {row['ms_per_step']:8.1f} ms/step {row['seconds_per_epoch']:8.1f} s/epoch "
                f"x{row['ratio_to_id_inbatch']:.2f} of id inbatch, x{row['ratio_to_id_ce']:.2f} of id ce"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        del variants, features


if __name__ == "__main__":
    main()
