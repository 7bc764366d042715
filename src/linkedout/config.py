"""The plain typed configs of a model and of its training run: `ModelConfig`, `TrainConfig`.

Saved beside every run (run.json) and bundle (bundle.json) through `ModelConfig.to_dict` /
`from_dict`; fields declared with `flag_field` are also `linkedout train` options (linkedout/flags.py).
Torch-free on purpose: the CLI builds its options from these fields at start-up, and a
`linkedout version` must not pay for importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from linkedout.flags import flag_field


@dataclass
class ModelConfig:
    """Everything that defines a model's architecture and loss (saved beside every checkpoint)."""

    name: str = "sasrec"
    dim: int = flag_field(64, "--dim", "Embedding width (items and users).")
    blocks: int = flag_field(2, "--blocks", "sasrec: transformer blocks; gru4rec: GRU layers.")
    heads: int = flag_field(2, "--heads", "sasrec: attention heads per block.")
    dropout: float = flag_field(0.2, "--dropout")
    loss: str = flag_field(
        "ce", "--loss", "ce (full softmax) | inbatch | sampled (in-batch + shared uniform negatives)"
    )
    logq: bool = flag_field(False, "--logq/--no-logq", "Log-popularity correction (inbatch, sampled).")
    mask_window: bool = flag_field(
        True, "--mask-window/--no-mask-window", "inbatch, sampled: a row's own items are not its negatives."
    )
    knn_neighbours: int = 200
    knn_history: int = 1
    # pairwise families (bpr, lightgcn)
    negatives: int = flag_field(
        1, "--negatives", "bpr, lightgcn: negatives drawn per positive; --loss sampled: shared per step."
    )
    layers: int = flag_field(3, "--layers", "lightgcn: propagation layers K.")
    isolated_scale: float | None = flag_field(
        None, "--isolated-scale", "lightgcn: a cold item's vector = its layer 0 times this (default 1/(K+1))."
    )
    isolate_items: float = flag_field(
        0.0, "--isolate-items", "lightgcn: share of warm items cut from the graph per step (cold-start)."
    )
    # item side (issue: LinkedOut item encoders); features come from a feature store
    item_encoder: str = flag_field(
        "id", "--item-encoder", "id | last | mean | dff | linkedout | caption", show_default=True
    )
    features: str | None = flag_field(None, "--features", "Feature store for content item encoders.")
    # fuse content with the ID embedding (DFF gate); DFF always does
    id_fusion: bool = flag_field(False, "--id-fusion/--no-id-fusion", "Fuse content with IDs.")
    id_dropout: float = flag_field(
        0.1, "--id-dropout", "ID fusion: share of items trained on content alone per step."
    )
    compressor: str = flag_field("attn", "--compressor", "linkedout: attn | mlp")
    temperature: float = 1.0  # linkedout: gate softmax temperature
    top_k: int | None = flag_field(None, "--top-k", "linkedout: keep the top-k layers per item.")
    balance: float = 0.0  # linkedout: load-balancing weight
    # tiger: semantic IDs (residual k-means levels x codebook size, + a collision code) and beam width
    code_levels: int = flag_field(3, "--code-levels", "tiger: residual k-means levels of semantic IDs.")
    codebook_size: int = flag_field(64, "--codebook-size", "tiger: codes per level.")
    beam: int = flag_field(20, "--beam", "tiger: beam width (>= the largest k evaluated).")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what run.json and bundle.json store."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config saved by `to_dict`. A key this version does not know is an error rather than
        ignored: it would be an architecture setting that silently stopped applying."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"model config has settings this version of linkedout does not know: {unknown} "
                "(saved by a newer version?)"
            )
        return cls(**data)


@dataclass
class TrainConfig:
    lr: float = flag_field(1e-3, "--lr", "AdamW learning rate.")
    weight_decay: float = flag_field(0.0, "--weight-decay", "AdamW weight decay.")
    # "bf16": the training forward runs under bfloat16 autocast (matmuls in bf16, the softmax loss in
    # fp32; weights, optimizer and evaluation stay fp32). "auto": bf16 where the device has fast bf16
    # matmuls (CPU: AVX512-BF16 or AMX; CUDA: Ampere or newer), else fp32.
    precision: str = flag_field(
        "fp32", "--precision", "fp32 | bf16 | auto (bf16 where the hardware is fast at it)."
    )
    batch_size: int = flag_field(128, "--batch-size", "Training sequences per step.")
    epochs: int = flag_field(200, "--epochs", "Most epochs (early stopping usually ends first).")
    patience: int = flag_field(10, "--patience", "Stop after N epochs without improvement.")
    select_metric: str = "NDCG@10"
    jitter: bool = True  # random window phase per epoch (see TrainWindows)
    grad_clip: float | None = 5.0
    # 0: every parameter takes dense AdamW (what every recipe was tuned with). See train/optim.py
    sparse_ids: int = flag_field(
        0,
        "--sparse-ids",
        "ID tables of at least N rows train on sparse gradients with SparseAdam (lazy: only looked-up "
        "rows move; no weight decay). For --loss inbatch over large catalogues. 0: off.",
    )
    seed: int = flag_field(0, "--seed", show_default=True)
    device: str = flag_field("cpu", "--device", "cpu (default), cuda, mps")
    eval_batch_size: int = 512
    max_train_seconds: float | None = None
