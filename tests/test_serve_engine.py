"""Serving core against references: the micro-batched bundle path vs the full model, FAISS vs exact
top-k, online additions, and the bundle's save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linkedout.explain import explain_history
from linkedout.serve.bundle import BundleError, load_bundle
from linkedout.serve.engine import Engine, RecRequest
from linkedout.serve.index import ExactIndex, make_index
from linkedout.synthetic import synthetic_bundle

NONE = np.zeros(0, dtype=np.int64)


def reference_topk(model, history: np.ndarray, k: int, exclude: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The plain path: the whole trained model on one history, full sort."""
    with torch.no_grad():
        scores = model.score_all_items(torch.as_tensor(history)[None])[0].clone()
    scores[torch.as_tensor(exclude, dtype=torch.long)] = float("-inf")
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return order.tolist(), scores[order].numpy()


@pytest.mark.parametrize("user", ["sasrec", "gru4rec", "mean"])
@pytest.mark.parametrize("item", ["id", "linkedout", "dff"])
def test_batched_bundle_path_equals_the_full_model(tmp_path, user, item):
    bundle, model = synthetic_bundle(50, item_encoder=item, user_encoder=user, max_len=12, seed=3)
    bundle.save(tmp_path / "b")
    engine = Engine(load_bundle(tmp_path / "b"))  # through disk: the saved bundle is what serves
    rng = np.random.default_rng(0)
    requests = []
    for n in (1, 3, 12, 7, 2):  # different lengths in one micro-batch
        h = rng.choice(50, size=n, replace=False).astype(np.int64)
        requests.append(RecRequest(h, np.unique(h) if n % 2 else NONE, k=6, explain=False))
    results = engine.recommend_batch(requests)
    for r, res in zip(requests, results, strict=True):
        rows, scores = reference_topk(model, r.history, 6, r.exclude)
        np.testing.assert_allclose(res.scores, scores, rtol=1e-4, atol=1e-5)
        assert res.rows == rows


@pytest.mark.parametrize("kind", ["exact-bf16", "exact-int8"])
def test_low_precision_indexes_serve_what_the_float32_index_serves(kind):
    """Through the engine (user encoder, exclusions, micro-batch), on a catalogue large enough for the
    candidate path (not the float32 fallback): the same rows and scores as ``exact``."""
    n = 60_000  # at 20k items the int8 bound admits more than an eighth of the catalogue: float32 fallback
    bundle, _ = synthetic_bundle(n, item_encoder="id", max_len=20, seed=5, titles=[None] * n)
    exact, low = Engine(bundle, "exact"), Engine(bundle, kind)
    rng = np.random.default_rng(1)
    requests = []
    for length in (1, 20, 7, 13):
        h = rng.choice(n, size=length, replace=False).astype(np.int64)
        requests.append(RecRequest(h, np.unique(h), k=10, explain=False))
    for want, got in zip(exact.recommend_batch(requests), low.recommend_batch(requests), strict=True):
        assert got.rows == want.rows
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    assert low.index.full_rescores == 0


def test_occlusion_explanations_equal_linkedout_explain():
    bundle, model = synthetic_bundle(30, max_len=10, seed=1)
    engine = Engine(bundle)
    h = np.array([4, 8, 15, 16, 23], dtype=np.int64)
    res = engine.recommend_batch([RecRequest(h, NONE, k=4, explain=True, explain_top=5)])[0]
    ref = explain_history(model, h, k=4)
    assert res.rows == [r.item for r in ref.recommendations]
    for got, want in zip(res.contributions, ref.recommendations, strict=True):
        assert [i for i, _ in got] == [i for i, _ in want.contributions]
        np.testing.assert_allclose([d for _, d in got], [d for _, d in want.contributions], atol=1e-4)
    np.testing.assert_allclose(
        engine.layer_weights(res.rows[0]), ref.recommendations[0].layer_weights, atol=1e-6
    )


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(5, 300),
    k=st.integers(1, 20),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_exact_index_equals_a_loop_over_users(n, k, batch, seed):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n, 8, generator=g)
    blocked = torch.rand(n, generator=g) < 0.1
    users = torch.randn(batch, 8, generator=g)
    exclude = [np.unique(np.random.default_rng(seed + b).integers(0, n, size=3)) for b in range(batch)]
    scores, rows = ExactIndex(matrix, blocked).search(users, k, exclude)
    for b in range(batch):
        s = users[b] @ matrix.T
        s[blocked] = float("-inf")
        s[torch.as_tensor(exclude[b])] = float("-inf")
        want = torch.sort(s, descending=True).values[: min(k, n)]
        torch.testing.assert_close(scores[b], want)
        finite = torch.isfinite(scores[b])
        torch.testing.assert_close(s[rows[b][finite]], scores[b][finite])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_indexes_against_exact(kind):
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(4000, 32, generator=g)
    blocked = torch.zeros(4000, dtype=torch.bool)
    blocked[:50] = True
    users = torch.randn(64, 32, generator=g)
    exclude = [np.arange(50, 60)] * 64
    exact_s, exact_r = ExactIndex(matrix, blocked).search(users, 10, exclude)
    fast = make_index(matrix, blocked, kind, nprobe=32, ef_search=256)
    s, r = fast.search(users, 10, exclude)
    assert not np.isin(r.numpy(), np.arange(60)).any()  # blocked and excluded never come back
    if kind == "flat":
        assert (r == exact_r).all()
        torch.testing.assert_close(s, exact_s, rtol=1e-4, atol=1e-4)
    else:  # approximate: most of the true top-10 is found
        recall = np.mean([len(set(r[b].tolist()) & set(exact_r[b].tolist())) / 10 for b in range(64)])
        assert recall >= 0.9, recall
    # online additions are searchable at once
    new = users[:1] * 10  # very aligned with user 0: must be its first result
    row = fast.add(new)
    assert row == 4000 and fast.search(users[:1], 1, None)[1][0, 0].item() == 4000


def test_exact_index_growth_keeps_rows_and_publishes_atomically():
    index = ExactIndex(torch.eye(4))
    first = index.vectors(torch.tensor([0, 3])).clone()
    for i in range(100):  # past the initial capacity: reallocations
        assert index.add(torch.full((1, 4), float(i))) == 4 + i
    assert index.size == 104
    torch.testing.assert_close(index.vectors(torch.tensor([0, 3])), first)
    assert index.search(torch.ones(1, 4), 1)[1].item() == 103


def test_engine_add_item_and_encode_tokens_match_the_catalogue_rows():
    bundle, model = synthetic_bundle(20, seed=2)
    engine = Engine(bundle)
    tokens = model.features.tokens[5].float().numpy()
    vector, weights = engine.encode_tokens(tokens)
    torch.testing.assert_close(vector, bundle.item_matrix[5], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(weights, bundle.layer_weights[5].numpy(), atol=1e-6)
    row = engine.add_item("new", vector, weights, "new clip")
    assert row == 20 and engine.row_of["new"] == 20 and engine.ids[20] == "new"
    with pytest.raises(KeyError):
        engine.add_item("new", vector, weights)


def test_bundle_round_trip_keeps_everything(tmp_path):
    bundle, _ = synthetic_bundle(15, thumbnails={3: b"\xff\xd8jpeg"})
    bundle.save(tmp_path / "b")
    with pytest.raises(FileExistsError):
        bundle.save(tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    torch.testing.assert_close(back.item_matrix, bundle.item_matrix)
    torch.testing.assert_close(back.layer_weights, bundle.layer_weights)
    assert back.item_ids == bundle.item_ids and back.titles == bundle.titles
    assert back.thumbnails == {3: b"\xff\xd8jpeg"} and back.meta == bundle.meta
    assert back.can_encode_items and set(back.item_state) == set(bundle.item_state)


def test_explain_window_occludes_only_the_most_recent_items():
    bundle, _ = synthetic_bundle(30, max_len=10, seed=1)
    engine = Engine(bundle)
    h = np.array([4, 8, 15, 16, 23], dtype=np.int64)
    full = engine.recommend_batch([RecRequest(h, NONE, k=3, explain_top=5)])[0]
    window = engine.recommend_batch([RecRequest(h, NONE, k=3, explain_top=5, explain_window=2)])[0]
    assert window.rows == full.rows
    for got, want in zip(window.contributions, full.contributions, strict=True):
        assert {i for i, _ in got} == {16, 23}
        drops = dict(want)
        for i, d in got:
            assert d == pytest.approx(drops[i], abs=1e-5)


def test_a_bundle_whose_model_config_this_version_cannot_read_is_refused_when_loaded(tmp_path):
    bundle, _ = synthetic_bundle(10)
    bundle.meta["model_config"]["new_knob"] = 3  # e.g. written by a newer linkedout
    bundle.save(tmp_path / "b")
    with pytest.raises(BundleError, match="new_knob"):
        load_bundle(tmp_path / "b")
