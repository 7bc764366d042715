"""The training optimizer: AdamW over every parameter, or, for large ID tables (``--sparse-ids ROWS``),
sparse gradients and `torch.optim.SparseAdam` for those tables and AdamW for the rest (issue 13).

Why: dense AdamW touches every row of every parameter at every step. For a 100k x 64 item table that
is a dense gradient (a fresh 25 MB zero tensor per step, then scattered into), a clip norm over it, and
Adam's update of the table and both moments, with fresh temporaries for ``sqrt`` and ``div``: profiled
on the 1M-event SYNTHETIC log (docs/benchmarks.md, "A streamed step"), that was the largest part of an
id-only SASRec step under ``--loss inbatch``, while a step looks up only its windows' items. With
``nn.Embedding(sparse=True)`` the gradient holds the looked-up rows only, and SparseAdam updates those
rows and their moments, so the step costs the batch, not the catalogue.

What changes (why it is a flag, off by default): SparseAdam is *lazy* Adam. A row that no step looks up
does not move (AdamW keeps moving it on its momentum), and a row's moments decay only on the steps
that touch it. It has no weight decay: AdamW's decoupled decay shrinks every row at every step, which a
row-sparse step cannot do, so ``--sparse-ids`` with ``--weight-decay > 0`` is refused rather than
silently decaying the dense parameters only. A loss that reads the whole table (``--loss ce``, whose
full softmax needs every item vector; LightGCN's propagation) gets a dense gradient: refused with the
table's name, because there the dense update is the right one anyway. When every row is looked up at
every step the two agree step for step, to rounding (tests/test_optim.py).
"""

from __future__ import annotations

import torch
from torch import nn

from linkedout.config import TrainConfig


class TrainOptimizer:
    """AdamW for the dense parameters plus SparseAdam for ``sparse`` (name -> ID table weight), with
    the same ``zero_grad``/``step`` as one torch optimizer and the gradient clip over both."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        tables = sparse_tables(model, config.sparse_ids)
        if tables and config.weight_decay > 0:
            raise ValueError(
                f"--sparse-ids {config.sparse_ids} with --weight-decay {config.weight_decay:g}: SparseAdam "
                f"cannot decay {', '.join(tables)} (AdamW decays every row at every step, a sparse step "
                "touches only the rows it looks up); use --weight-decay 0 or --sparse-ids 0"
            )
        for table in tables.values():
            table.sparse = True  # nn.Embedding reads this at every forward: gradients come out sparse
        self.sparse = {name: table.weight for name, table in tables.items()}
        sparse_ids = {id(p) for p in self.sparse.values()}
        dense = [p for p in self.params if id(p) not in sparse_ids]
        self.optimizers: list[torch.optim.Optimizer] = []
        if dense or not self.sparse:  # AdamW refuses an empty list; a model of one table has none
            self.optimizers.append(torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay))
        if self.sparse:
            self.optimizers.append(torch.optim.SparseAdam(list(self.sparse.values()), lr=config.lr))

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def clip(self, max_norm: float) -> torch.Tensor:
        """Scale all gradients to a total 2-norm of at most ``max_norm``; returns the norm before."""
        if not self.sparse:
            return torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self._check_sparse()
        return clip_grad_norm(self.params, max_norm)

    def step(self) -> None:
        if self.sparse:
            self._check_sparse()
        for optimizer in self.optimizers:
            optimizer.step()

    def _check_sparse(self) -> None:
        for name, weight in self.sparse.items():
            if weight.grad is not None and not weight.grad.is_sparse:
                raise ValueError(
                    f"--sparse-ids: the loss read the whole ID table {name} (a dense gradient: e.g. "
                    "--loss ce, whose full softmax needs every item, or LightGCN), so a sparse update "
                    "saves nothing there; use --sparse-ids 0 (or --loss inbatch)"
                )


def sparse_tables(model: nn.Module, min_rows: int) -> dict[str, nn.Embedding]:
    """The model's ``nn.Embedding`` tables of at least ``min_rows`` rows (none when ``min_rows`` <= 0)."""
    if min_rows < 0:
        raise ValueError(f"--sparse-ids must be >= 0 (0: off), got {min_rows}")
    if min_rows == 0:
        return {}
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and module.num_embeddings >= min_rows
    }


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (2-norm, the same coefficient) for gradients of which some
    are sparse, which torch's own refuses: a sparse gradient is coalesced first (repeated rows summed,
    so its norm is the dense gradient's) and then scaled in place through its values."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())  # the coalesced tensor's own storage: scaling it scales p.grad
        else:
            grads.append(p.grad)
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef)
    return total
