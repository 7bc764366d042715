"""The content two-tower family: an order-free user tower, in-batch softmax with logQ, cold items
ranked from content alone, and served from the bundle exactly as the model scores."""

from __future__ import annotations

import numpy as np
import torch

from linkedout.config import ModelConfig, TrainConfig
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import build_model
from linkedout.models.features import ItemFeatures
from linkedout.models.two_tower import UserTower
from linkedout.serve.engine import Engine, RecRequest
from linkedout.synthetic import synthetic_bundle
from linkedout.train.evaluate import evaluate
from linkedout.train.recipes import recipe
from linkedout.train.trainer import seed_everything, train

KINDS = ("video", "prompt")


def test_user_tower_starts_as_the_running_mean_and_its_recency_pooling_equals_a_loop():
    tower = UserTower(8, max_len=5)
    x = torch.randn(2, 5, 8)
    valid = torch.tensor([[False, True, True, True, True], [True] * 5])
    v = valid[..., None].float()
    torch.testing.assert_close(tower(x, valid), (x * v).cumsum(1) / v.cumsum(1).clamp(min=1) * v)
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p))
    w = tower.pooling_weights(valid)
    for b in range(2):
        for t in range(5):
            ref = torch.zeros(5)
            if valid[b, t]:
                for s in range(t + 1):
                    if valid[b, s]:
                        ref[s] = torch.exp(tower.recency[t - s])
                ref = ref / ref.sum()
            torch.testing.assert_close(w[b, t], ref)
    # more left padding leaves the last position alone: what serving (padded per batch) relies on
    padded = torch.cat([torch.zeros(2, 3, 8), x], 1)
    pvalid = torch.cat([torch.zeros(2, 3, dtype=torch.bool), valid], 1)
    wide = UserTower(8, max_len=8)
    wide.load_state_dict(
        {**tower.state_dict(), "recency": torch.cat([tower.recency.detach(), torch.zeros(3)])}
    )
    torch.testing.assert_close(wide(padded, pvalid)[:, -1], tower(x, valid)[:, -1])


def test_the_recipe_trains_by_in_batch_softmax_with_logq():
    mc, _ = recipe("twotower", "recbole")
    assert (mc.loss, mc.logq) == ("inbatch", True)


def taste_clusters(n_users=160, n_clusters=4, per_cluster=12, length=8, seed=0):
    """Each user watches random items of one cluster; an item's content (layer 1) says its cluster,
    so an item nobody trained on is still recognisably 'like' a user's history."""
    rng = np.random.default_rng(seed)
    n_items = n_clusters * per_cluster
    users, items, ts = [], [], []
    for u in range(n_users):
        c = u % n_clusters
        for t, i in enumerate(rng.choice(per_cluster, size=length, replace=False)):
            users.append(u)
            items.append(c * per_cluster + i)
            ts.append(t)
    data = Interactions.from_arrays(np.array(users), np.array(items), np.array(ts))
    cluster = data.item_ids // per_cluster
    tokens = rng.normal(size=(n_items, 2, len(KINDS), 8)).astype(np.float32)
    tokens[:, 1, :, :n_clusters] = 4 * np.eye(n_clusters)[cluster][:, None, :]
    features = ItemFeatures(
        torch.from_numpy(tokens).half(), torch.ones(n_items, dtype=torch.bool), KINDS, ("l0", "l1")
    )
    return data, features


def test_two_tower_ranks_cold_items_from_content_and_id_only_cannot():
    data, features = taste_clusters()
    s = split(data, Protocol("cold", max_seq_len=8, mask_history=True, cold_items=0.25))
    assert len(s.eval_set("test", "cold")) > 10
    hit = {}
    for encoder in ("id", "mean"):
        seed_everything(0)
        mc, _ = recipe("twotower", "recbole", item_encoder=encoder, dim=16, dropout=0.0)
        model = build_model(mc, s.n_items, 8, s.train_item_counts(), features if encoder != "id" else None)
        train(model, s, TrainConfig(epochs=25, patience=25, lr=5e-3, batch_size=32), progress=False)
        hit[encoder] = evaluate(model, s, "test", subset="cold")["HR@10"]
    # 12 items per cluster, ~3 of them cold: content puts a cold target among the cluster's top 10
    assert hit["mean"] > 0.8, hit
    assert hit["id"] < 0.4, hit  # an untrained ID says nothing about the item


def test_served_two_tower_equals_the_model_and_encodes_new_items_from_content(tmp_path):
    bundle, model = synthetic_bundle(30, item_encoder="mean", user_encoder="twotower", max_len=10, seed=2)
    with torch.no_grad():  # leave the zero-initialised residual: the MLP must take part
        for p in model.user_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bundle, model = synthetic_bundle(model=model, max_len=10)
    bundle.save(tmp_path / "b")
    from linkedout.serve.bundle import load_bundle

    engine = Engine(load_bundle(tmp_path / "b"))
    h = np.array([3, 9, 4, 27], dtype=np.int64)
    res = engine.recommend_batch([RecRequest(h, np.zeros(0, dtype=np.int64), k=5, explain=False)])[0]
    with torch.no_grad():
        scores = model.score_all_items(torch.as_tensor(h)[None])[0]
    want = torch.topk(scores, 5)
    assert res.rows == want.indices.tolist()
    np.testing.assert_allclose(res.scores, want.values.numpy(), rtol=1e-4, atol=1e-5)
    # the item tower alone encodes an item from its tokens: what a new item gets without retraining
    tokens = model.features.tokens[7].float()
    vec, _ = engine.encode_tokens(tokens.numpy())
    torch.testing.assert_close(
        vec.flatten(), model.item_encoder.all_items()[7].detach(), atol=1e-4, rtol=1e-4
    )


def test_two_tower_config_round_trips():
    config = ModelConfig(name="twotower", item_encoder="caption", loss="inbatch", logq=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
