"""The pairwise families (bpr.py, lightgcn.py): contract, learning, fold-in, cold items, propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linkedout.data.batches import PAD
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import ModelConfig, build_model
from linkedout.models.base import TrainBatch
from linkedout.models.bpr import BPRMF, fold_in
from linkedout.models.features import ItemFeatures
from linkedout.models.lightgcn import LightGCN, dense_propagation
from linkedout.train.evaluate import evaluate
from linkedout.train.trainer import TrainConfig, seed_everything, train

GROUPS, ITEMS_PER_GROUP = 4, 10


def _planted_log(n_users: int = 80, per_user: int = 8, seed: int = 0) -> Interactions:
    """Users in 4 taste groups; each watches ``per_user`` items of its group's 10 in random order."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        group = u % GROUPS
        chosen = rng.choice(ITEMS_PER_GROUP, per_user, replace=False) + group * ITEMS_PER_GROUP
        users += [u] * per_user
        items += chosen.tolist()
        ts += list(range(per_user))
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(ts))


def _group_features(n_items: int, item_group: np.ndarray, seed: int = 0) -> ItemFeatures:
    """Caption-shaped features ``[N, 1, 1, 16]``: the item's group direction plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(GROUPS, 16))
    tokens = centres[item_group] + 0.3 * rng.normal(size=(n_items, 16))
    t = torch.as_tensor(tokens, dtype=torch.float16)[:, None, None, :]
    return ItemFeatures(t, torch.ones(n_items, dtype=torch.bool), ("old",), ("caption",))


def _build(name: str, s, features=None, **config) -> BPRMF:
    mc = ModelConfig(name=name, dim=16, **config)
    counts = s.train_item_counts()
    return build_model(mc, s.n_items, s.protocol.max_seq_len, counts, features, n_users=s.data.n_users)


MASKED = Protocol("t", max_seq_len=8, mask_history=True, ks=(5, 10))
FAST = TrainConfig(epochs=25, patience=25, lr=0.05, batch_size=16)


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_scores_every_item_for_known_and_anonymous_users(name):
    s = split(_planted_log(), MASKED)
    model = _build(name, s)
    model.fit(s)
    model.eval()
    history = torch.tensor([[PAD, PAD, 3, 5], [1, 2, 3, 4], [PAD, PAD, PAD, PAD]])
    known = model.score_all_items(history, torch.tensor([0, 5, 7]))
    anonymous = model.score_all_items(history, None)
    assert known.shape == anonymous.shape == (3, s.n_items)
    # -1 means "not a user the model knows": the same as no users at all
    torch.testing.assert_close(model.score_all_items(history, torch.tensor([-1, -1, -1])), anonymous)
    # a known user's scores come from its own row, not from the history it is shown
    other = model.score_all_items(torch.tensor([[PAD, 7, 8, 9]] * 3), torch.tensor([0, 5, 7]))
    torch.testing.assert_close(other, known)
    with pytest.raises(ValueError, match="out of range"):
        model.score_all_items(history, torch.tensor([0, 1, s.data.n_users]))


def test_pairwise_models_need_the_number_of_users():
    with pytest.raises(ValueError, match="n_users"):
        build_model(ModelConfig(name="bpr"), 10, 8)


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_loss_decreases_and_beats_random_on_planted_tastes(name):
    seed_everything(0)
    s = split(_planted_log(), MASKED)
    pop = build_model(ModelConfig(name="pop"), s.n_items, 8)
    pop.fit(s)
    model = _build(name, s)
    result = train(model, s, FAST, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    # 4 of a test user's group's 10 items are unseen, among 34 unseen items: chance HR@5 is ~0.15, and
    # popularity knows no groups either
    assert evaluate(pop, s, "test")["HR@5"] < 0.4
    assert evaluate(model, s, "test")["HR@5"] > 0.9


def test_fold_in_is_the_mean_of_the_history_item_vectors():
    s = split(_planted_log(), MASKED)
    model = _build("bpr", s)
    model.fit(s)
    model.eval()
    history = torch.tensor([[PAD, 2, 4, 6], [PAD, PAD, PAD, 9]])
    items = model.item_encoder.all_items()
    users = torch.stack([items[[2, 4, 6]].mean(0), items[9]])
    bias = model.item_bias  # every item has training events here: biases are used as they are
    expected = users @ items.T + bias
    torch.testing.assert_close(model.score_all_items(history, None), expected)
    torch.testing.assert_close(fold_in(history, items), users)
    # an empty history folds in to the zero vector: the biases alone
    empty = torch.full((1, 4), PAD)
    torch.testing.assert_close(model.score_all_items(empty, None)[0], bias.detach())


def test_a_user_without_training_pairs_is_folded_in():
    log = _planted_log()
    s = split(log, MASKED)
    model = _build("bpr", s)
    model.fit(s)
    model.trained_users[3] = False  # as if user 3 had no window to train on
    model.eval()
    history = torch.tensor([[PAD, 2, 4, 6]])
    torch.testing.assert_close(
        model.score_all_items(history, torch.tensor([3])), model.score_all_items(history, None)
    )


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_cold_items_are_scored_from_content(name):
    """Items held out of training entirely get no gradient; with a content item encoder they are still
    ranked by what they are: a user's own group's cold items above the other groups' cold items."""
    seed_everything(0)
    log = _planted_log(n_users=120)
    s = split(log, Protocol("t", max_seq_len=8, mask_history=True, cold_items=0.2, ks=(5, 10)))
    cold = np.union1d(s.cold_valid_items, s.cold_test_items)
    item_group = s.data.item_ids.astype(np.int64) // ITEMS_PER_GROUP
    features = _group_features(s.n_items, item_group)
    model = _build(name, s, features, item_encoder="caption", id_fusion=True, dropout=0.0)
    train(model, s, FAST, progress=False)
    model.eval()
    emb = model.final()
    # a cold item's vector is the content path's output (no ID, no neighbourhood; LightGCN: times alpha_0)
    tokens = features.tokens[torch.as_tensor(cold)].float()
    content = model.item_encoder.content_vectors(tokens) * model.new_item_scale
    torch.testing.assert_close(emb.items[torch.as_tensor(cold)], content)
    if emb.bias is not None:  # untrained bias: the trained items' mean
        assert torch.allclose(emb.bias[torch.as_tensor(cold)], emb.bias[model.trained_items].mean())
    users = torch.arange(s.data.n_users)
    scores = model.score_all_items(torch.full((len(users), 1), PAD), users)[:, torch.as_tensor(cold)]
    user_group = (users % GROUPS).numpy()
    same = torch.as_tensor(item_group[cold][None, :] == user_group[:, None])
    # mean score of a user's own group's cold items minus the others', over users: clearly positive
    margin = (scores * same).sum(1) / same.sum(1).clamp(min=1) - (scores * ~same).sum(1) / (~same).sum(1)
    assert (margin > 0).float().mean() > 0.9


@pytest.mark.parametrize("isolated_scale", [None, 0.5])
def test_lightgcn_propagation_equals_the_dense_normalised_adjacency(isolated_scale):
    rng = np.random.default_rng(0)
    n_users, n_items, dim = 7, 9, 5
    users = rng.integers(0, n_users - 1, 25)  # the last user has no edges
    items = rng.integers(0, n_items - 2, 25)  # the last two items have none (cold)
    users, items = np.append(users, users[0]), np.append(items, items[0])  # a repeated event
    encoder_config = ModelConfig(name="lightgcn", dim=dim, layers=3, isolated_scale=isolated_scale)
    model = build_model(encoder_config, n_items, 8, n_users=n_users)
    assert isinstance(model, LightGCN)
    model.set_graph(users, items)
    layer0 = torch.randn(n_users + n_items, dim, dtype=torch.float64)
    model.adjacency = model.adjacency.double()
    with torch.no_grad():
        fast = model.double().propagate(layer0)
    reference = dense_propagation(layer0, users, items, n_users, layers=3, isolated_scale=isolated_scale)
    torch.testing.assert_close(fast, reference)
    # nodes without edges: their layer-0 vector times the scale, by default alpha_0 = 1/4
    scale = 1 / 4 if isolated_scale is None else isolated_scale
    torch.testing.assert_close(fast[n_users - 1], layer0[n_users - 1] * scale)
    torch.testing.assert_close(fast[-2:], layer0[-2:] * scale)
    assert model.new_item_scale == scale


def test_lightgcn_isolated_graph_cuts_items_and_propagates_like_the_dense_reference():
    """Cold-start training: the step's graph has a random share of the items cut out (no edges left),
    the rest renormalised; propagating over it equals the dense reference built from the kept edges,
    and the cut items come out as a cold item does (layer 0 times the scale)."""
    rng = np.random.default_rng(1)
    n_users, n_items, dim = 8, 12, 4
    users, items = rng.integers(0, n_users, 60), rng.integers(0, n_items, 60)
    config = ModelConfig(name="lightgcn", dim=dim, layers=2, isolated_scale=0.5, isolate_items=0.4)
    model = build_model(config, n_items, 8, n_users=n_users)
    model.set_graph(users, items)
    torch.manual_seed(0)
    adjacency = model.isolated_graph()
    item_degree = adjacency.crow_indices().diff()[n_users:]
    had_edges = np.isin(np.arange(n_items), items)
    cut = had_edges & (item_degree == 0).numpy()
    assert 0 < cut.sum() < had_edges.sum()  # some items cut, some kept
    kept = ~cut[items]
    layer0 = torch.randn(n_users + n_items, dim, dtype=torch.float64)
    with torch.no_grad():
        fast = model.double().propagate(layer0, adjacency.double())
    reference = dense_propagation(layer0, users[kept], items[kept], n_users, layers=2, isolated_scale=0.5)
    torch.testing.assert_close(fast, reference)
    cut_rows = torch.as_tensor(np.flatnonzero(cut)) + n_users
    torch.testing.assert_close(fast[cut_rows], layer0[cut_rows] * 0.5)


@pytest.mark.parametrize(("field", "value"), [("isolated_scale", 0.0), ("isolate_items", 1.0)])
def test_lightgcn_rejects_bad_cold_item_settings(field, value):
    with pytest.raises(ValueError, match=f"lightgcn: {field}"):
        build_model(ModelConfig(name="lightgcn", dim=4, **{field: value}), 5, 8, n_users=3)


def test_lightgcn_caches_propagation_in_eval_and_drops_it_on_train():
    s = split(_planted_log(), MASKED)
    model = _build("lightgcn", s)
    model.fit(s)
    model.eval()
    history = torch.tensor([[PAD, 1, 2]])
    first = model.score_all_items(history, torch.tensor([0]))
    assert model.final() is model.final()  # computed once while in eval mode
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)
    torch.testing.assert_close(model.score_all_items(history, torch.tensor([0])), first)  # cached
    model.train()
    model.eval()
    assert not torch.allclose(model.score_all_items(history, torch.tensor([0])), first)


def test_bpr_loss_reads_the_valid_target_positions_of_the_windows():
    s = split(_planted_log(), MASKED)
    model = _build("bpr", s, negatives=3)
    inputs = torch.tensor([[PAD, PAD, 1, 2], [4, 5, 6, 7]])
    targets = torch.tensor([[PAD, PAD, 2, 3], [5, 6, 7, 8]])
    seen = {}

    def record(users, items):
        seen["users"], seen["items"] = users, items
        return torch.zeros(items.shape, requires_grad=True), None

    model.pair_scores = record
    model.loss(TrainBatch(inputs, targets, torch.tensor([10, 20])))
    assert seen["users"].tolist() == [10, 10, 20, 20, 20, 20]
    assert seen["items"][:, 0].tolist() == [2, 3, 5, 6, 7, 8]
    assert seen["items"].shape == (6, 4)  # a positive and 3 negatives each
    assert bool(model.trained_items[seen["items"][:, 1:]].all())  # negatives: items with training events


@pytest.mark.parametrize(
    ("name", "encoder", "isolated_scale"),
    [
        ("bpr", "id", None),
        ("bpr", "caption", None),
        ("lightgcn", "caption", None),
        ("lightgcn", "caption", 0.5),
    ],
)
def test_served_top_k_equals_the_model_for_known_users_and_anonymous_histories(
    tmp_path, name, encoder, isolated_scale
):
    """Export -> bundle on disk -> the HTTP service: a request naming a user of the training log gets
    that user's vector, an anonymous history the fold-in; both rank as ``score_all_items`` does. A new
    item encoded by the service from its tokens gets the row the model gives an untrained item."""
    from fastapi.testclient import TestClient

    from linkedout.export import bundle_from_model, training_histories
    from linkedout.serve.app import create_app
    from linkedout.serve.bundle import load_bundle
    from linkedout.serve.state import ServeConfig

    seed_everything(0)
    s = split(_planted_log(), Protocol("t", max_seq_len=8, mask_history=True, cold_items=0.1))
    features = None
    if encoder == "caption":
        features = _group_features(s.n_items, s.data.item_ids.astype(np.int64) // ITEMS_PER_GROUP)
    extra = {} if isolated_scale is None else {"isolated_scale": isolated_scale}
    model = _build(name, s, features, item_encoder=encoder, id_fusion=encoder != "id", **extra)
    model.fit(s)
    with torch.no_grad():  # untrained weights rank just as well for an equality test; make biases matter
        if model.item_bias is not None:
            model.item_bias.normal_()
        model.user_embedding.weight.normal_()
    model.trained_users[1] = False  # a known user the model has no vector for: folded in when served
    item_ids = [str(i) for i in s.data.item_ids.tolist()]
    cold = s.train_item_counts() == 0
    mc = ModelConfig(name=name, dim=16, item_encoder=encoder, id_fusion=encoder != "id", **extra)
    bundle = bundle_from_model(
        model, item_ids, max_len=8, model_config=mc.to_dict(), histories=training_histories(s), cold=cold
    )
    bundle.save(tmp_path / "bundle")
    app = create_app(ServeConfig(bundle=load_bundle(tmp_path / "bundle"), events=tmp_path / "e.sqlite"))
    model.eval()
    with TestClient(app) as client:
        for u in (0, 1, 5):
            user_id = str(s.data.user_ids[u])
            r = client.post("/v1/recommend", json={"user_id": user_id, "k": 5})
            assert r.status_code == 200, r.text
            seen = s.data.items[s.data.offsets[u] : s.data.offsets[u + 1]]
            history = torch.as_tensor(seen[-8:], dtype=torch.long)[None]
            ref = model.score_all_items(history, torch.tensor([u]))[0].clone()
            ref[torch.as_tensor(seen, dtype=torch.long)] = float("-inf")
            top = torch.topk(ref, 5)
            got = r.json()["items"]
            assert [it["item_id"] for it in got] == [item_ids[i] for i in top.indices.tolist()]
            np.testing.assert_allclose([it["score"] for it in got], top.values.numpy(), rtol=1e-4, atol=1e-5)
        history = [3, 11, 12]
        r = client.post("/v1/recommend", json={"history": [item_ids[i] for i in history], "k": 5})
        ref = model.score_all_items(torch.tensor([history]), None)[0].clone()
        ref[history] = float("-inf")
        assert [it["item_id"] for it in r.json()["items"]] == [
            item_ids[i] for i in torch.topk(ref, 5).indices
        ]
    if encoder == "caption":  # a new item through the service's content encoder = an untrained item's row
        from linkedout.serve.engine import Engine

        engine = Engine(load_bundle(tmp_path / "bundle"))
        row = int(np.flatnonzero(cold)[0])
        vector, _ = engine.encode_tokens(features.tokens[row].float().numpy())
        torch.testing.assert_close(vector, engine.index.vectors(torch.tensor([row]))[0], rtol=1e-4, atol=1e-5)
        # LightGCN: a new item is its content vector times the model's scale for items without edges
        # (the default is alpha_0 = 1/(K+1), K = 3 here), the same rule `score_all_items` uses
        if name == "lightgcn":
            assert model.new_item_scale == (0.25 if isolated_scale is None else isolated_scale)
            with torch.no_grad():
                content = model.item_encoder.content_vectors(features.tokens[row : row + 1].float())[0]
            torch.testing.assert_close(vector, content * model.new_item_scale, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(vector, model.final().items[row], rtol=1e-4, atol=1e-5)


def test_lightgcn_cold_twin_of_a_warm_item_scores_on_the_warm_scale():
    """A cold item whose content equals a popular warm item's, under the microlens recipe's cold-item
    settings (isolated scale + item isolation): for the users who like the original, the twin scores at
    least half of what the original does. LightGCN's formula alone (an item without edges keeps
    1/(K+1) of its layer 0) left it at ~0.42 of it here, which on ml-100k kept every cold item out of
    every top 10 (docs/benchmarks.md "LightGCN cold items")."""
    from linkedout.train.recipes import recipe

    mc, _ = recipe("lightgcn", "microlens")
    assert mc.isolated_scale is not None and mc.isolate_items > 0
    seed_everything(0)
    s = split(_planted_log(n_users=120), Protocol("t", max_seq_len=8, mask_history=True, cold_items=0.2))
    item_group = s.data.item_ids.astype(np.int64) // ITEMS_PER_GROUP
    features = _group_features(s.n_items, item_group)
    counts = s.train_item_counts()
    twin = int(np.flatnonzero(counts == 0)[0])
    group = item_group[twin]
    warm_same_group = np.flatnonzero((counts > 0) & (item_group == group))
    original = int(warm_same_group[np.argmax(counts[warm_same_group])])  # the group's most watched
    features.tokens[twin] = features.tokens[original]
    cold_settings = {"isolated_scale": mc.isolated_scale, "isolate_items": mc.isolate_items}
    model = _build(
        "lightgcn", s, features, item_encoder="caption", dropout=0.0, layers=mc.layers, **cold_settings
    )
    train(model, s, FAST, progress=False)
    model.eval()
    users = torch.as_tensor(np.flatnonzero(np.arange(s.data.n_users) % GROUPS == group))
    scores = model.score_all_items(torch.full((len(users), 1), PAD), users)
    assert bool((scores[:, original] > 0).all())
    assert float((scores[:, twin] / scores[:, original]).median()) > 0.5
    # and it ranks above every item of the other groups for those users
    others = torch.as_tensor(np.flatnonzero(item_group != group))
    assert float((scores[:, twin][:, None] > scores[:, others]).float().mean()) > 0.95
