"""LightGCN (He et al., 2020) over any item vectors: BPR-MF whose user and item vectors are smoothed over
the user-item training graph, with torch_geometric's light graph convolution (`LGConv`).

    e^0 = [user table ; item encoder's vectors]            (layer 0: users, then items)
    e^(k+1) = D^-1/2 A D^-1/2 e^k                           (A: the symmetric user-item graph, k < K)
    e = mean(e^0, ..., e^K)        (alpha_k = 1 / (K + 1))   score(u, i) = <e_u, e_i>

- The graph: one undirected edge per distinct (user, item) pair of the training events, built by
  `fit(split)` (every training event, a user's first included; repeats count once). The symmetric
  normalisation is computed once there (`gcn_norm`, no self-loops) into a sparse CSR matrix that
  `LGConv(normalize=False)` multiplies by every step. CSR rather than an edge list: torch_geometric
  then aggregates with one sparse product instead of a scatter-add (for ml-100k's graph, forward +
  backward of one layer on one thread: ~0.04 s vs ~0.4 s, measured once on a busy 2-core machine).
- Layer 0 of the items comes from `build_item_encoder`, so content and content+id item encoders work as
  for every other family; layer 0 of the users is a table. ``--layers`` sets K (ModelConfig.layers; not
  ``--blocks``, which means transformer blocks / GRU layers elsewhere).
- Items with no training edges (cold items, e.g. ``--cold-items``; new items at serving time) have
  nothing to propagate: the formula leaves them ``e^0 / (K + 1)``, their layer-0 (content) vector
  scaled by alpha_0, while warm items add K propagated layers. On ml-100k (microlens, 20% cold items,
  text features) that kept every cold item out of every top 10 (cold NDCG@10 0) although content
  orders them well among themselves. ``--isolated-scale s`` gives an item without edges ``s * e^0``
  instead (the formula's value when unset; 1 = its layer 0 standing in for every missing layer). The
  ranking is steep in ``s``: 1 floods every top 10 with cold items (warm NDCG@10 ~0.003), alpha_0 = 1/3
  shows none; on validation, with ``--isolate-items 0.2``, 0.5 was the largest scale whose NDCG@10
  over all users stayed within one standard error (over seeds) of the best: the microlens recipe's
  (train/recipes.py; benchmarks/lightgcn_cold.py, docs/benchmarks.md "LightGCN cold items"). The
  scale calibrates content against propagated vectors, so it holds for the K it was chosen with (2).
- Cold-start training (``--isolate-items p``, DropoutNet's idea on the graph): every training step cuts
  a random share ``p`` of the items out of the graph (all their edges; the rest renormalised), so
  those items are scored from ``s * e^0`` exactly as a cold item is, and the content path learns to
  rank next to propagated vectors. Costs one graph rebuild per step (`interaction_graph` on the kept
  edges).
  An id-fused item encoder still gives an isolated item its id half (only a truly cold item has its
  id zeroed): the isolation teaches the graph side, not the id gate.
  Users without edges are likewise at ``s * e^0``; scoring folds them in from their history anyway
  (bpr.py). Serving gives a new item ``s * content`` (`new_item_scale`, written into the bundle).
- Loss, negatives, weight decay, fold-in of an anonymous history (mean of the history's final item
  vectors) and the cache of the final vectors in eval mode are `BPRMF`'s (bpr.py). No item bias
  (the paper has none).

Every training step propagates the whole graph (K sparse products of ``[n_users + n_items, dim]``);
cheap at ml-100k (~0.2M directed edges), the first thing to sample or cache at millions of users.
torch_geometric is an optional dependency: ``pip install 'linkedout[graph]'``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from linkedout.data.batches import ragged_positions
from linkedout.models.base import ItemEncoder
from linkedout.models.bpr import BPRMF, Embeddings


def _torch_geometric():
    try:
        from torch_geometric.nn.conv import LGConv
        from torch_geometric.nn.conv.gcn_conv import gcn_norm
        from torch_geometric.utils import to_torch_csr_tensor
    except ImportError as e:
        raise ImportError(
            f"the lightgcn model needs torch_geometric ({e}): pip install 'linkedout[graph]'"
        ) from None
    return LGConv, gcn_norm, to_torch_csr_tensor


def interaction_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """The normalised adjacency ``D^-1/2 A D^-1/2`` (sparse CSR, ``[n_users + n_items]^2``) of the
    undirected graph of the distinct (user, item) pairs; nodes are the users, then the items."""
    _, gcn_norm, to_torch_csr_tensor = _torch_geometric()
    pairs = np.unique(np.stack([users, items]).astype(np.int64), axis=1)
    u = torch.from_numpy(pairs[0])
    i = torch.from_numpy(pairs[1]) + n_users
    edge_index = torch.stack([torch.cat([u, i]), torch.cat([i, u])])  # int64: torch_geometric needs it
    n = n_users + n_items
    edge_index, weight = gcn_norm(edge_index, None, n, add_self_loops=False)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is not new
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(edge_index, weight, (n, n))


class LightGCN(BPRMF):
    """BPR over LightGCN-propagated embeddings (see the module docstring)."""

    has_bias = False

    def __init__(
        self,
        item_encoder: ItemEncoder,
        n_users: int,
        *,
        layers: int = 3,
        negatives: int = 1,
        trained_items: torch.Tensor | None = None,
        isolated_scale: float | None = None,
        isolate_items: float = 0.0,
    ) -> None:
        super().__init__(item_encoder, n_users, negatives=negatives, trained_items=trained_items)
        if layers < 1:
            raise ValueError(f"lightgcn needs at least one layer, got {layers}")
        if isolated_scale is not None and not isolated_scale > 0:
            raise ValueError(f"lightgcn: isolated_scale must be > 0 (or None: 1/(K+1)), got {isolated_scale}")
        if not 0.0 <= isolate_items < 1.0:
            raise ValueError(f"lightgcn: isolate_items is a share of items in [0, 1), got {isolate_items}")
        LGConv, _, _ = _torch_geometric()
        self.layers = layers
        self.isolated_scale = isolated_scale
        self.isolate_items = isolate_items
        self.convs = nn.ModuleList([LGConv(normalize=False) for _ in range(layers)])
        # the graph of `fit`: not saved with the weights (`fit` rebuilds it from the split), and a plain
        # attribute rather than a buffer: DDP broadcasts every buffer at the start, and every rank
        # builds the same graph in `fit` anyway (a sparse CSR broadcast is not worth depending on)
        self.adjacency: torch.Tensor | None = None
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None  # the graph's distinct (user, item) edges

    def fit(self, split) -> None:
        """Build the normalised user-item graph of ``split``'s training events."""
        super().fit(split)
        items, starts, ends = split.train_sequences()
        rows, index = ragged_positions(starts, ends)
        users = split.train_users()[rows]
        self.set_graph(users, items[index])

    def set_graph(self, users: np.ndarray, items: np.ndarray) -> None:
        """The training graph from parallel arrays of (user index, item index) events."""
        pairs = np.unique(np.stack([users, items]).astype(np.int64), axis=1)
        self._pairs = (pairs[0], pairs[1])
        self.adjacency = interaction_graph(pairs[0], pairs[1], self.n_users, self.n_items).to(
            self.trained_users.device
        )
        self._cache = None

    def isolated_graph(self) -> torch.Tensor:
        """The training graph with a random ``isolate_items`` share of the items that have edges cut
        out (all their edges gone, the rest renormalised): what cold-start training propagates over."""
        if self._pairs is None:
            raise RuntimeError("LightGCN has no graph yet: call fit(split) first (the trainer does)")
        users, items = self._pairs
        cut = torch.rand(self.n_items, device=self.trained_users.device) < self.isolate_items
        keep = ~cut.cpu().numpy()[items]
        graph = interaction_graph(users[keep], items[keep], self.n_users, self.n_items)
        return graph.to(self.trained_users.device)

    def propagate(self, layer0: torch.Tensor, adjacency: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of layers 0..K over the graph (``adjacency``, default the training graph); a node
        without edges gets its layer 0 times `new_item_scale`."""
        if adjacency is None:
            if self.adjacency is None:
                raise RuntimeError("LightGCN has no graph yet: call fit(split) first (the trainer does)")
            if self.adjacency.device != layer0.device:  # moved by .to() after fit: not a buffer
                self.adjacency = self.adjacency.to(layer0.device)
            adjacency = self.adjacency
        x, total = layer0, layer0
        for conv in self.convs:
            x = conv(x, adjacency)
            total = total + x
        out = total / (self.layers + 1)
        if self.isolated_scale is None:
            return out  # the formula's own: layer 0 / (K + 1)
        no_edges = (adjacency.crow_indices().diff() == 0)[:, None]
        return torch.where(no_edges, layer0 * self.isolated_scale, out)

    def embeddings(self) -> Embeddings:
        items, aux = self.item_encoder.encode_all()
        layer0 = torch.cat([self.user_embedding.weight, items.to(self.user_embedding.weight)])
        cut = self.training and self.isolate_items > 0
        out = self.propagate(layer0, self.isolated_graph() if cut else None)
        return Embeddings(out[: self.n_users], out[self.n_users :], None, aux)

    @property
    def new_item_scale(self) -> float:
        """What an item without edges (a cold or new one) keeps of its layer-0 vector: ``isolated_scale``,
        or the formula's alpha_0 = 1 / (K + 1) when that is None."""
        return 1.0 / (self.layers + 1) if self.isolated_scale is None else self.isolated_scale

    def pair_scores(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = self.embeddings()  # every step: propagation mixes the whole graph
        scores = torch.einsum("pd,pnd->pn", emb.users[users], emb.items[items])
        return scores, emb.aux_loss


def dense_propagation(
    layer0: torch.Tensor,
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    layers: int,
    isolated_scale: float | None = None,
) -> torch.Tensor:
    """Reference for `LightGCN.propagate`: the normalised adjacency as a dense matrix, powers applied
    one by one, then a node without edges set to its layer 0 times ``isolated_scale`` (for tests on
    tiny graphs)."""
    n = layer0.shape[0]
    adj = torch.zeros(n, n, dtype=layer0.dtype)
    adj[torch.as_tensor(users), torch.as_tensor(items) + n_users] = 1.0
    adj = adj + adj.T
    degree = adj.sum(1)
    scale = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    norm = scale[:, None] * adj * scale[None, :]
    x, layers_out = layer0, [layer0]
    for _ in range(layers):
        x = norm @ x
        layers_out.append(x)
    out = torch.stack(layers_out).mean(0)
    if isolated_scale is None:
        return out
    return torch.where((degree == 0)[:, None], layer0 * isolated_scale, out)
