"""`ItemFeatures`: the stored LayerTokens of a catalogue, aligned to a dataset's item indices.

Read once from the feature store into one float16 tensor ``[n_items, L, S, D]`` (ml-100k with MiniLM:
1,682 x 6 x 2 x 384 x 2 B = 15 MB); item encoders gather only the rows a step needs. Items the store
has no row for (failed or never extracted) get zeros and ``present = False``, so encoders can fall back
to the ID embedding or be excluded from ranking, and every report can count them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class ItemFeatures:
    tokens: torch.Tensor  # float16 [n_items, L, S, D]
    present: torch.Tensor  # bool [n_items]
    token_kinds: tuple[str, ...]
    layer_names: tuple[str, ...]
    fingerprint: str = ""
    source: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        _, n_layers, n_tokens, dim = self.tokens.shape
        return n_layers, n_tokens, dim

    @property
    def n_missing(self) -> int:
        return int((~self.present).sum())

    def old_new_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks over the S axis: prefill ("old": video/prompt/text) and generated ("new")."""
        new = torch.tensor([k == "new" for k in self.token_kinds])
        return ~new, new

    def select_layers(self, layers: list[int]) -> ItemFeatures:
        return ItemFeatures(
            self.tokens[:, layers],
            self.present,
            self.token_kinds,
            tuple(self.layer_names[i] for i in layers),
            self.fingerprint,
            self.source,
        )

    @classmethod
    def placeholder(
        cls, shape: tuple[int, int, int], token_kinds: tuple[str, ...], layer_names
    ) -> ItemFeatures:
        """One all-zero item of ``shape`` ``(L, S, D)``: builds an encoder that will encode tokens it
        is given (a bundle's content encoder) rather than a stored catalogue."""
        n_layers, n_tokens, dim = (int(x) for x in shape)
        return cls(
            torch.zeros(1, n_layers, n_tokens, dim, dtype=torch.float16),
            torch.ones(1, dtype=torch.bool),
            tuple(token_kinds),
            tuple(layer_names),
        )

    @classmethod
    def from_store(cls, path: str | Path, item_ids: np.ndarray) -> ItemFeatures:
        """Align the store's rows to ``item_ids`` (raw ids of the dataset, compared as strings)."""
        from linkedout.store import FeatureStore

        store = FeatureStore.open(path)
        ids, array = store.read_all()
        row_of = {item_id: i for i, item_id in enumerate(ids)}
        wanted = [row_of.get(str(i), -1) for i in item_ids.tolist()]
        wanted_arr = np.asarray(wanted, dtype=np.int64)
        present = wanted_arr >= 0
        tokens = np.zeros((len(item_ids), *array.shape[1:]), dtype=np.float16)
        tokens[present] = array[wanted_arr[present]]
        return cls(
            tokens=torch.from_numpy(tokens),
            present=torch.from_numpy(present),
            token_kinds=tuple(store.token_kinds),
            layer_names=tuple(store.layer_names),
            fingerprint=store.fingerprint,
            source=str(path),
        )
