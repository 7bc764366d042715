"""Sequential models: padding invariance, reference-vs-fast equivalences, losses, and learning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linkedout.data.batches import PAD
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import ModelConfig, build_model
from linkedout.models.base import TrainBatch
from linkedout.models.item_encoders import IdItemEncoder
from linkedout.models.sequential import SequentialRecommender
from linkedout.models.user_encoders import ByteDropout, GRU4Rec, SASRec, attention_weights
from linkedout.train.evaluate import evaluate
from linkedout.train.recipes import recipe
from linkedout.train.trainer import TrainConfig, resolve_precision, seed_everything, train


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


def test_written_out_attention_equals_scaled_dot_product_attention():
    """Training applies dropout to written-out attention weights; evaluation uses the fused kernel."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 6, 4).unbind(0)
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None] & (
        valid[:, None, :] | torch.eye(6, dtype=torch.bool)
    )
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    torch.testing.assert_close(attention_weights(q, k, allowed) @ v, fused)


def test_byte_dropout_drops_p_rescales_and_repeats_under_a_seed():
    x = torch.ones(400, 1000)
    drop = ByteDropout(0.2)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 51 / 256) < 0.005  # p rounded to 51/256
    assert torch.allclose(y[kept], torch.tensor(256 / 205))  # inverted dropout: E[y] = x
    assert abs(y.mean().item() - 1.0) < 0.01
    torch.manual_seed(0)
    assert torch.equal(ByteDropout(0.2)(x), y)  # seeded from torch's generator
    assert not torch.equal(drop(x), y)  # a fresh mask every call
    assert torch.equal(drop.eval()(x), x) and torch.equal(ByteDropout(0.0)(x), x)
    with pytest.raises(ValueError, match="dropout"):
        ByteDropout(1.0)


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


def test_softmax_over_trained_items_equals_masking_the_others():
    """Fast path (gather the trained items' rows) vs reference (every logit, untrained masked): same
    loss, same gradients; untrained items get no gradient through the softmax."""
    torch.manual_seed(0)
    trained = torch.ones(12, dtype=torch.bool)
    trained[[2, 9]] = False
    model = SequentialRecommender(IdItemEncoder(12, 8), SASRec(8, max_len=4), trained_items=trained)
    states = torch.randn(7, 8)
    targets = torch.tensor([0, 1, 3, 11, 5, 8, 10])
    matrix = model.item_encoder.all_items()
    fast = F.cross_entropy(model.softmax_logits(states, matrix), model.softmax_column[targets])
    (grad_fast,) = torch.autograd.grad(fast, matrix)
    reference = F.cross_entropy(model.reference_softmax_logits(states, matrix), targets)
    (grad_reference,) = torch.autograd.grad(reference, matrix)
    torch.testing.assert_close(fast, reference)
    torch.testing.assert_close(grad_fast, grad_reference)
    assert grad_fast[[2, 9]].abs().sum() == 0
    # and through the whole loss, whose rows are padded to a multiple of ROW_BUCKET with ignored ones
    model.eval()  # no dropout: both sides see the same states
    batch = TrainBatch(
        torch.tensor([[PAD, 0, 1, 3], [5, 8, 10, 11]]), torch.tensor([[PAD, 1, 3, 4], [8, 10, 11, 0]])
    )
    valid = (batch.inputs != PAD) & (batch.targets != PAD)
    states = model.encode_history(batch.inputs, matrix)[valid]
    expected = F.cross_entropy(model.reference_softmax_logits(states, matrix), batch.targets[valid])
    torch.testing.assert_close(model.loss(batch), expected)


def test_precision_auto_resolves_by_hardware_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_recipes_use_bf16_only_where_it_was_measured(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert recipe("sasrec", "recbole")[1].precision == "bf16"  # ID embeddings: measured
    assert recipe("sasrec", "recbole", item_encoder="linkedout")[1].precision == "fp32"
    assert recipe("sasrec", "recbole", item_encoder="dff", precision="bf16")[1].precision == "bf16"
    assert recipe("gru4rec", "recbole")[1].precision == "fp32"


@pytest.mark.parametrize("encoder", ["sasrec", "gru4rec"])
def test_bf16_training_learns_the_walk_too(encoder):
    seed_everything(0)
    s = split(_cyclic_log(), Protocol("t", max_seq_len=8))
    model = build_model(ModelConfig(name=encoder, dim=32, dropout=0.0), s.n_items, 8)
    config = TrainConfig(epochs=30, patience=30, lr=5e-3, batch_size=32, precision="bf16")
    train(model, s, config, progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    assert evaluate(model, s, "test")["HR@10"] > 0.95


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


def test_model_config_round_trips_and_refuses_settings_it_does_not_know():
    config = ModelConfig(name="gru4rec", dim=24, item_encoder="linkedout", top_k=2)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="does not know: \\['new_knob'\\]"):
        ModelConfig.from_dict({**config.to_dict(), "new_knob": 1})


def test_left_pad_keeps_the_most_recent_items_at_the_right():
    from linkedout.data.batches import left_pad

    out = left_pad([np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int64)])
    assert out.tolist() == [[1, 2, 3], [PAD, PAD, 4], [PAD, PAD, PAD]]
    assert left_pad([np.array([1, 2, 3])], 2).tolist() == [[2, 3]]
    assert left_pad([np.array([], dtype=np.int64)]).shape == (1, 1)  # never zero columns
