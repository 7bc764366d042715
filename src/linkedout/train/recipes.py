"""Tuned defaults per (model, protocol): what `linkedout train` uses unless told otherwise.

Tuned on ml-100k's VALIDATION split only (never test); see docs/benchmarks.md for the search and
the command behind every number. Anything passed on the command line overrides a recipe field.
"""

from __future__ import annotations

from dataclasses import fields, replace

from linkedout.models import ModelConfig
from linkedout.train.trainer import TrainConfig, resolve_precision

# (model, protocol) -> (model fields, train fields); "*" matches any protocol
RECIPES: dict[tuple[str, str], tuple[dict, dict]] = {
    ("pop", "*"): ({}, {}),
    ("itemknn", "*"): ({"knn_neighbours": 200, "knn_history": 1}, {}),
    ("sasrec", "recbole"): (
        {"dim": 64, "dropout": 0.2},
        {"batch_size": 32, "lr": 3e-3, "patience": 10, "precision": "auto"},
    ),
    ("sasrec", "microlens"): (
        {"dim": 64, "dropout": 0.2},
        {"batch_size": 32, "lr": 1e-3, "patience": 10, "precision": "auto"},
    ),
    ("gru4rec", "recbole"): ({"dim": 64, "dropout": 0.2}, {"batch_size": 32, "lr": 2e-3, "patience": 10}),
    ("gru4rec", "microlens"): ({"dim": 64, "dropout": 0.2}, {"batch_size": 32, "lr": 1e-3, "patience": 10}),
    ("mean", "*"): ({"dim": 64}, {"batch_size": 32, "lr": 1e-3}),
    ("twotower", "*"): (
        {"dim": 64, "dropout": 0.1, "loss": "inbatch", "logq": True},
        {"batch_size": 128, "lr": 3e-3, "patience": 10},
    ),
    # pairwise families: tuned on ml-100k validation under recbole with the history masked (general
    # models rank unseen items; `linkedout train --mask-history`); batch_size counts windows (~34
    # positives each on ml-100k), weight_decay is their L2
    # bpr patience 10 (was 5): validation NDCG@10 is noisy and peaks late in some seeds (epoch 25 where
    # patience 5 had stopped after a best at 6 or 14); 5 seeds: 0.0569 vs 0.0554 on validation, test
    # unchanged (benchmarks/bpr_sweep.py, docs/benchmarks.md "BPR against implicit's BPR")
    ("bpr", "*"): (
        {"dim": 64, "negatives": 8},
        {"batch_size": 64, "lr": 1e-2, "weight_decay": 0.1, "patience": 10},
    ),
    ("lightgcn", "*"): (
        {"dim": 64, "negatives": 4, "layers": 2},
        {"batch_size": 64, "lr": 1e-2, "weight_decay": 0.1, "patience": 5},
    ),
    # microlens (where cold items are measured, benchmarks/families.py): an item without edges keeps half
    # its layer-0 vector, and 20% of warm items are cut from the graph per step so content learns to
    # rank alone; chosen on ml-100k validation with 20% cold items (benchmarks/lightgcn_cold.py,
    # docs/benchmarks.md "LightGCN cold items")
    ("lightgcn", "microlens"): (
        {"dim": 64, "negatives": 4, "layers": 2, "isolated_scale": 0.5, "isolate_items": 0.2},
        {"batch_size": 64, "lr": 1e-2, "weight_decay": 0.1, "patience": 5},
    ),
    # tiger: lr 2e-3 beat 5e-3 on ml-100k recbole validation (id and caption semantic IDs); batch 64
    # costs less per window than 32 on its code-token stream (4 tokens per item)
    ("tiger", "*"): (
        {"dim": 64, "dropout": 0.2, "code_levels": 3, "codebook_size": 64, "beam": 20},
        {"batch_size": 64, "lr": 2e-3, "patience": 5},
    ),
}


def recipe(model: str, protocol: str, **overrides) -> tuple[ModelConfig, TrainConfig]:
    """Configs for ``model`` under ``protocol`` (preset name, possibly with "[...]" overrides), with any
    non-None ``overrides`` (fields of ModelConfig or TrainConfig) applied on top."""
    base_protocol = protocol.split("[")[0]
    model_kw, train_kw = RECIPES.get((model, base_protocol)) or RECIPES.get((model, "*")) or ({}, {})
    mc = replace(ModelConfig(name=model), **model_kw)
    tc = replace(TrainConfig(), **train_kw)
    model_fields = {f.name for f in fields(ModelConfig)}
    train_fields = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - model_fields - train_fields
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    mc = replace(mc, **{k: v for k, v in overrides.items() if k in model_fields and v is not None})
    tc = replace(tc, **{k: v for k, v in overrides.items() if k in train_fields and v is not None})
    if tc.precision == "auto":
        # bf16 was measured for ID embeddings only (docs/benchmarks.md); content item encoders keep
        # fp32 until their accuracy under bf16 is measured
        tc = replace(
            tc, precision=resolve_precision("auto", tc.device) if mc.item_encoder == "id" else "fp32"
        )
    return mc, tc


def encoder_settings(spec: str) -> dict:
    """Benchmark shorthand for an item encoder: ``linkedout`` (content only), ``linkedout+id`` (fused
    with the ID embedding through DFF's gate). DFF always fuses; ``id`` has no content."""
    name, _, suffix = spec.partition("+")
    if suffix not in ("", "id"):
        raise ValueError(f"bad encoder spec {spec!r} (NAME or NAME+id)")
    return {"item_encoder": name, "id_fusion": bool(suffix) or name == "dff"}
