"""Content item encoders (last, mean, DFF, caption, LinkedOut) on synthetic features."""

import numpy as np
import pytest
import torch

from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import ModelConfig, TrainBatch, build_model
from linkedout.models.features import ItemFeatures
from linkedout.models.linkedout import CrossLayerMoEFuser, LinkedOutEncoder
from linkedout.train.evaluate import evaluate
from linkedout.train.trainer import TrainConfig, seed_everything, train

KINDS = ("video", "video", "prompt", "new")


def random_features(n_items=30, n_layers=4, dim=12, seed=0, missing=()):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n_items, n_layers, len(KINDS), dim, generator=g).half()
    present = torch.ones(n_items, dtype=torch.bool)
    present[list(missing)] = False
    tokens[~present] = 0
    return ItemFeatures(tokens, present, KINDS, tuple(f"layer{i}" for i in range(n_layers)))


@pytest.mark.parametrize("encoder", ["last", "mean", "dff", "caption", "linkedout"])
def test_encoders_give_one_vector_per_item_and_batch_equals_catalogue(encoder):
    torch.manual_seed(0)
    features = random_features()
    model = build_model(ModelConfig(item_encoder=encoder, dim=16), 30, 8, np.ones(30), features).eval()
    enc = model.item_encoder
    items = torch.tensor([[3, 5, 3], [0, 29, 5]])
    out = enc(items)
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out, enc.all_items()[items])
    scores = model.score_all_items(torch.tensor([[-1, 3, 4]]))
    assert scores.shape == (1, 30) and torch.isfinite(scores).all()


def test_moe_gate_weights_sum_to_one_and_top_k_keeps_k_layers():
    torch.manual_seed(0)
    z = torch.randn(7, 5, 16)
    dense = CrossLayerMoEFuser(5, 16).weights(z)
    torch.testing.assert_close(dense.sum(-1), torch.ones(7))
    sparse = CrossLayerMoEFuser(5, 16, top_k=2).weights(z)
    assert ((sparse > 0).sum(-1) == 2).all()
    torch.testing.assert_close(sparse.sum(-1), torch.ones(7))
    sharp = CrossLayerMoEFuser(5, 16, temperature=0.01)
    sharp.load_state_dict(CrossLayerMoEFuser(5, 16).state_dict())
    assert sharp.weights(z).max(-1).values.min() > 0.9  # low temperature -> near one-hot


@pytest.mark.parametrize("kind", ["attn", "mlp"])
def test_compressor_fast_path_equals_reference(kind):
    from linkedout.models.linkedout import AttentionCompressor, MLPCompressor

    torch.manual_seed(0)
    if kind == "attn":
        expert = AttentionCompressor(12, 16, dropout=0.0).eval()
    else:
        old, new = (
            torch.tensor([True, True, True, False, False]),
            torch.tensor([False, False, False, True, True]),
        )
        expert = MLPCompressor(12, 16, 0.0, old, new).eval()
    with torch.no_grad():  # non-trivial biases and affine norm, so every folded term is exercised
        for p in expert.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    tokens = torch.randn(9, 5, 12) * 3 + 1
    torch.testing.assert_close(expert(tokens), expert.reference_forward(tokens))
    if kind == "attn":
        textbook = torch.softmax(expert.key(expert.norm(tokens)) @ expert.query / 16**0.5, dim=-1)
        torch.testing.assert_close(expert.attention(tokens), textbook)


@pytest.mark.parametrize("compressor", ["attn", "mlp"])
def test_linkedout_cached_catalogue_equals_encoding_raw_tokens(compressor):
    """Training reads tokens standardised once at start-up; serving a new item encodes raw tokens."""
    torch.manual_seed(0)
    features = random_features()
    enc = LinkedOutEncoder(features, 16, compressor=compressor, dropout=0.0).eval()
    items = torch.tensor([0, 7, 29])
    raw = features.tokens[items].float()
    torch.testing.assert_close(
        enc.encode_items(items).vectors, enc.content_vectors(raw), atol=2e-5, rtol=1e-4
    )
    torch.testing.assert_close(enc.layer_weights(items), enc.content_layer_weights(raw))
    torch.testing.assert_close(enc.layer_weights(items), enc.fuser.weights(enc.layer_vectors(raw)))


def test_gate_weights_explain_per_item():
    enc = LinkedOutEncoder(random_features(), 16)
    w = enc.layer_weights(torch.tensor([0, 1, 2]))
    assert w.shape == (3, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))


def test_mlp_compressor_uses_old_and_new_tokens():
    torch.manual_seed(0)
    features = random_features()
    enc = LinkedOutEncoder(features, 16, compressor="mlp").eval()
    base = enc.content_vectors(features.tokens.float())
    changed = features.tokens.float()
    changed[:, :, 3] += torch.randn_like(changed[:, :, 3])  # only the "new" token moves
    assert not torch.allclose(enc.content_vectors(changed), base)


def test_load_balancing_term_is_added_to_the_loss():
    from linkedout.models.base import TrainBatch

    torch.manual_seed(0)
    features = random_features()
    cfg = ModelConfig(item_encoder="linkedout", dim=16, balance=1.0, dropout=0.0)
    model = build_model(cfg, 30, 4, np.ones(30), features)
    batch = TrainBatch(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, 5]]))
    with_balance = model.loss(batch)
    model.item_encoder.balance = 0.0
    torch.manual_seed(0)
    without = model.loss(batch)
    assert with_balance.item() >= without.item() + 0.9  # importance loss is >= 1 (1 when balanced)


def test_unknown_items_do_not_use_their_untrained_id():
    features = random_features()
    known = torch.ones(30, dtype=torch.bool)
    known[7] = False
    cfg = ModelConfig(item_encoder="linkedout", dim=16, id_fusion=True)
    model = build_model(cfg, 30, 4, known.numpy().astype(int), features).eval()
    enc = model.item_encoder
    before = enc(torch.tensor([7]))
    with torch.no_grad():
        enc.fusion.embedding.weight[7] += 100.0
    torch.testing.assert_close(enc(torch.tensor([7])), before)  # the ID of a cold item plays no part


def content_walk(n_users=80, n_items=24, length=10, seed=0):
    """Users move to the item whose content is 'next' to the current one; item ids are shuffled so the
    walk is only visible through content."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)  # position in the walk -> item id
    users, items, ts = [], [], []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            users.append(u)
            items.append(order[(start + t) % n_items])
            ts.append(t)
    data = Interactions.from_arrays(np.array(users), np.array(items), np.array(ts))
    # content: an item's walk position as a smooth code in layer 2 (other layers are noise)
    pos = np.argsort(order)[data.item_ids]
    angle = 2 * np.pi * pos / n_items
    tokens = np.random.default_rng(1).normal(size=(n_items, 4, len(KINDS), 12)).astype(np.float32)
    for h in range(6):
        tokens[:, 2, :, 2 * h] = np.cos((h + 1) * angle)[:, None] * 3
        tokens[:, 2, :, 2 * h + 1] = np.sin((h + 1) * angle)[:, None] * 3
    features = ItemFeatures(
        torch.from_numpy(tokens).half(),
        torch.ones(n_items, dtype=torch.bool),
        KINDS,
        ("l0", "l1", "l2", "l3"),
    )
    return data, features


def test_linkedout_ranks_cold_items_from_content_and_id_only_cannot():
    seed_everything(0)
    data, features = content_walk(n_users=120, n_items=48)
    s = split(data, Protocol("cold", max_seq_len=6, cold_items=0.3))
    assert len(s.eval_set("test", "cold")) > 0
    results = {}
    for encoder in ("id", "linkedout"):
        seed_everything(0)
        model = build_model(
            ModelConfig(item_encoder=encoder, dim=32, dropout=0.0),
            s.n_items,
            6,
            s.train_item_counts(),
            features if encoder != "id" else None,
        )
        train(model, s, TrainConfig(epochs=40, patience=40, lr=5e-3, batch_size=32), progress=False)
        results[encoder] = evaluate(model, s, "test", subset="cold")["HR@10"]
        among = evaluate(model, s, "test", subset="cold-among-cold")
        # fewer candidates can only lift a target's rank; with <= 10 candidates every target is hit
        assert among["NDCG@10"] >= evaluate(model, s, "test", subset="cold")["NDCG@10"]
        assert len(s.cold_test_items) <= 10 and among["HR@10"] == 1.0
        if encoder == "linkedout":
            w = model.layer_weights(torch.arange(s.n_items)).mean(0)
            assert w.argmax().item() == 2  # the fuser found the informative layer
    assert results["linkedout"] > 0.9
    assert results["id"] < 0.5  # ~chance: 10 of the 48 items


def test_explanations_contributions_equal_one_by_one_occlusion():
    from linkedout.explain import explain_history

    torch.manual_seed(0)
    features = random_features()
    model = build_model(ModelConfig(item_encoder="linkedout", dim=16), 30, 6, np.ones(30), features).eval()
    history = np.array([4, 9, 2, 17])
    exp = explain_history(model, history, k=3)
    assert len(exp.recommendations) == 3
    full = model.score_all_items(torch.tensor([history.tolist()]))[0]
    for rec in exp.recommendations:
        assert rec.score == pytest.approx(full[rec.item].item(), abs=1e-5)
        for item, drop in rec.contributions:
            rest = [h for h in history.tolist() if h != item]
            without = model.score_all_items(torch.tensor([[-1, *rest]]))[0, rec.item].item()
            assert drop == pytest.approx(rec.score - without, abs=1e-4)
        assert sum(rec.layer_weights) == pytest.approx(1.0, abs=1e-5)
    assert sum(exp.user_layer_weights) == pytest.approx(1.0, abs=1e-5)
    assert len(exp.history_layer_weights) == 4


def test_full_softmax_loss_gathering_history_from_the_catalogue_equals_encoding_it_again():
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(item_encoder="linkedout", dim=16, id_fusion=True), 30, 6, np.ones(30), random_features()
    ).eval()  # no dropout: both paths must give the same number
    batch = TrainBatch(
        torch.tensor([[-1, 3, 4, 9], [2, 5, 7, 1]]), torch.tensor([[-1, 4, 9, 11], [5, 7, 1, 0]])
    )
    valid = (batch.inputs != -1) & (batch.targets != -1)
    states = model.encode_history(batch.inputs)[valid]  # history encoded on its own
    reference = F.cross_entropy(states @ model.item_encoder.all_items().T, batch.targets[valid])
    torch.testing.assert_close(model.loss(batch), reference)


def test_encoder_settings_shorthand():
    from linkedout.train.recipes import encoder_settings

    assert encoder_settings("linkedout") == {"item_encoder": "linkedout", "id_fusion": False}
    assert encoder_settings("linkedout+id") == {"item_encoder": "linkedout", "id_fusion": True}
    assert encoder_settings("dff")["id_fusion"] is True
    with pytest.raises(ValueError, match="bad encoder spec"):
        encoder_settings("linkedout+foo")


@pytest.mark.parametrize("encoder", ["linkedout", "dff", "id"])
def test_explain_user_and_layer_plot_read_the_model_contract(encoder, tmp_path):
    from linkedout.explain import explain_user, plot_layer_weights

    torch.manual_seed(0)
    data, features = content_walk(n_users=30, n_items=20)
    s = split(data, Protocol("microlens", max_seq_len=6, mask_history=True))
    config = ModelConfig(item_encoder=encoder, dim=16, dropout=0.0)
    model = build_model(config, s.n_items, 6, s.train_item_counts(), None if encoder == "id" else features)
    user = data.user_ids[3].item()
    exp = explain_user(model.eval(), s, user, k=4)
    assert exp.user == user and len(exp.recommendations) == 4
    assert set(r.item for r in exp.recommendations).isdisjoint(exp.history)  # history masked
    if encoder == "id":
        assert exp.layer_names == () and exp.user_layer_weights is None
        with pytest.raises(ValueError, match="no layer weights"):
            plot_layer_weights(model, exp, tmp_path / "w.png")
        return
    assert exp.layer_names == ("l0", "l1", "l2", "l3")
    assert sum(exp.user_layer_weights) == pytest.approx(1.0, abs=1e-5)
    png = plot_layer_weights(model, exp, tmp_path / "w.png", n_items=10)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def random_window_batch(n_items: int, rows: int, length: int, seed: int) -> TrainBatch:
    """Left-padded next-item windows with repeated items (the dedup must see duplicates and PAD)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, n_items, (rows, length + 1), generator=g)
    for r in range(rows):
        seq[r, : int(torch.randint(0, length, (1,), generator=g))] = -1
    return TrainBatch(seq[:, :-1].clone(), seq[:, 1:].clone())


@pytest.mark.parametrize(
    ("family", "encoder"),
    [
        ("sasrec", "id"),
        ("sasrec", "dff"),
        ("sasrec", "linkedout"),
        ("sasrec", "linkedout+id"),
        ("gru4rec", "linkedout"),
        ("twotower", "dff"),
        ("twotower", "caption"),
    ],
)
def test_in_batch_loss_encoding_distinct_items_once_equals_the_reference(family, encoder):
    """Fast path (one encode of unique(history U targets), PAD left out) vs reference (history with PAD
    as item 0, then the candidates encoded again): same loss and the same gradient on every parameter,
    with nothing random running (eval mode, dropout 0, ID dropout 0) and logQ on."""
    from linkedout.data.batches import PAD
    from linkedout.train.recipes import encoder_settings

    counts = np.arange(40) % 7  # some items untrained, uneven popularity for logQ
    config = ModelConfig(
        name=family,
        dim=16,
        dropout=0.0,
        id_dropout=0.0,
        loss="inbatch",
        logq=True,
        **encoder_settings(encoder),
    )
    torch.manual_seed(0)
    # eval mode: the caption/last/mean projections keep a fixed dropout of their own
    model = build_model(config, 40, 6, counts, random_features(40)).eval()
    for seed in range(3):
        batch = random_window_batch(40, rows=5, length=6, seed=seed)
        valid = (batch.inputs != PAD) & (batch.targets != PAD)
        results = []
        for path in (model.in_batch_loss, model.reference_in_batch_loss):
            model.zero_grad()
            loss, aux = path(batch, valid)
            assert aux is None
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((loss.detach(), grads))
        (fast, fast_grads), (reference, reference_grads) = results
        torch.testing.assert_close(fast, reference)
        assert fast_grads.keys() == reference_grads.keys() and fast_grads
        for name in fast_grads:
            torch.testing.assert_close(fast_grads[name], reference_grads[name], msg=name)


def test_in_batch_step_encodes_each_distinct_item_once_and_never_pad():
    from linkedout.data.batches import PAD

    torch.manual_seed(0)
    config = ModelConfig(item_encoder="linkedout", dim=16, loss="inbatch")
    model = build_model(config, 30, 6, np.ones(30), random_features()).train()
    encoded: list[torch.Tensor] = []
    original = model.item_encoder.encode_items
    model.item_encoder.encode_items = lambda items: encoded.append(items.clone()) or original(items)
    batch = TrainBatch(
        torch.tensor([[PAD, PAD, 3, 4, 3], [7, 3, 9, 9, 12]]),
        torch.tensor([[PAD, 3, 4, 3, 20], [3, 9, 9, 12, 4]]),
    )
    model.loss(batch)
    assert [t.tolist() for t in encoded] == [[3, 4, 7, 9, 12, 20]]  # item 0 (where PAD was clamped) absent
    encoded.clear()
    valid = (batch.inputs != PAD) & (batch.targets != PAD)
    model.reference_in_batch_loss(batch, valid)
    assert [t.tolist() for t in encoded] == [[0, 3, 4, 7, 9, 12], [3, 4, 9, 12, 20]]
