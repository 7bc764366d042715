"""TIGER: semantic IDs (uniqueness, collisions, cold items from content), constrained beam search
against the exhaustive teacher-forced reference, learning a planted structure, saved runs."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.config import ModelConfig
from linkedout.data.batches import PAD
from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.models import build_model
from linkedout.models.base import TrainBatch
from linkedout.models.features import ItemFeatures
from linkedout.models.semantic_ids import (
    UNCODED,
    append_collision_code,
    content_item_vectors,
    residual_kmeans,
    semantic_ids,
)
from linkedout.models.tiger import TIGER, CodeTrie
from linkedout.train.evaluate import evaluate


def tiny_tiger(n_items=30, levels=2, codebook_size=8, beam=40, seed=0, max_len=6, **kw) -> TIGER:
    """An untrained TIGER over random item vectors, codes set, in eval mode (random weights: the
    beam-search tests hold for any weights)."""
    torch.manual_seed(seed)
    vectors = np.random.default_rng(seed).normal(size=(n_items, 8)).astype(np.float32)
    model = TIGER(
        n_items, max_len, levels=levels, codebook_size=codebook_size, dim=16, dropout=0.0, beam=beam, **kw
    )
    codes = semantic_ids(vectors, np.ones(n_items, dtype=bool), levels, codebook_size, seed=seed)
    model.codes.copy_(torch.from_numpy(codes))
    model._index()
    return model.eval()


HISTORIES = torch.tensor(
    [[PAD, PAD, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [PAD] * 6, [PAD, PAD, PAD, PAD, PAD, 0]]
)


# ---------------------------------------------------------------------- semantic IDs
def test_collision_code_numbers_items_sharing_a_tuple_and_makes_every_tuple_unique():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    out = append_collision_code(codes, codebook_size=4)
    np.testing.assert_array_equal(out[:, :2], codes)
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 0])  # item order within a shared tuple
    assert len({tuple(r) for r in out}) == len(out)
    with pytest.raises(ValueError, match=r"3 items share the semantic-ID prefix \[1, 2\].*--codebook-size"):
        append_collision_code(codes, codebook_size=2)


def test_semantic_ids_are_unique_deterministic_and_duplicates_collide():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors[10] = vectors[11] = vectors[12]  # identical content: the same quantised tuple
    coded = np.ones(200, dtype=bool)
    coded[[5, 6]] = False
    ids = semantic_ids(vectors, coded, levels=2, codebook_size=8, seed=3)
    assert ids.shape == (200, 3)
    assert (ids[[5, 6]] == UNCODED).all() and (ids[coded] >= 0).all() and (ids[coded] < 8).all()
    assert len({tuple(r) for r in ids[coded]}) == coded.sum()
    assert (ids[10, :2] == ids[11, :2]).all() and (ids[11, :2] == ids[12, :2]).all()
    assert sorted(ids[[10, 11, 12], 2]) == [0, 1, 2]
    np.testing.assert_array_equal(ids, semantic_ids(vectors, coded, 2, 8, seed=3))
    # each residual level splits the earlier levels' clusters further
    codes = residual_kmeans(vectors, 3, 8, seed=0)
    assert codes.shape == (200, 3) and codes.max() < 8
    distinct = [len({tuple(r) for r in codes[:, : level + 1]}) for level in range(3)]
    assert distinct[0] <= 8 < distinct[1] < distinct[2]


def _features(tokens: np.ndarray) -> ItemFeatures:
    n = len(tokens)
    return ItemFeatures(torch.from_numpy(tokens).half(), torch.ones(n, dtype=torch.bool), ("old",), ("L0",))


def _tiny_split(n_users=40, n_items=24, length=8, seed=0, cold=0.0):
    """Users walking the item ring (next = current + 1): a planted next-item structure."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            users.append(u)
            items.append((start + t) % n_items)
            times.append(t)
    data = Interactions.from_arrays(np.array(users), np.array(items), np.array(times))
    protocol = Protocol(name="tiny", min_user_interactions=3, max_seq_len=6, ks=(5, 10), cold_items=cold)
    return split(data, protocol)


def test_cold_items_get_codes_from_content_alone_and_id_runs_exclude_them():
    data_split = _tiny_split(cold=0.25)
    n = data_split.n_items
    counts = data_split.train_item_counts()
    cold = np.flatnonzero(counts == 0)
    assert len(cold) >= 2
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(n, 1, 1, 32)).astype(np.float32)
    warm = np.flatnonzero(counts > 0)[0]
    tokens[cold[0]] = tokens[warm]  # a cold item with a warm item's content: the same semantic prefix
    config = ModelConfig(
        name="tiger", item_encoder="caption", code_levels=2, codebook_size=8, beam=10, dim=16
    )
    model = build_model(config, n, 6, counts, _features(tokens))
    model.fit(data_split)
    codes = model.codes.numpy()
    assert (codes[cold] >= 0).all() and len({tuple(r) for r in codes}) == n
    np.testing.assert_array_equal(codes[cold[0], :2], codes[warm, :2])
    assert len(model.unscorable_items()) == 0
    # reachable at inference (every coded item), but not in the training softmax
    assert (model.trie.path[torch.as_tensor(cold)] >= 0).all()
    assert (model.train_trie.path[torch.as_tensor(cold)] < 0).all()

    id_model = build_model(
        ModelConfig(name="tiger", code_levels=2, codebook_size=8, beam=10, dim=16), n, 6, counts
    )
    id_model.fit(data_split)
    assert (id_model.codes[torch.as_tensor(cold)] == UNCODED).all()
    assert set(id_model.unscorable_items().tolist()) == set(cold.tolist())
    scores = id_model.eval().score_all_items(torch.tensor([[PAD, 0, 1, 2, 3, 4]]))
    assert torch.isneginf(scores[0, torch.as_tensor(cold)]).all()


def test_content_vectors_pool_layers_and_tokens():
    tokens = torch.randn(5, 3, 2, 8)
    v = content_item_vectors(tokens)
    assert v.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------- beam search vs exhaustive
@pytest.mark.parametrize("exclude_history", [False, True])
def test_beam_as_wide_as_the_catalogue_gives_the_exhaustive_scores(exclude_history):
    model = tiny_tiger(beam=40)
    model.exclude_history = exclude_history
    with torch.no_grad():
        exhaustive = model.exhaustive_scores(HISTORIES)
        beam = model.score_all_items(HISTORIES)
    assert torch.equal(torch.isfinite(beam), torch.isfinite(exhaustive))
    torch.testing.assert_close(beam, exhaustive, atol=1e-5, rtol=1e-5)
    # item probabilities over the catalogue sum to one (history removed: less)
    total = exhaustive.exp().sum(1)
    if exclude_history:
        assert (total[:2] < 1).all()
    else:
        torch.testing.assert_close(total, torch.ones(len(HISTORIES)))
    assert torch.isneginf(exhaustive[0, [3, 4, 5, 6]]).all() == exclude_history


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_beam_as_wide_as_every_prefix_level_returns_the_exhaustive_top_items(seed):
    """Beam search is exact by construction when the beam never has to drop a prefix before the
    last level: then it returns the exhaustive top-K."""
    model = tiny_tiger(n_items=40, levels=1, codebook_size=16, seed=seed)
    n_prefixes = int(model.trie.allowed[0].sum())  # depth-1 nodes: the only internal level below the root
    k = max(n_prefixes, 10)
    assert k < 40
    with torch.no_grad():
        items, scores = model.beam_search(HISTORIES, beam=k)
        exhaustive = model.exhaustive_scores(HISTORIES)
    top = exhaustive.topk(k, dim=1)
    torch.testing.assert_close(scores, top.values, atol=1e-5, rtol=1e-5)
    for row in range(len(HISTORIES)):
        assert set(items[row].tolist()) == set(top.indices[row].tolist())


@pytest.mark.parametrize("beam", [1, 3, 7])
def test_any_beam_returns_valid_distinct_items_with_their_exact_log_probs(beam):
    model = tiny_tiger(n_items=30, levels=2, codebook_size=8, seed=4)
    with torch.no_grad():
        items, scores = model.beam_search(HISTORIES, beam=beam)
        exhaustive = model.exhaustive_scores(HISTORIES)
    assert (items >= 0).all()
    for row in range(len(HISTORIES)):
        assert len(set(items[row].tolist())) == beam
        torch.testing.assert_close(scores[row], exhaustive[row, items[row]], atol=1e-5, rtol=1e-5)
        assert (scores[row][:-1] >= scores[row][1:]).all()


def test_constrained_decoding_never_yields_a_tuple_outside_the_catalogue():
    """Weights pushed towards codes no catalogue tuple uses: the trie still decides."""
    n = 5  # 5 items on a codebook of 8: first codes 5..7 continue no catalogue tuple
    model = tiny_tiger(n_items=n, levels=2, codebook_size=8, beam=20, seed=5)
    used = set(model.codes[:, 0].tolist())
    assert len(used) < 8
    histories = torch.where(HISTORIES >= 0, HISTORIES % n, PAD)
    with torch.no_grad():
        bias = model.head.bias.view(3, 8)
        bias[0] = -50.0
        bias[0, [c for c in range(8) if c not in used]] = 50.0  # the model "wants" unused first codes
        items, scores = model.beam_search(histories)
    catalogue = {tuple(r) for r in model.codes.tolist()}
    for row in range(len(histories)):
        found = items[row][items[row] >= 0]
        assert len(found) == n and len(set(found.tolist())) == n  # the whole catalogue, nothing else
        assert all(tuple(model.codes[i].tolist()) in catalogue for i in found)
        assert torch.isneginf(scores[row][items[row] < 0]).all()  # beam 20 > 5 items: empty slots


def test_trie_counts_items_below_each_prefix():
    codes = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 2, 0], [3, 0, 0], [UNCODED] * 3])
    trie = CodeTrie(codes, torch.ones(5, dtype=torch.bool), codebook_size=4)
    assert trie.allowed[0].tolist() == [True, False, False, True]
    node = int(trie.child[0, 0])
    assert int(trie.below[0]) == 4 and int(trie.below[node]) == 3
    assert int(trie.child[int(trie.child[node, 1]), 1]) == 1  # the last level's child is the item
    assert (trie.path[4] == -1).all()


def test_code_paths_explain_each_level():
    model = tiny_tiger(n_items=30, levels=2, codebook_size=8)
    items, _ = model.beam_search(HISTORIES[:1], beam=3)
    paths = model.code_paths(HISTORIES[0], items[0])
    with torch.no_grad():
        exhaustive = model.exhaustive_scores(HISTORIES[:1])[0]
    for item, steps in zip(items[0].tolist(), paths, strict=True):
        assert [s.code for s in steps] == model.codes[item].tolist()
        assert sum(s.log_prob for s in steps) == pytest.approx(exhaustive[item].item(), abs=1e-5)
        shares = [s.items_sharing_prefix for s in steps]
        assert shares[-1] == 1 and shares == sorted(shares, reverse=True)
        assert shares[0] == int((model.codes[:, 0] == steps[0].code).sum())


# ---------------------------------------------------------------------- learning, runs
def test_loss_decreases_and_the_planted_next_item_comes_first():
    data_split = _tiny_split(n_users=60, n_items=24, length=10)
    n = data_split.n_items
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(n, 1, 1, 16)).astype(np.float32)
    config = ModelConfig(
        name="tiger", item_encoder="caption", code_levels=2, codebook_size=6, beam=10, dim=32, dropout=0.0
    )
    torch.manual_seed(0)
    model = build_model(config, n, 6, data_split.train_item_counts(), _features(tokens))
    model.fit(data_split)
    item_of = data_split.data.item_ids
    ring = torch.as_tensor(np.argsort(item_of))  # dataset index of raw item r
    seqs = (torch.arange(6)[None] + torch.randint(0, n, (64, 1))) % n
    window = ring[seqs]
    batch = TrainBatch(window[:, :-1], window[:, 1:])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    first = model.loss(batch).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
    with torch.no_grad():
        items, _ = model.eval().beam_search(window[:8, :-1])
    assert (items[:, 0] == window[:8, -1]).float().mean() >= 0.75


def test_saved_run_reevaluates_to_the_same_metrics_and_export_refuses(tmp_path):
    from linkedout.export import export_bundle
    from linkedout.serve.bundle import BundleError
    from linkedout.train.recipes import recipe
    from linkedout.train.run import DatasetSpec, load_run, run_experiment

    rng = np.random.default_rng(0)
    lines = ["user,item,ts"]
    for u in range(50):
        start = rng.integers(30)
        lines += [f"{u},{(start + t) % 30},{t}" for t in range(9)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    protocol = Protocol(name="recbole", max_seq_len=8, cold_items=0.2)
    mc, tc = recipe("tiger", "recbole", code_levels=2, codebook_size=8, dim=16, epochs=2, batch_size=16)
    run_dir = tmp_path / "run"
    result = run_experiment(DatasetSpec(path=str(log)), protocol, mc, tc, run_dir=run_dir, progress=False)
    model, data_split, saved = load_run(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["model_config"]["beam"] == 20
    # ID-only semantic IDs come from training events: cold items have none, are excluded, never ranked
    cold = np.union1d(data_split.cold_valid_items, data_split.cold_test_items)
    assert np.isin(cold, data_split.excluded_items).all() and result.data["excluded_items"] >= len(cold)
    assert result.metrics_cold["HR@20"] == 0.0 and result.metrics["HR@20"] > 0
    assert evaluate(model, data_split, "test") == pytest.approx(result.metrics, abs=0)
    assert evaluate(model, data_split, "valid") == pytest.approx(saved.valid_metrics, abs=0)
    with pytest.raises(BundleError, match="tiger"):
        export_bundle(run_dir, tmp_path / "bundle")
    shown = CliRunner().invoke(
        app, ["explain", "--run", str(run_dir), "--user", "3", "--k", "3"], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0, shown.output
    assert "code path" in shown.output


def test_a_beam_narrower_than_the_protocols_k_is_refused():
    data_split = _tiny_split()
    model = build_model(
        ModelConfig(name="tiger", beam=5), data_split.n_items, 6, data_split.train_item_counts()
    )
    with pytest.raises(ValueError, match="--beam 5 is smaller than the largest k"):
        model.fit(data_split)


def test_explanations_carry_code_paths_and_finite_occlusion_drops():
    """Occluding a history item can push a recommended item out of the beam: the explainer reads exact
    log-probabilities (`score_items`), not the beam's -inf."""
    from linkedout.explain import explain_history

    model = tiny_tiger(n_items=30, levels=2, codebook_size=8, beam=20)
    history = np.array([1, 2, 3, 4, 5, 6])
    explanation = explain_history(model, history, k=5)
    with torch.no_grad():
        exact = model.exhaustive_scores(torch.as_tensor(history)[None])[0]
    for rec in explanation.recommendations:
        assert all(np.isfinite(drop) for _, drop in rec.contributions)
        assert [s["code"] for s in rec.generation_path] == model.codes[rec.item].tolist()
        assert rec.score == pytest.approx(exact[rec.item].item(), abs=1e-5)
