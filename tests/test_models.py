"""Sequential models: padding invariance, reference-vs-fast equivalences, losses, and learning."""

import numpy as np
import pytest
import torch

from linkedout.data.batches import PAD
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import ModelConfig, build_model
from linkedout.models.base import TrainBatch
from linkedout.models.user_encoders import GRU4Rec, SASRec
from linkedout.train.evaluate import evaluate
from linkedout.train.trainer import TrainConfig, seed_everything, train


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "mean"])
def test_extra_left_padding_does_not_change_scores(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, dim=16, dropout=0.0), n_items=30, max_len=12).eval()
    short = torch.tensor([[PAD, 3, 4, 5], [1, 2, 3, 4]])
    long = torch.cat([torch.full((2, 8), PAD), short], dim=1)
    torch.testing.assert_close(model.score_all_items(short), model.score_all_items(long))


def test_sasrec_is_causal():
    torch.manual_seed(0)
    enc = SASRec(dim=16, max_len=6, dropout=0.0).eval()
    x = torch.randn(1, 6, 16)
    valid = torch.ones(1, 6, dtype=torch.bool)
    y = enc(x, valid)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, 16)  # change the future
    torch.testing.assert_close(enc(x2, valid)[0, :4], y[0, :4])


def test_gru4rec_packed_equals_one_sequence_at_a_time():
    torch.manual_seed(0)
    enc = GRU4Rec(dim=8, dropout=0.0).eval()
    lengths = [5, 2, 0, 3]
    x = torch.randn(4, 5, 8)
    valid = torch.tensor([[j >= 5 - n for j in range(5)] for n in lengths])
    fast = enc(x * valid[..., None], valid)
    for b, n in enumerate(lengths):
        if n == 0:
            assert fast[b].abs().sum() == 0
            continue
        out, _ = enc.gru(x[b : b + 1, 5 - n :])
        torch.testing.assert_close(fast[b, 5 - n :], enc.proj(out[0]))
        assert fast[b, : 5 - n].abs().sum() == 0


def test_in_batch_loss_masks_the_users_own_items():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mean", dim=8, loss="inbatch"), n_items=10, max_len=3)
    # row 0 has item 7 in its history and row 1's target is 7: not a negative for row 0
    batch = TrainBatch(torch.tensor([[7, 1, 2], [3, 4, 5]]), torch.tensor([[1, 2, 8], [4, 5, 7]]))
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    model_ce = build_model(ModelConfig(name="mean", dim=8, loss="ce"), n_items=10, max_len=3)
    assert torch.isfinite(model_ce.loss(batch))


def _cyclic_log(n_users=60, n_items=20, length=12, seed=0):
    """Each user walks i -> i+1 (mod n) from a random start: next item is predictable from the last."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            users.append(u)
            items.append((start + t) % n_items)
            ts.append(t)
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(ts))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_sequential_models_learn_a_predictable_walk(name):
    seed_everything(0)
    s = split(_cyclic_log(), Protocol("t", max_seq_len=8))
    model = build_model(ModelConfig(name=name, dim=32, dropout=0.0), s.n_items, 8)
    pop = build_model(ModelConfig(name="pop"), s.n_items, 8)
    pop.fit(s)
    result = train(model, s, TrainConfig(epochs=30, patience=30, lr=5e-3, batch_size=32), progress=False)
    learned = evaluate(model, s, "test")["HR@10"]
    assert learned > 0.95
    assert evaluate(pop, s, "test")["HR@10"] < 0.8
    assert result.best_epoch >= 1 and len(result.history) >= result.best_epoch


def test_itemknn_recommends_the_co_watched_next_item():
    s = split(_cyclic_log(n_items=30, length=6), Protocol("t", mask_history=True))
    model = build_model(ModelConfig(name="itemknn"), s.n_items, 50)
    model.fit(s)
    assert evaluate(model, s, "test")["HR@10"] > 0.9
