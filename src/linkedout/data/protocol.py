"""Evaluation protocols: filtering, truncation, leave-one-out split, history masking, metrics.

A `Protocol` is a frozen preset that travels with every result (its `describe()` line is printed under
every table and its `to_dict()` saved in every JSON), because the same model scores ~3x apart under
different protocols and numbers without one are not comparable.

Split (leave-one-out by time): for a user's ordered sequence s of length n >= 3,
``train = s[:-2]``, ``valid = (history s[:-2], target s[-2])``, ``test = (history s[:-1], target s[-1])``.
Users with fewer than 3 events after filtering stay in training only (they have no held-out event).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from linkedout.data.interactions import Interactions


@dataclass(frozen=True)
class Protocol:
    name: str
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    k_core: bool = False  # repeat the user and item filters until both hold at once
    keep_last: int | None = None  # keep each user's last N events (after filtering)
    max_seq_len: int = 50  # history the sequential models see
    mask_history: bool = False  # exclude the user's already-seen items from the ranking
    ks: tuple[int, ...] = (10, 20)
    metrics: tuple[str, ...] = ("HR", "NDCG", "Recall", "MRR")
    sampled_negatives: int | None = None  # None = full ranking over all items (the honest default)
    cold_items: float = 0.0  # fraction of items held out of training entirely (cold-start evaluation)

    def describe(self) -> str:
        parts = [f"protocol={self.name}"]
        if self.min_user_interactions:
            parts.append(f"users>={self.min_user_interactions}")
        if self.min_item_interactions:
            parts.append(f"items>={self.min_item_interactions}")
        if self.k_core:
            parts.append("k-core")
        if self.keep_last:
            parts.append(f"keep-last={self.keep_last}")
        parts.append("leave-one-out by time (ties: item id)")
        parts.append(f"max-len={self.max_seq_len}")
        parts.append("history masked" if self.mask_history else "history NOT masked")
        if self.cold_items:
            parts.append(
                f"cold-start: {self.cold_items:.0%} of items never trained on (half valid, half test)"
            )
        if self.sampled_negatives:
            parts.append(f"SAMPLED ranking: target vs {self.sampled_negatives} random negatives")
        else:
            parts.append("full ranking over all items")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ks"] = list(self.ks)
        d["metrics"] = list(self.metrics)
        d["description"] = self.describe()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["ks"] = tuple(fields.get("ks", (10, 20)))
        fields["metrics"] = tuple(fields.get("metrics", ("HR", "NDCG", "Recall", "MRR")))
        return cls(**fields)

    def metric_names(self) -> list[str]:
        return [f"{m}@{k}" for m in self.metrics for k in self.ks]


PRESETS: dict[str, Protocol] = {
    # MicroLens benchmark as used by DFF: users with >= 5 interactions, last 13 kept, leave-one-out,
    # all items ranked with the user's history masked, HR/NDCG @10/@20; SASRec max length 10.
    "microlens": Protocol(
        name="microlens", min_user_interactions=5, keep_last=13, max_seq_len=10, mask_history=True
    ),
    # RecBole's sequential default: leave-one-out by time, full ranking, history NOT masked, max len 50.
    "recbole": Protocol(name="recbole", max_seq_len=50, mask_history=False),
}


def get_protocol(name: str, **overrides) -> Protocol:
    """A preset by name, optionally with fields overridden (the name then records the change)."""
    if name not in PRESETS:
        raise KeyError(f"unknown protocol {name!r}; choose one of {sorted(PRESETS)} or build a Protocol")
    base = PRESETS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return base
    changed = {k: v for k, v in overrides.items() if getattr(base, k) != v}
    if not changed:
        return base
    label = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return replace(base, name=f"{base.name}[{label}]", **changed)


def filter_interactions(data: Interactions, protocol: Protocol) -> Interactions:
    """Apply the min-interaction filters (once, or to a fixed point when ``k_core``), then keep-last."""
    min_u, min_i = protocol.min_user_interactions, protocol.min_item_interactions
    while min_u > 1 or min_i > 1:
        keep = np.ones(data.n_events, dtype=bool)
        if min_i > 1:
            keep &= (data.item_counts() >= min_i)[data.items]
        if min_u > 1:
            keep &= np.repeat(data.lengths() >= min_u, data.lengths())
        if keep.all():
            break
        data = data.select_events(keep)
        if not protocol.k_core:
            break
    if protocol.keep_last:
        lengths = data.lengths()
        position = np.arange(data.n_events) - np.repeat(data.offsets[:-1], lengths)
        from_end = np.repeat(lengths, lengths) - position
        keep = from_end <= protocol.keep_last
        if not keep.all():
            data = data.select_events(keep)
    return data


@dataclass(frozen=True)
class EvalSet:
    """Held-out events: user row, target item and where the user's history ends in ``data.items``
    (history = ``items[offsets[user]:history_end]``, target = ``items[history_end]``)."""

    users: np.ndarray  # int64 [n]
    history_end: np.ndarray  # int64 [n], absolute index into data.items
    targets: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, keep: np.ndarray) -> EvalSet:
        return EvalSet(self.users[keep], self.history_end[keep], self.targets[keep])


@dataclass(frozen=True)
class Split:
    data: Interactions  # filtered and truncated
    protocol: Protocol
    train_end: np.ndarray  # int64 [n_users]: user u trains on items[offsets[u]:train_end[u]]
    valid: EvalSet
    test: EvalSet
    excluded_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # cold start: items held out of training entirely (see `with_cold_items`)
    cold_valid_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_test_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    train_data: Interactions | None = None  # training events when they differ from data[:train_end]

    @property
    def n_items(self) -> int:
        return self.data.n_items

    def train_sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, starts, ends): user-ordered training sequences as ragged ranges over ``items``."""
        if self.train_data is not None:
            return self.train_data.items, self.train_data.offsets[:-1], self.train_data.offsets[1:]
        return self.data.items, self.data.offsets[:-1], self.train_end

    def train_users(self) -> np.ndarray:
        """int64 ``[n_sequences]``: the user index (into ``data``, what `EvalSet.users` holds) of each
        training sequence of `train_sequences`. The same as ``arange`` unless a cold-start protocol
        left some user with no training events (its sequence is then missing)."""
        if self.train_data is None:
            return np.arange(self.data.n_users, dtype=np.int64)
        row = {u: i for i, u in enumerate(self.data.user_ids.tolist())}
        return np.array([row[u] for u in self.train_data.user_ids.tolist()], dtype=np.int64)

    def train_lengths(self) -> np.ndarray:
        _, starts, ends = self.train_sequences()
        return ends - starts

    def train_item_counts(self) -> np.ndarray:
        from linkedout.data.batches import ragged_positions

        items, starts, ends = self.train_sequences()
        return np.bincount(items[ragged_positions(starts, ends)[1]], minlength=self.n_items)

    def eval_set(self, which: str, subset: str = "all") -> EvalSet:
        """``which`` = valid | test; ``subset`` = all | warm | cold (cold = target held out of training)."""
        eval_set = {"valid": self.valid, "test": self.test}[which]
        if subset == "all" or not self.is_cold_start:
            if subset == "cold":
                return eval_set.subset(np.zeros(len(eval_set), dtype=bool))
            return eval_set
        cold = self.cold_valid_items if which == "valid" else self.cold_test_items
        all_cold = np.union1d(self.cold_valid_items, self.cold_test_items)
        if subset == "cold":
            return eval_set.subset(np.isin(eval_set.targets, cold))
        if subset == "warm":
            return eval_set.subset(~np.isin(eval_set.targets, all_cold))
        raise ValueError(f"unknown subset {subset!r} (all, warm, cold)")

    @property
    def is_cold_start(self) -> bool:
        return len(self.cold_valid_items) + len(self.cold_test_items) > 0

    def summary(self) -> dict:
        out = {
            **self.data.summary(),
            "train_events": int(self.train_lengths().sum()),
            "valid_users": len(self.valid),
            "test_users": len(self.test),
        }
        if self.is_cold_start:
            out["cold_items"] = len(self.cold_valid_items) + len(self.cold_test_items)
            out["test_users_cold"] = len(self.eval_set("test", "cold"))
            out["test_users_warm"] = len(self.eval_set("test", "warm"))
        return out

    def with_cold_items(self, fraction: float, seed: int = 0) -> Split:
        """Hold ``fraction`` of the items out of training entirely (their events vanish from the training
        sequences; histories at evaluation still show them). Half of them are validation-cold, half
        test-cold, so model selection never sees the items that the cold-start test scores. Valid
        events whose target is test-cold are dropped from validation for the same reason."""
        if not 0 < fraction < 1:
            raise ValueError(f"cold fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        items = rng.permutation(self.n_items)[: max(2, round(fraction * self.n_items))]
        cold_valid, cold_test = np.sort(items[::2]), np.sort(items[1::2])
        cold = np.zeros(self.n_items, dtype=bool)
        cold[items] = True
        positions = np.arange(self.data.n_events)
        in_train = positions < self.train_end[self.data.event_users()]
        train_data = self.data.select_events(in_train & ~cold[self.data.items], drop_unused_items=False)
        valid = self.valid.subset(~np.isin(self.valid.targets, cold_test))
        return replace(
            self, valid=valid, cold_valid_items=cold_valid, cold_test_items=cold_test, train_data=train_data
        )


def split(data: Interactions, protocol: Protocol) -> Split:
    """Filter, truncate and split ``data`` by leave-one-out as ``protocol`` says."""
    data = filter_interactions(data, protocol)
    starts, ends = data.offsets[:-1], data.offsets[1:]
    lengths = ends - starts
    evaluable = lengths >= 3
    train_end = np.where(evaluable, ends - 2, ends)
    users = np.flatnonzero(evaluable).astype(np.int64)
    valid = EvalSet(users, ends[users] - 2, data.items[ends[users] - 2].astype(np.int64))
    test = EvalSet(users, ends[users] - 1, data.items[ends[users] - 1].astype(np.int64))
    out = Split(data=data, protocol=protocol, train_end=train_end, valid=valid, test=test)
    return out.with_cold_items(protocol.cold_items) if protocol.cold_items else out
