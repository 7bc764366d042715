"""Fast retrieval paths against their references: the two-stage top-k against ``torch.topk``, the
bfloat16 and int8 indexes with float32 re-rank against float32 scoring (same rows, same scores), and
IVF-PQ with re-rank against exact (recall, exact scores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linkedout.serve.index import (
    ExactIndex,
    FaissIndex,
    Int8Scores,
    bf16_error_bound,
    check_bf16_error_model,
    chunked_topk,
    make_index,
)


def fp32_reference(matrix, users, k, blocked=None, exclude=None):
    """The plain path: every score in float32, masked, one full sort per user."""
    scores = users @ matrix.T
    if blocked is not None:
        scores[:, blocked] = float("-inf")
    for b, rows in enumerate(exclude or []):
        scores[b, torch.as_tensor(rows, dtype=torch.long)] = float("-inf")
    return torch.sort(scores, dim=1, descending=True).values[:, : min(k, matrix.shape[0])], scores


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 30_000),
    k=st.integers(1, 30),
    batch=st.integers(1, 5),
    ties=st.booleans(),
    masked=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_chunked_topk_equals_torch_topk(n, k, batch, ties, masked, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, n, generator=g)
    if ties:  # few distinct values: the threshold selects many chunks (and the fallback runs)
        scores = scores.round()
    scores[torch.rand(batch, n, generator=g) < masked] = float("-inf")
    values, cols = chunked_topk(scores, k)
    want = torch.topk(scores, min(k, n), dim=1).values
    torch.testing.assert_close(values, want)
    torch.testing.assert_close(scores.gather(1, cols), values)  # each returned row has that score
    assert all(len(set(row)) == len(row) for row in cols.tolist())  # no row twice


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40_000),
    dim=st.sampled_from([8, 32, 64]),
    k=st.integers(1, 20),
    batch=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    shift=st.sampled_from([0.0, 2.0]),
    precision=st.sampled_from(["bf16", "int8"]),
    seed=st.integers(0, 2**16),
)
def test_low_precision_index_returns_the_float32_top_k_with_float32_scores(
    n, dim, k, batch, scale, shift, precision, seed
):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n, dim, generator=g) * scale
    users = torch.randn(batch, dim, generator=g) + shift  # shifted: int8 quantises the batch asymmetrically
    blocked = torch.rand(n, generator=g) < 0.05
    exclude = [np.unique(np.random.default_rng(seed + b).integers(0, n, size=5)) for b in range(batch)]
    want, scores = fp32_reference(matrix, users, k, blocked, exclude)
    got_s, got_r = ExactIndex(matrix, blocked, precision=precision).search(users, k, exclude)
    torch.testing.assert_close(got_s, want, rtol=1e-5, atol=1e-5 * scale)
    finite = torch.isfinite(got_s)
    torch.testing.assert_close(scores.gather(1, got_r)[finite], got_s[finite], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_rerank_fixes_orders_that_low_precision_scores_get_wrong(precision):
    """A cluster of near-duplicates whose scores differ by less than bfloat16 / int8 resolves, among
    random items: plain low-precision scoring mis-orders the cluster, the re-rank (not the float32
    fallback) returns exactly the float32 order. Fails without the re-rank."""
    g = torch.Generator().manual_seed(0)
    n, dim = 200_000, 64
    matrix = torch.randn(n, dim, generator=g)
    base = torch.randn(dim, generator=g)
    cluster = torch.randperm(n, generator=g)[:100]
    matrix[cluster] = base + 1e-3 * torch.randn(100, dim, generator=g)
    users = base[None] + 0.1 * torch.randn(4, dim, generator=g)
    want_s, _ = fp32_reference(matrix, users, 10)
    want_r = torch.topk(users @ matrix.T, 10, dim=1).indices
    index = ExactIndex(matrix, precision=precision)
    plain = torch.topk(index._view.low.scores(users).float(), 10, dim=1).indices
    assert (plain != want_r).any(), "the data should defeat plain low-precision scoring"
    got_s, got_r = index.search(users, 10)
    assert index.full_rescores == 0  # the candidates path ran
    assert (got_r == want_r).all()
    torch.testing.assert_close(got_s, want_s)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_index_after_online_additions_and_growth(precision):
    g = torch.Generator().manual_seed(1)
    matrix = torch.randn(20_000, 16, generator=g)
    index, reference = ExactIndex(matrix, precision=precision), ExactIndex(matrix)
    for i in range(5):  # past the online segment's headroom (scored in float32, beside the base)
        new = torch.randn(1500, 16, generator=g) * (3.0 if i == 4 else 1.0)  # the last ones raise max_norm
        assert index.add(new) == reference.add(new)
    users = torch.randn(8, 16, generator=g)
    s, r = index.search(users, 10)
    ref_s, ref_r = reference.search(users, 10)
    assert (r == ref_r).all()
    torch.testing.assert_close(s, ref_s)
    torch.testing.assert_close(
        index.vectors(torch.tensor([0, 25_000])), reference.vectors(torch.tensor([0, 25_000]))
    )


def test_bf16_error_bound_holds_on_this_machine_and_refuses_a_wrong_one():
    for dim in (8, 64, 384):
        check_bf16_error_model(dim, bf16_error_bound(dim))
    with pytest.raises(RuntimeError, match="use --index exact"):
        check_bf16_error_model(64, 1e-6)  # bfloat16 cannot be this accurate


def test_int8_error_bound_holds_on_this_machine_and_a_wrong_one_is_refused(monkeypatch):
    """The bound is checked when the index is built (users of several kinds, the index's own rows);
    the test then checks it on other data, including rows of very different scales and near-zero
    rows, and that a bound made too tight is refused by the build-time check."""
    g = torch.Generator().manual_seed(3)
    matrix = torch.cat([torch.randn(3000, 64, generator=g), 1e-4 * torch.randn(500, 64, generator=g)])
    matrix[:100] *= 30.0
    matrix[100] = 0.0
    scorer = Int8Scores(matrix)
    for users in (torch.randn(16, 64, generator=g), torch.rand(3, 64, generator=g) * 9 - 1):
        err = (scorer.scores(users).double() - users.double() @ matrix.double().T).abs()
        assert (err <= scorer.error(users).double()).all()
    monkeypatch.setattr(Int8Scores, "error", lambda self, users: torch.full((len(users), 1), 1e-6))
    with pytest.raises(RuntimeError, match="use --index exact"):
        Int8Scores(matrix)


def test_unknown_precision_and_index_kind_are_refused():
    with pytest.raises(ValueError, match="precision"):
        ExactIndex(torch.zeros(3, 4), precision="int4")
    with pytest.raises(ValueError, match="exact-bf16"):
        make_index(torch.zeros(3, 4), kind="exact-int3")


def test_ivfpq_with_rerank_finds_most_of_the_exact_top_10_with_exact_scores():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(20_000, 32, generator=g)
    users = torch.randn(64, 32, generator=g)
    blocked = torch.zeros(20_000, dtype=torch.bool)
    blocked[:50] = True
    exclude = [np.arange(50, 60)] * 64
    _, exact_r = ExactIndex(matrix, blocked).search(users, 10, exclude)
    pq = make_index(
        matrix, blocked, "ivfpq", nprobe=80, pq_m=8, rerank=10
    )  # random data: IVF needs many lists
    s, r = pq.search(users, 10, exclude)
    assert not np.isin(r.numpy(), np.arange(60)).any()
    scores = users @ matrix.T
    torch.testing.assert_close(scores.gather(1, r), s)  # re-ranked: the returned scores are exact
    assert (s[:, :-1] >= s[:, 1:]).all()
    recall = np.mean([len(set(r[b].tolist()) & set(exact_r[b].tolist())) / 10 for b in range(64)])
    assert recall >= 0.9, recall
    with pytest.raises(ValueError, match="divide"):
        make_index(matrix, kind="ivfpq", pq_m=7)


def test_index_options_reach_the_faiss_index_and_bad_ones_are_refused(tmp_path):
    from typer.testing import CliRunner

    from linkedout.cli import app
    from linkedout.serve.index import parse_index_options
    from linkedout.serve.state import ServeConfig, State
    from linkedout.synthetic import random_vector_bundle

    assert parse_index_options("hnsw", ["ef_search=64", "hnsw-m=8"]) == {"ef_search": 64, "hnsw_m": 8}
    for kind, pairs, message in [
        ("ivf", ["nprobe"], "KEY=VALUE"),
        ("ivf", ["probes=3"], "KEY=VALUE"),
        ("ivf", ["nprobe=x"], "integer"),
        ("ivf", ["nprobe=0"], "positive"),
        ("exact", ["nprobe=4"], "only apply to FAISS"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_index_options(kind, pairs)

    bundle = random_vector_bundle(2000, dim=16)
    bundle.save(tmp_path / "b")
    options = parse_index_options("ivf", ["nlist=20", "nprobe=3"])
    state = State(ServeConfig(bundle=tmp_path / "b", index="ivf", index_options=options))
    try:
        import faiss

        ivf = faiss.extract_index_ivf(state.serving.engine.index._base)  # what FAISS itself was given
        assert (ivf.nlist, ivf.nprobe) == (20, 3)
    finally:
        state.close()
    bad = CliRunner().invoke(app, ["serve", "--bundle", str(tmp_path / "b"), "--index-option", "nprobe=4"])
    assert bad.exit_code == 2 and "only apply to FAISS" in bad.output


def test_faiss_flat_with_online_items_ranks_like_the_exact_index(tmp_path):
    """The FAISS base is read-only; items added online live in an exact segment merged at search:
    flat FAISS (exact inner products) + that segment == the exact index, blocked and excluded rows too."""
    g = torch.Generator().manual_seed(4)
    matrix = torch.randn(3000, 16, generator=g)
    blocked = torch.zeros(3000, dtype=torch.bool)
    blocked[[3, 99]] = True
    flat = FaissIndex(matrix, blocked, "flat", cache_dir=tmp_path)
    exact = ExactIndex(matrix, blocked)
    for i, block in enumerate([False, True, False]):
        new = torch.randn(5, 16, generator=g) * 2
        assert flat.add(new, blocked=block) == exact.add(new, blocked=block) == 3000 + 5 * i
    users = torch.randn(4, 16, generator=g)
    exclude = [np.array([0, 3001]), np.array([], dtype=np.int64), np.array([3010, 5]), np.array([7])]
    s, r = flat.search(users, 12, exclude)
    ref_s, ref_r = exact.search(users, 12, exclude)
    assert (r == ref_r).all()
    torch.testing.assert_close(s, ref_s)
    assert not set(range(3005, 3010)) & set(r.flatten().tolist())  # the blocked online batch
    torch.testing.assert_close(flat.vectors(torch.tensor([1, 3012])), exact.vectors(torch.tensor([1, 3012])))


def test_faiss_index_is_built_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(5)
    matrix = torch.randn(4000, 16, generator=g)
    first = FaissIndex(matrix, None, "hnsw", cache_dir=tmp_path, ef_search=64)
    assert first.cache_path is not None and first.cache_path.exists()

    def no_build(*a, **k):
        raise AssertionError("built again although the cache holds it")

    monkeypatch.setattr(FaissIndex, "_build", staticmethod(no_build))
    again = FaissIndex(matrix, None, "hnsw", cache_dir=tmp_path, ef_search=64)  # e.g. a second worker
    users = torch.randn(6, 16, generator=g)
    s1, r1 = first.search(users, 10)
    s2, r2 = again.search(users, 10)
    assert (r1 == r2).all()
    torch.testing.assert_close(s1, s2)
    monkeypatch.undo()
    # other rows, other blocked rows or other build options are other indexes
    blocked = torch.zeros(4000, dtype=torch.bool)
    blocked[0] = True
    paths = {
        first.cache_path,
        FaissIndex(matrix * 2, None, "hnsw", cache_dir=tmp_path).cache_path,
        FaissIndex(matrix, blocked, "hnsw", cache_dir=tmp_path).cache_path,
        FaissIndex(matrix, None, "hnsw", cache_dir=tmp_path, hnsw_m=8).cache_path,
    }
    assert len(paths) == 4
    assert FaissIndex(matrix, None, "hnsw", cache_dir=tmp_path, ef_search=256).cache_path == first.cache_path


def test_clustered_random_catalogue_has_its_clusters_and_the_default_is_unchanged():
    """``random_vector_bundle(clusters=C)`` (the benchmarks' SYNTHETIC clustered rows): every row is
    lies near one of C centres (most of the spread in C - 1 directions), norms match the Gaussian
    rows', and ``clusters=0`` is the plain model initialisation (the same rows as before the option)."""
    from linkedout.synthetic import random_vector_bundle, synthetic_bundle

    plain = random_vector_bundle(2000, dim=16, max_len=5)
    old, _ = synthetic_bundle(2000, item_encoder="id", dim=16, max_len=5, seed=0, titles=[None] * 2000)
    assert torch.equal(plain.item_matrix, old.item_matrix)
    clustered = random_vector_bundle(2000, dim=16, max_len=5, clusters=4, spread=0.1).item_matrix
    ratio = clustered.norm(dim=1).mean() / plain.item_matrix.norm(dim=1).mean()
    assert abs(float(ratio) - 1.0) < 1e-4
    # 4 tight clusters: the 4 largest singular directions hold nearly all the spread around the mean
    centred = clustered - clustered.mean(0)
    s = torch.linalg.svdvals(centred) ** 2
    assert float(s[:3].sum() / s.sum()) > 0.9  # 4 centres span 3 directions around their mean
    s_plain = torch.linalg.svdvals(plain.item_matrix - plain.item_matrix.mean(0)) ** 2
    assert float(s_plain[:3].sum() / s_plain.sum()) < 0.5
