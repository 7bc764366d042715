"""Closed-form baselines: most-popular and item-kNN. They set the floor any learned model must clear."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from linkedout.data.batches import PAD, ragged_positions
from linkedout.models.base import Recommender


class Popularity(Recommender):
    """Scores every item by its number of training events: the same list for everybody."""

    trainable = False

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.register_buffer("counts", torch.zeros(n_items))

    def fit(self, split) -> None:
        self.counts = torch.as_tensor(split.train_item_counts(), dtype=torch.float32)

    def score_all_items(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.counts[None, :].expand(history.shape[0], -1).clone()


class ItemKNN(Recommender):
    """Item-to-item cosine similarity over users' training sequences (binary user x item matrix),
    keeping the ``neighbours`` most similar items per item so memory stays linear in the catalogue.

    A history scores item j by ``sum_t w_t * sim(h_t, j)`` over its last ``history_window`` items, with
    ``w_t = decay ** age``; ``history_window=1`` is the classic "last item" kNN.
    """

    trainable = False

    def __init__(
        self,
        n_items: int,
        neighbours: int = 200,
        history_window: int = 1,
        decay: float = 1.0,
        shrink: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.neighbours = neighbours
        self.history_window = history_window
        self.decay = decay
        self.shrink = shrink
        self.similarity = sp.csr_matrix((n_items, n_items), dtype=np.float32)

    def fit(self, split) -> None:
        items, starts, ends = split.train_sequences()
        rows, index = ragged_positions(starts, ends)
        ui = sp.csr_matrix(
            (np.ones(len(index), dtype=np.float32), (rows, items[index])),
            shape=(len(starts), self.n_items),
        )
        ui.data[:] = 1.0  # duplicates summed by csr: binarise
        norms = np.sqrt(np.asarray(ui.sum(0)).ravel())
        co = (ui.T @ ui).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        co = co.tocoo()
        denom = norms[co.row] * norms[co.col] + self.shrink
        sim = sp.csr_matrix((co.data / np.maximum(denom, 1e-12), (co.row, co.col)), shape=co.shape)
        self.similarity = _top_k_per_row(sim, self.neighbours)

    def score_all_items(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        h = history[:, -self.history_window :].cpu().numpy()
        age = np.arange(h.shape[1])[::-1]
        weights = np.broadcast_to(self.decay**age, h.shape)
        valid = h != PAD
        rows = np.broadcast_to(np.arange(h.shape[0])[:, None], h.shape)[valid]
        query = sp.csr_matrix((weights[valid], (rows, h[valid])), shape=(h.shape[0], self.n_items))
        scores = (query @ self.similarity).toarray().astype(np.float32)
        return torch.from_numpy(scores).to(history.device)


def _top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries (vectorised: one sort of the nonzeros by (row, -value))."""
    matrix = matrix.tocsr()
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    order = np.lexsort((-matrix.data, rows))
    rank = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], lengths)
    keep = order[rank < k]
    return sp.csr_matrix((matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape)
