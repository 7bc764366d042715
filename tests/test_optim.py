"""Sparse ID tables (``--sparse-ids``): the sparse path against the dense reference (gradients, clip,
Adam steps), its lazy semantics, its refusals, and a training run through it."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from linkedout.data.batches import PAD
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import ModelConfig, build_model
from linkedout.models.base import TrainBatch
from linkedout.train.evaluate import evaluate
from linkedout.train.optim import TrainOptimizer, clip_grad_norm, sparse_tables
from linkedout.train.trainer import TrainConfig, seed_everything, train


class Lookup(nn.Module):
    """An ID table looked up with repeats (an uncoalesced sparse gradient) and a dense head."""

    def __init__(self, rows: int = 8, dim: int = 4) -> None:
        super().__init__()
        self.table = nn.Embedding(rows, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return (self.head(self.table(items)) ** 2).sum()


def _pair(rows: int = 8) -> tuple[Lookup, Lookup]:
    torch.manual_seed(0)
    dense = Lookup(rows)
    sparse = Lookup(rows)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def test_sparse_in_batch_gradient_equals_the_dense_one():
    """SASRec ids under --loss inbatch: the sparse table's gradient, made dense, is the dense gradient."""
    batch = TrainBatch(
        torch.tensor([[PAD, 0, 3, 5], [2, 9, 9, 4], [PAD, PAD, 1, 7]]),
        torch.tensor([[PAD, 3, 5, 6], [9, 9, 4, 11], [PAD, PAD, 7, 0]]),
    )
    grads, losses = [], []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(name="sasrec", dim=8, loss="inbatch", logq=True), 12, 4, np.arange(1, 13)
        )
        model.eval()  # no dropout: both sides compute the same function
        table = model.item_encoder.embedding
        table.sparse = sparse
        loss = model.loss(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(table.weight.grad)
    assert not grads[0].is_sparse and grads[1].is_sparse
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(grads[1].to_dense(), grads[0])
    # rows the batch never looked up have no entry in the sparse gradient at all
    assert set(grads[1].coalesce().indices()[0].tolist()) == {0, 1, 2, 3, 4, 5, 6, 7, 9, 11}


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipped, and left alone
def test_clip_over_sparse_gradients_equals_torch_clip_over_dense(max_norm):
    dense, sparse = _pair()
    sparse.table.sparse = True
    items = torch.tensor([1, 1, 3, 5, 5, 5])
    dense(items).backward()
    sparse(items).backward()
    expected = torch.nn.utils.clip_grad_norm_(list(dense.parameters()), max_norm)
    got = clip_grad_norm(list(sparse.parameters()), max_norm)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(sparse.table.weight.grad.to_dense(), dense.table.weight.grad)
    torch.testing.assert_close(sparse.head.weight.grad, dense.head.weight.grad)


def test_sparse_steps_equal_adamw_when_every_row_is_looked_up_every_step():
    """SparseAdam is lazy Adam: on rows touched at every step it is AdamW without weight decay (the
    same steps, through a clip that bites)."""
    dense, sparse = _pair()
    config = TrainConfig(lr=1e-2, weight_decay=0.0)
    reference = TrainOptimizer(dense, config)
    fast = TrainOptimizer(sparse, replace(config, sparse_ids=8))
    assert list(fast.sparse) == ["table.weight"] and not reference.sparse
    rng = np.random.default_rng(0)
    for _ in range(6):
        # every row at least once, some twice: an uncoalesced gradient over the whole table
        items = torch.from_numpy(np.concatenate([np.arange(8), rng.integers(0, 8, 5)]))
        for model, optimizer in ((dense, reference), (sparse, fast)):
            optimizer.zero_grad()
            model(items).backward()
            optimizer.clip(0.5)
            optimizer.step()
    for name, p in dense.state_dict().items():
        torch.testing.assert_close(sparse.state_dict()[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_a_row_no_step_looks_up_stays_put_under_sparse_and_drifts_under_adamw():
    """The documented difference: AdamW keeps moving a row on its momentum; SparseAdam does not."""
    dense, sparse = _pair()
    config = TrainConfig(lr=1e-2)
    optimizers = {
        "dense": TrainOptimizer(dense, config),
        "sparse": TrainOptimizer(sparse, replace(config, sparse_ids=1)),
    }
    models = {"dense": dense, "sparse": sparse}
    after_first: dict[str, torch.Tensor] = {}
    for step, items in enumerate([torch.tensor([0, 1, 2]), torch.tensor([1, 2])]):
        for name in models:
            optimizers[name].zero_grad()
            models[name](items).backward()
            optimizers[name].step()
            if step == 0:
                after_first[name] = models[name].table.weight[0].detach().clone()
    assert torch.equal(sparse.table.weight[0], after_first["sparse"])
    assert not torch.equal(dense.table.weight[0], after_first["dense"])


def test_sparse_ids_refuses_weight_decay_a_dense_read_and_a_negative_threshold():
    model = Lookup(rows=8)
    with pytest.raises(ValueError, match=r"table\.weight.*--weight-decay 0"):
        TrainOptimizer(model, TrainConfig(weight_decay=0.1, sparse_ids=8))
    with pytest.raises(ValueError, match="must be >= 0"):
        sparse_tables(model, -1)
    assert sparse_tables(Lookup(rows=8), 9) == {}  # below the threshold: dense AdamW as before
    # --loss ce reads every item vector: a dense gradient on the table, refused by name
    torch.manual_seed(0)
    ce = build_model(ModelConfig(name="sasrec", dim=8, loss="ce"), 12, 4)
    optimizer = TrainOptimizer(ce, TrainConfig(sparse_ids=12))
    ce.loss(TrainBatch(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 2, 3]]))).backward()
    with pytest.raises(ValueError, match=r"item_encoder\.embedding\.weight.*--sparse-ids 0"):
        optimizer.step()


def test_training_through_sparse_ids_learns_the_walk():
    seed_everything(0)
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(60):  # each user walks i -> i+1 (mod 20): the next item follows from the last
        start = rng.integers(20)
        for t in range(12):
            users.append(u)
            items.append((start + t) % 20)
            ts.append(t)
    s = split(
        Interactions.from_arrays(np.array(users), np.array(items), np.array(ts)), Protocol("t", max_seq_len=8)
    )
    model = build_model(
        ModelConfig(name="sasrec", dim=32, dropout=0.0, loss="inbatch", logq=True),
        s.n_items,
        8,
        s.train_item_counts(),
    )
    config = TrainConfig(epochs=30, patience=30, lr=5e-3, batch_size=32, sparse_ids=s.n_items)
    train(model, s, config, progress=False)
    assert model.item_encoder.embedding.sparse
    assert evaluate(model, s, "test")["HR@10"] > 0.95


def test_a_model_that_is_one_sparse_table_needs_no_adamw():
    table = nn.Embedding(8, 4)
    optimizer = TrainOptimizer(table, TrainConfig(lr=0.1, sparse_ids=8))
    before = table.weight.detach().clone()
    table(torch.tensor([3])).sum().backward()
    optimizer.clip(1.0)
    optimizer.step()
    moved = (table.weight != before).any(dim=1)
    assert moved.tolist() == [False, False, False, True, False, False, False, False]
