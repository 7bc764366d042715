"""Semantic IDs (TIGER, arXiv 2305.05065): each item as a short tuple of codes from residual quantisation
of an item vector, so similar items share code prefixes and a new item gets a code from its content.

- Item vectors: for content sources the item's stored LayerTokens pooled (`content_item_vectors`); for
  ID-only runs there is no content, so vectors come from the training interactions (a truncated SVD
  of the item x user matrix, `interaction_item_vectors`); an item without training events then has
  no vector and no code.
- Residual k-means (`residual_kmeans`): level 1 clusters the vectors, level 2 clusters what level 1's
  centroid left over, and so on; ``levels`` x ``codebook_size`` codes (TIGER learns the codebooks with
  an RQ-VAE; residual k-means is the training-free variant later work uses, and needs no extra model).
  k-means is FAISS's (`faiss.Kmeans`), seeded, so the same inputs and seed give the same codes.
- Collisions (`append_collision_code`): items whose quantised tuples are equal get one more code that
  numbers them (0, 1, ... in item order), as TIGER does, so every item's tuple is unique.
"""

from __future__ import annotations

import numpy as np
import torch

UNCODED = -1  # code of an item with no vector (no content, or no training events for ID-only runs)


def content_item_vectors(tokens: torch.Tensor, *, last_layer_only: bool = False) -> np.ndarray:
    """Pooled LayerTokens ``[N, L, S, D]`` -> ``[N, D]`` float32: summary tokens averaged, each layer
    standardised (depths differ in scale, as in `MeanLayersEncoder`), layers averaged (or the last
    one only), centred on the catalogue mean and L2-normalised, so k-means clusters directions."""
    x = tokens.float().mean(2)  # [N, L, D]
    x = x[:, -1:] if last_layer_only else x
    x = torch.nn.functional.layer_norm(x, x.shape[-1:]).mean(1)
    return _centred_unit_rows(x.numpy())


def interaction_item_vectors(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, n_items: int, *, dim: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors from training sequences (``items[starts[u]:ends[u]]`` per user): ``U * S`` of a
    rank-``dim`` truncated SVD (SciPy's ARPACK ``svds``, start vector drawn from ``seed``) of the binary
    item x user matrix, L2-normalised. Returns ``(vectors [n_items, dim], has_vector [n_items])``; an
    item with no training events has no vector (zeros, False)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    from linkedout.data.batches import ragged_positions

    rows, index = ragged_positions(starts, ends)
    matrix = sp.csr_matrix(
        (np.ones(len(index), dtype=np.float32), (items[index], rows)), shape=(n_items, len(starts))
    )
    matrix.data[:] = 1.0  # repeated watches summed by csr: binarise
    has_vector = np.asarray(matrix.getnnz(axis=1) > 0)
    rank = max(1, min(dim, min(matrix.shape) - 1))
    start = np.random.default_rng(seed).normal(size=min(matrix.shape)).astype(np.float32)
    u, s, _ = svds(matrix, k=rank, v0=start)
    vectors = u * s
    # not centred (unlike content vectors): an item with few events has a tiny SVD row, and centring
    # would map all of them onto one direction (-mean), where they collide (75 items on one ml-100k
    # tuple at 3 x 64, against 33 without centring)
    vectors = _unit_rows(np.asarray(vectors, dtype=np.float32))
    vectors[~has_vector] = 0.0
    return vectors, has_vector


def _centred_unit_rows(x: np.ndarray) -> np.ndarray:
    return _unit_rows(x - x.mean(0, keepdims=True))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def residual_kmeans(
    vectors: np.ndarray, levels: int, codebook_size: int, *, seed: int = 0, niter: int = 25
) -> np.ndarray:
    """``[N, levels]`` int64 codes: greedy residual quantisation with one k-means codebook per level
    (fewer than ``codebook_size`` centroids when there are fewer points)."""
    import faiss

    if levels < 1 or codebook_size < 1:
        raise ValueError(
            f"semantic IDs need levels >= 1 and codebook_size >= 1 (got {levels}, {codebook_size})"
        )
    residual = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    n, d = residual.shape
    codes = np.zeros((n, levels), dtype=np.int64)
    if n == 0:
        return codes
    for level in range(levels):
        k = min(codebook_size, n)
        # min_points_per_centroid=1: a catalogue of a few thousand items is small for 64 centroids,
        # and FAISS would otherwise print a warning per level
        kmeans = faiss.Kmeans(d, k, niter=niter, seed=seed + level, min_points_per_centroid=1, verbose=False)
        kmeans.train(residual)
        _, assign = kmeans.index.search(residual, 1)
        codes[:, level] = assign[:, 0]
        residual -= kmeans.centroids[assign[:, 0]]
    return codes


def append_collision_code(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """``codes [N, C]`` -> ``[N, C + 1]``: the extra last code numbers the items that share a tuple
    (0, 1, ... in item order; 0 for an item whose tuple is already unique), so every row is unique.
    More than ``codebook_size`` items on one tuple cannot be numbered within the vocabulary: error."""
    n = len(codes)
    out = np.zeros((n, codes.shape[1] + 1), dtype=np.int64)
    out[:, :-1] = codes
    if n == 0:
        return out
    order = np.lexsort(codes.T[::-1])  # by tuple; stable, so item order within a tuple
    ordered = codes[order]
    first = np.r_[True, (ordered[1:] != ordered[:-1]).any(1)]
    position = np.arange(n)
    rank = position - np.maximum.accumulate(np.where(first, position, 0))
    if rank.max() >= codebook_size:
        worst = ordered[int(np.argmax(rank))]
        raise ValueError(
            f"{int(rank.max()) + 1} items share the semantic-ID prefix {worst.tolist()}, more than the "
            f"codebook size {codebook_size} can number: use more --code-levels or a larger --codebook-size"
        )
    out[order, -1] = rank
    return out


def semantic_ids(
    vectors: np.ndarray, coded: np.ndarray, levels: int, codebook_size: int, *, seed: int = 0
) -> np.ndarray:
    """``[n_items, levels + 1]`` int64 semantic IDs of every item with ``coded`` True (residual
    k-means codes + the collision code; all tuples unique); rows of other items are `UNCODED`."""
    coded = np.asarray(coded, dtype=bool)
    out = np.full((len(vectors), levels + 1), UNCODED, dtype=np.int64)
    codes = residual_kmeans(vectors[coded], levels, codebook_size, seed=seed)
    out[coded] = append_collision_code(codes, codebook_size)
    return out
