"""TIGER (Rajput et al., arXiv 2305.05065): generative retrieval. Every item is a tuple of semantic-ID
codes (linkedout.models.semantic_ids); a transformer reads the history as code tokens and generates the
next item's tuple; beam search constrained to the catalogue's tuples gives the recommendations.

Design (a reconstruction at ml-100k scale, not the paper's T5):

- Decoder-only, not TIGER's encoder-decoder: a causal transformer over the flattened stream
  ``[BOS, item_1 codes, item_2 codes, ...]`` predicts every code of every next item of a training
  window in one forward (the all-positions training signal SASRec gets), where an encoder-decoder
  learns one target per encoded history; ml-100k has ~1k users, so targets per forward decide how
  fast it learns. At inference the history's keys/values are computed once and shared by every beam.
- Tokens: one embedding per (level, code), plus the item's position counted back from the predicted
  item (0), shared by its codes. Items without a semantic ID (no content; no training events for
  ID-only runs) are dropped from histories, as if unwatched.
- Probabilities are over the catalogue: at each level the softmax runs over the codes that continue
  a catalogue tuple (`CodeTrie`), so an item's score, the sum of its levels' log-probabilities, is the
  log-probability of that item and the items' probabilities sum to one. Training uses the same
  constrained softmax over the trie of items with training events (items first seen later are not
  pushed down before they were ever seen, as in `SequentialRecommender`); inference uses every coded
  item, so a cold item is reachable through its content codes.
- ``score_all_items``: the ``beam`` items' log-probabilities, -inf for every other item. Items outside
  the beam therefore rank after all beam items (train/metrics.py breaks -inf ties by item index, and a
  target outside the beam ranks >= beam), so HR/NDCG@k of the beam's ranking are exact for
  k <= beam; `fit` refuses a beam smaller than the protocol's largest k. When the protocol masks the
  history, history items are removed at the last level so the beam's width goes to rankable items.
- `exhaustive_scores` is the reference: every catalogue item's log-probability by teacher forcing
  the whole stream (no cache, no beam); tests check beam search against it.
- The semantic IDs are a buffer of the model: `fit` computes them, the checkpoint saves them, so a
  reloaded run (`linkedout evaluate --run`) decodes over exactly the codes it trained on. There is no
  bundle format for this family yet: `linkedout export` refuses tiger runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linkedout.data.batches import PAD
from linkedout.models.base import Recommender, TrainBatch
from linkedout.models.semantic_ids import (
    UNCODED,
    content_item_vectors,
    interaction_item_vectors,
    semantic_ids,
)
from linkedout.models.user_encoders import ByteDropout

NEG_INF = float("-inf")


class CodeTrie(nn.Module):
    """A catalogue's semantic-ID tuples as a prefix tree in tensors, for vectorised constrained decoding.

    Nodes have global ids (0 = the root, the empty prefix); ``allowed[node, code]``: ``code`` continues
    a catalogue tuple; ``child[node, code]``: the node of the longer prefix, or at the last level the
    item index; ``below[node]``: how many catalogue items share the node's prefix; ``path[item, l]``:
    the node an item's level-``l`` code hangs from (-1: item not in the trie). One extra all-False
    node (id ``n_nodes``) is where beams with no valid continuation go."""

    def __init__(self, codes: torch.Tensor, include: torch.Tensor, codebook_size: int) -> None:
        super().__init__()
        codes_np = codes.cpu().numpy()
        n_items, length = codes_np.shape
        items = np.flatnonzero(include.cpu().numpy() & (codes_np[:, 0] != UNCODED))
        c = codes_np[items]
        parents = np.zeros((len(items), length), dtype=np.int64)
        n_nodes = 1
        for level in range(1, length):
            _, inverse = np.unique(c[:, :level], axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            parents[:, level] = n_nodes + inverse
            n_nodes += int(inverse.max()) + 1 if len(items) else 0
        allowed = np.zeros((n_nodes + 1, codebook_size), dtype=bool)
        child = np.full((n_nodes + 1, codebook_size), -1, dtype=np.int64)
        for level in range(length):
            allowed[parents[:, level], c[:, level]] = True
            child[parents[:, level], c[:, level]] = parents[:, level + 1] if level + 1 < length else items
        path = np.full((n_items, length), -1, dtype=np.int64)
        path[items] = parents
        self.n_nodes = n_nodes
        self.dead = n_nodes  # the all-False node
        self.register_buffer("allowed", torch.from_numpy(allowed), persistent=False)
        self.register_buffer("child", torch.from_numpy(child), persistent=False)
        below = np.bincount(parents.ravel(), minlength=n_nodes + 1)
        self.register_buffer("below", torch.from_numpy(below), persistent=False)
        self.register_buffer("path", torch.from_numpy(path), persistent=False)
        self.register_buffer("items", torch.from_numpy(items), persistent=False)


class CachedBlock(nn.Module):
    """Pre-norm transformer block whose attention can read keys/values computed earlier (``past``):
    decoding steps reuse the history's keys and values instead of recomputing them per beam."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), ByteDropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.drop = ByteDropout(dropout)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x [B, T, D]``; ``allowed [B, T, P + T]`` (which of the ``P`` past and ``T`` own keys each
        query reads). Returns the new states and this call's own keys/values ``[B, H, T, D/H]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        # no dropout on the attention weights (SASRec has it): written-out attention over a stream 4x
        # longer than SASRec's cost more than the fused kernel, and the residual dropout regularises
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None])
        x = x + self.drop(self.out(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.norm2(x))), (k, v)


@dataclass
class CodeStep:
    """One level of the code path the model followed to an item."""

    level: int
    code: int
    log_prob: float  # of this code given the history and the item's earlier codes (catalogue softmax)
    items_sharing_prefix: int  # catalogue items whose codes up to this level are the same


class TIGER(Recommender):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        *,
        levels: int = 3,
        codebook_size: int = 64,
        dim: int = 64,
        blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        beam: int = 20,
        content_vectors: np.ndarray | None = None,
        codable: np.ndarray | None = None,
        trained: np.ndarray | None = None,
        seed: int = 0,
        svd_dim: int = 64,
    ) -> None:
        """``content_vectors [n_items, d]``: the vectors semantic IDs come from (None: from the training
        interactions, at `fit`); ``codable``: items that can get a code (content present, or training
        events for ID-only runs); ``trained``: items with training events (the training softmax's)."""
        super().__init__()
        if levels < 1:
            raise ValueError(f"tiger needs --code-levels >= 1, got {levels}")
        if codebook_size < 2:
            raise ValueError(f"tiger needs --codebook-size >= 2, got {codebook_size}")
        if beam < 1:
            raise ValueError(f"tiger needs --beam >= 1, got {beam}")
        self.n_items = n_items
        self.max_len = max_len
        self.levels = levels
        self.code_len = levels + 1  # + the collision code
        self.codebook_size = codebook_size
        self.beam = beam
        self.seed = seed
        self.svd_dim = svd_dim
        self.exclude_history = False  # set by `fit` from the protocol
        self._content_vectors = content_vectors
        everything = np.ones(n_items, dtype=bool)
        self._codable = np.asarray(codable if codable is not None else everything, dtype=bool)
        self._trained = torch.as_tensor(trained if trained is not None else everything, dtype=torch.bool)
        # the semantic IDs, saved with the weights: re-evaluating a run uses exactly the codes it trained on
        self.register_buffer("codes", torch.full((n_items, self.code_len), UNCODED, dtype=torch.long))
        self.register_buffer("level_offset", torch.arange(self.code_len) * codebook_size, persistent=False)
        self.tokens = nn.Embedding(self.code_len * codebook_size + 1, dim)  # last row: BOS
        self.bos = self.code_len * codebook_size
        self.positions = nn.Embedding(max_len + 1, dim)
        self.drop = ByteDropout(dropout)
        self.blocks = nn.ModuleList(CachedBlock(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.code_len * codebook_size)  # one slice of V logits per level
        for emb in (self.tokens, self.positions):
            nn.init.normal_(emb.weight, std=dim**-0.5)
        self.trie = self.train_trie = None
        self._index()
        # loading weights (a saved run, the trainer's best epoch) loads the codes: rebuild the tries
        self.register_load_state_dict_post_hook(lambda module, _keys: module._index())

    # ------------------------------------------------------------------ semantic IDs
    def unscorable_items(self) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(~self._codable))

    def fit(self, split) -> None:
        """Semantic IDs for the split's catalogue (from content, or from its training interactions for
        ID-only runs), and the protocol settings decoding depends on."""
        largest_k = max(split.protocol.ks)
        if self.beam < largest_k:
            raise ValueError(
                f"tiger --beam {self.beam} is smaller than the largest k the protocol evaluates "
                f"({largest_k}): items outside the beam all score -inf, so @{largest_k} metrics would "
                f"be cut short; use --beam >= {largest_k}"
            )
        self.exclude_history = bool(split.protocol.mask_history)
        if self._content_vectors is not None:
            vectors, codable = self._content_vectors, self._codable
        else:
            items, starts, ends = split.train_sequences()
            vectors, codable = interaction_item_vectors(
                items, starts, ends, self.n_items, dim=self.svd_dim, seed=self.seed
            )
            codable &= self._codable
        codes = semantic_ids(vectors, codable, self.levels, self.codebook_size, seed=self.seed)
        self.codes.copy_(torch.from_numpy(codes))
        self._index()

    def _index(self) -> None:
        device = self.codes.device
        self.trie = CodeTrie(self.codes, torch.ones(self.n_items, dtype=torch.bool), self.codebook_size)
        self.train_trie = CodeTrie(self.codes, self._trained, self.codebook_size)
        self.trie.to(device)
        self.train_trie.to(device)

    # ------------------------------------------------------------------ the transformer over code streams
    def _compact(self, items: torch.Tensor) -> torch.Tensor:
        """Items without a code become PAD and the rest move right (left padding kept, order kept)."""
        coded = (items != PAD) & (self.codes[items.clamp(min=0), 0] != UNCODED)
        order = torch.sort(coded.to(torch.int8), dim=1, stable=True).indices
        return torch.where(coded, items, PAD).gather(1, order)

    def _stream(self, items: torch.Tensor, first_position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded ``[BOS, codes of items...]`` ``[B, 1 + W*C, D]`` and which tokens are keys. Item
        ``j`` of ``W`` gets position ``W - 1 - j + first_position``."""
        b, width = items.shape
        valid = items != PAD
        ids = self.level_offset + self.codes[items.clamp(min=0)].clamp(min=0)  # [B, W, C]
        pos = torch.arange(width - 1 + first_position, first_position - 1, -1, device=items.device)
        x = (self.tokens(ids) + self.positions(pos)[None, :, None]).flatten(1, 2)
        bos = self.tokens.weight[self.bos].expand(b, 1, -1)
        keys = torch.cat([valid.new_ones(b, 1), valid.repeat_interleave(self.code_len, 1)], 1)
        return torch.cat([bos, x], 1), keys

    def _run(
        self, x: torch.Tensor, allowed: torch.Tensor, past: list | None = None
    ) -> tuple[torch.Tensor, list]:
        x = self.drop(x)
        cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, allowed, None if past is None else past[i])
            cache.append(kv)
        return self.norm(x), cache

    def _causal(self, keys: torch.Tensor) -> torch.Tensor:
        t = keys.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=keys.device).tril()
        return causal[None] & keys[:, None, :]  # BOS is always a key: no query is left with none

    def _level_log_probs(
        self, states: torch.Tensor, level: int | None, nodes: torch.Tensor, trie
    ) -> torch.Tensor:
        """Log-probabilities ``[..., V]`` of the codes at ``level`` after prefix ``nodes`` (softmax over
        the codes that continue a catalogue tuple; -inf elsewhere, and everywhere for a dead node).
        ``level`` None: ``states [..., C, D]`` hold one state per level, in level order."""
        weight = self.head.weight.view(self.code_len, self.codebook_size, -1)
        bias = self.head.bias.view(self.code_len, self.codebook_size)
        if level is None:
            logits = torch.einsum("...ld,lvd->...lv", states, weight) + bias
        else:
            logits = states @ weight[level].T + bias[level]
        logits = logits.float().masked_fill(~trie.allowed[nodes], NEG_INF)
        norm = torch.logsumexp(logits, -1, keepdim=True)
        return logits - torch.where(torch.isfinite(norm), norm, 0.0)

    # ------------------------------------------------------------------ training
    def loss(self, batch: TrainBatch) -> torch.Tensor:
        """Teacher-forced cross-entropy on the codes of every next item of the windows."""
        window = self._compact(torch.cat([batch.inputs, batch.targets[:, -1:]], 1))  # [B, L+1]
        x, keys = self._stream(window, first_position=0)
        states, _ = self._run(x, self._causal(keys))
        target_items = window[:, 1:]
        is_target = (window[:, :-1] != PAD) & (target_items != PAD)
        is_target &= self.train_trie.path[target_items.clamp(min=0), 0] >= 0
        rows, j = torch.nonzero(is_target, as_tuple=True)  # target = window[rows, j + 1]
        if len(rows) == 0:
            return states.sum() * 0.0  # nothing to predict in this batch (keeps DDP's graph whole)
        c = self.code_len
        levels = torch.arange(c, device=window.device)
        # level l of item j+1 sits at stream index 1 + (j+1)*C + l; the state before it predicts it
        at = (1 + (j + 1) * c)[:, None] + levels[None] - 1
        items = target_items[rows, j]
        log_probs = self._level_log_probs(
            states[rows[:, None], at], None, self.train_trie.path[items], self.train_trie
        )
        return F.nll_loss(log_probs.flatten(0, 1), self.codes[items].flatten())

    # ------------------------------------------------------------------ inference
    def _history(self, history: torch.Tensor) -> torch.Tensor:
        return self._compact(history[:, -self.max_len :])

    def _seen(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, n_items + 1]`` True where an item is in the row's history (last column: no item)."""
        seen = torch.zeros(history.shape[0], self.n_items + 1, dtype=torch.bool, device=history.device)
        rows = torch.arange(history.shape[0], device=history.device)[:, None].expand_as(history)
        valid = history != PAD
        seen[rows[valid], history[valid]] = True
        return seen

    def beam_search(
        self, history: torch.Tensor, beam: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(items [B, K], log_probs [B, K])`` best first, by beam search constrained to catalogue
        tuples; a slot with no valid item left has item -1 and log-prob -inf."""
        beam = beam or self.beam
        trie = self.trie
        history = self._history(history)
        b, device, c, v = history.shape[0], history.device, self.code_len, self.codebook_size
        x, keys = self._stream(history, first_position=1)
        states, cache = self._run(x, self._causal(keys))
        last = torch.where(history[:, -1] != PAD, keys.shape[1] - 1, 0)  # empty history: BOS
        root = torch.zeros(b, dtype=torch.long, device=device)
        log_probs = self._level_log_probs(states[torch.arange(b), last], 0, root, trie)  # [B, V]
        scores, code = log_probs.topk(min(beam, v), dim=1)  # [B, K]
        nodes = torch.where(torch.isfinite(scores), trie.child[0][code], trie.dead)
        prefix = code[..., None]  # [B, K, 1]
        seen = self._seen(history) if self.exclude_history else None
        for level in range(1, c):
            k = prefix.shape[1]
            ids = self.level_offset[:level] + prefix  # [B, K, l]
            tokens = (self.tokens(ids) + self.positions.weight[0]).flatten(1, 2)  # [B, K*l, D]
            slot = torch.arange(k * level, device=device)
            own = (slot[:, None] // level == slot[None] // level) & (
                slot[None] % level <= slot[:, None] % level
            )
            allowed = torch.cat([keys[:, None].expand(-1, k * level, -1), own[None].expand(b, -1, -1)], 2)
            out, _ = self._run(tokens, allowed, past=cache)
            step_states = out.view(b, k, level, -1)[:, :, -1]  # [B, K, D]
            log_probs = self._level_log_probs(step_states, level, nodes, trie)  # [B, K, V]
            nxt = trie.child[nodes]  # [B, K, V]; at the last level: item indices
            if level == c - 1 and seen is not None:
                hit = seen.gather(1, torch.where(nxt >= 0, nxt, self.n_items).flatten(1)).view_as(nxt)
                log_probs = log_probs.masked_fill(hit, NEG_INF)
            total = (scores[..., None] + log_probs).flatten(1)  # [B, K*V]
            scores, flat = total.topk(min(beam, total.shape[1]), dim=1)
            source, code = flat // v, flat % v
            prefix = torch.cat(
                [prefix.gather(1, source[..., None].expand(-1, -1, level)), code[..., None]], 2
            )
            picked = nxt.gather(1, source[..., None].expand(-1, -1, v)).gather(2, code[..., None]).squeeze(2)
            nodes = torch.where(torch.isfinite(scores), picked, trie.dead)
        items = torch.where(torch.isfinite(scores), nodes, -1)
        return items, scores

    def score_all_items(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Beam items' log-probabilities; -inf for every item outside the beam (ranked after it)."""
        items, scores = self.beam_search(history)
        out = torch.full((history.shape[0], self.n_items + 1), NEG_INF, device=history.device)
        out.scatter_(1, torch.where(items >= 0, items, self.n_items), scores)
        return out[:, : self.n_items]

    def code_log_probs(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[B, M, C]`` log-probability of each code of ``items [B, M]`` (coded items) after each
        history, by teacher forcing the whole stream ``[history, item]`` (no cache, no beam): the
        reference the beam search is tested against, and what explanations read."""
        history = self._history(history)
        b, m = items.shape
        c = self.code_len
        stream = torch.cat([history.repeat_interleave(m, 0), items.reshape(-1, 1)], 1)
        x, keys = self._stream(stream, first_position=0)
        states, _ = self._run(x, self._causal(keys))
        t = keys.shape[1]
        levels = torch.arange(c, device=items.device)
        at = (t - c - 1 + levels)[None].expand(b * m, -1).clone()
        at[:, 0] = torch.where(history.repeat_interleave(m, 0)[:, -1] != PAD, t - c - 1, 0)  # empty: BOS
        flat = items.reshape(-1)
        rows = torch.arange(b * m, device=items.device)[:, None]
        log_probs = self._level_log_probs(states[rows, at], None, self.trie.path[flat], self.trie)
        picked = log_probs.gather(2, self.codes[flat].clamp(min=0)[..., None]).squeeze(2)  # [B*M, C]
        return picked.view(b, m, c)  # an uncoded item: -inf (its trie path is the dead node)

    def exhaustive_scores(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]`` log-probability of every catalogue item (-inf: uncoded, or masked history)."""
        b = history.shape[0]
        items = self.trie.items
        scores = self.code_log_probs(history, items[None].expand(b, -1)).sum(-1)
        if self.exclude_history:
            scores = scores.masked_fill(self._seen(self._history(history))[:, items], NEG_INF)
        out = torch.full((b, self.n_items), NEG_INF, device=history.device)
        out[:, items] = scores
        return out

    def score_items(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities of ``items [B, M]`` (coded items), inside the beam or not."""
        return self.code_log_probs(history, items).sum(-1)

    def generation_path(self, history: torch.Tensor, items: torch.Tensor) -> list[list[dict]]:
        return [[asdict(step) for step in steps] for steps in self.code_paths(history, items)]

    @torch.no_grad()
    def code_paths(self, history: torch.Tensor, items: torch.Tensor) -> list[list[CodeStep]]:
        """Explanation of each of ``items`` (coded item indices) for one history ``[L]``: per level,
        the code the model followed, its log-probability, and how many catalogue items share the
        prefix up to it (the last, collision, level: always 1)."""
        log_probs = self.code_log_probs(history.reshape(1, -1), items.reshape(1, -1))[0]
        out = []
        for item, row in zip(items.tolist(), log_probs.tolist(), strict=True):
            if int(self.trie.path[item, 0]) < 0:
                out.append([])  # no semantic ID: never generated
                continue
            codes = self.codes[item].tolist()
            path = [*self.trie.path[item].tolist(), None]
            steps = []
            for level, (code, lp) in enumerate(zip(codes, row, strict=True)):
                below = int(self.trie.below[path[level + 1]]) if path[level + 1] is not None else 1
                steps.append(CodeStep(level, code, lp, below))
            out.append(steps)
        return out


def build_tiger(config, n_items: int, max_len: int, train_counts: np.ndarray | None, features) -> TIGER:
    """TIGER named by ``config``: codes from the content of ``features`` for content item encoders
    (every item with stored tokens, cold ones included), from training interactions for ``id``."""
    if config.id_fusion:
        raise ValueError("tiger has no item embedding to fuse content with: drop --id-fusion")
    trained = train_counts > 0 if train_counts is not None else None
    if config.item_encoder == "id":
        content, codable = None, trained  # an item without training events has no vector: no code
    else:
        if features is None:
            raise ValueError(f"tiger with item encoder {config.item_encoder!r} needs --features STORE")
        if features.tokens.shape[0] != n_items:
            raise ValueError(f"features cover {features.tokens.shape[0]} items, the dataset has {n_items}")
        content = content_item_vectors(features.tokens, last_layer_only=config.item_encoder == "last")
        codable = features.present.numpy()
    return TIGER(
        n_items,
        max_len,
        levels=config.code_levels,
        codebook_size=config.codebook_size,
        dim=config.dim,
        blocks=config.blocks,
        heads=config.heads,
        dropout=config.dropout,
        beam=config.beam,
        content_vectors=content,
        codable=codable,
        trained=trained,
        seed=int(torch.initial_seed() % 2**31),
    )
