"""An experiment end to end: load a log, split it under a protocol, train, pick the best validation
epoch, evaluate on test, and save a run directory that `linkedout evaluate` can re-score.

Run directory layout::

    run.json            dataset spec, protocol, model + train config, metrics, timings
    model.safetensors   best-validation weights (gradient-trained models only)
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from linkedout.data.protocol import Protocol, Split, split
from linkedout.models import ModelConfig, Recommender, build_model
from linkedout.train.evaluate import evaluate
from linkedout.train.trainer import TrainConfig, TrainResult, seed_everything, train

if TYPE_CHECKING:
    from linkedout.data.shards import ShardedLog
    from linkedout.train.distributed import World


# families that train from windows alone (no per-user table, no closed-form pass over the whole log)
STREAMED_MODELS = ("sasrec", "gru4rec", "mean", "twotower")


@dataclass
class DatasetSpec:
    """How to reload the same events: a sample name (``ml-100k``) or a path, plus reader options;
    and/or an event store the server logged to (``events``: SQLite path or URL), read as watch events
    appended to the log (or alone when ``path`` is None).

    The name is kept as typed (run.json stays portable across machines and caches) and resolved to the
    cached path by `load`, fetching the sample on first use. ``events_upto`` pins the event store's
    feed position read at training time, so `linkedout evaluate --run` re-reads the same events
    even after the server logged more.

    A ``path`` that is a sharded log (a directory written by `linkedout shard`, see
    linkedout/data/shards.py) streams: training reads one shard at a time, and validation and test
    score a seeded sample of ``eval_users`` users (default 10,000) read from as few shards as hold them."""

    path: str | None = "ml-100k"
    format: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    min_rating: float | None = None
    events: str | None = None
    events_upto: int | None = None
    eval_users: int | None = None

    def sharded(self):
        """The `ShardedLog` at ``path`` when it is one, else None."""
        from linkedout.data.shards import ShardedLog, is_sharded_log

        if self.path is None or not is_sharded_log(self.path):
            return None
        if self.events is not None:
            raise ValueError(f"{self.path} is a sharded log: it cannot be extended with --events")
        return ShardedLog.open(self.path)

    def load(self):
        from linkedout.data.formats import load_interactions
        from linkedout.data.shards import is_sharded_log
        from linkedout.samples import resolve_dataset

        if self.path is None and self.events is None:
            raise ValueError("a dataset needs a log (--dataset), an event store (--events), or both")
        if self.path is not None and is_sharded_log(self.path):  # the manifest only, not the item table
            raise ValueError(
                f"{self.path} is a sharded log: it streams in training and is never loaded whole"
            )
        base = None
        if self.path is not None:
            base = load_interactions(
                resolve_dataset(self.path),
                format=self.format,
                user_col=self.user_col,
                item_col=self.item_col,
                time_col=self.time_col,
                min_rating=self.min_rating,
            )
        if self.events is None:
            return base
        from linkedout.events.reader import dataset_with_events, read_watch_rows

        rows = read_watch_rows(self.events)
        if self.events_upto is None:
            # the first load pins what it read (run.json stores it): re-evaluation sees the same events
            self.events_upto = int(max(rows.column("seq").to_pylist()))
        else:
            import pyarrow.compute as pc

            rows = rows.filter(pc.less_equal(rows.column("seq"), self.events_upto))
        return dataset_with_events(base, rows, self.events)


@dataclass
class RunResult:
    dataset: str
    protocol: dict
    model: str
    seed: int
    metrics: dict[str, float]
    valid_metrics: dict[str, float]
    best_epoch: int
    train_seconds: float
    seconds_to_best: float
    peak_rss_mb: float
    data: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    dataset_spec: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    item_encoder: str = "id"
    metrics_warm: dict[str, float] = field(default_factory=dict)  # cold-start protocols only
    metrics_cold: dict[str, float] = field(default_factory=dict)
    metrics_cold_among_cold: dict[str, float] = field(default_factory=dict)  # ranked among cold items only
    world_size: int = 1  # training processes (DDP ranks); the metrics are rank 0's, computed once
    # the feature store the item encoder read: path, fingerprint, (L, S, D), items it had no row for
    features: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def prepare_split(spec: DatasetSpec, protocol: Protocol, log: ShardedLog | None = None) -> tuple[Split, str]:
    """The split a run trains and evaluates on; for a sharded log (``log``, when the caller opened it
    already), the evaluation sample only."""
    log = log if log is not None else spec.sharded()
    if log is not None:
        from linkedout.data.shards import DEFAULT_EVAL_USERS

        return log.eval_split(protocol, spec.eval_users or DEFAULT_EVAL_USERS), log.name
    loaded = spec.load()
    return split(loaded.interactions, protocol), loaded.name


def load_features(model_config: ModelConfig, data_split: Split):
    """ItemFeatures for a content item encoder (None for id-only), aligned to the split's items."""
    if model_config.item_encoder == "id" or model_config.name in ("pop", "itemknn"):
        return None
    if not model_config.features:
        raise ValueError(f"item encoder {model_config.item_encoder!r} needs --features STORE")
    from linkedout.models.features import ItemFeatures

    features = ItemFeatures.from_store(model_config.features, data_split.data.item_ids)
    if not bool(features.present.any()):
        sample = ", ".join(repr(str(i)) for i in data_split.data.item_ids[:3].tolist())
        raise ValueError(
            f"feature store {model_config.features} has no row for any of the dataset's "
            f"{data_split.n_items} items (e.g. {sample}): is it the store of another catalogue?"
        )
    return features


def features_record(features) -> dict:
    """What run.json keeps of the feature store a run read (`check_features` compares it later)."""
    if features is None:
        return {}
    return {
        "store": features.source,
        "fingerprint": features.fingerprint,
        "shape": list(features.shape),
        "missing_items": features.n_missing,
    }


def check_features(saved: dict, features, run_dir: Path) -> None:
    """Refuse to rebuild a run on a feature store that is not the one it trained on: its weights were
    fitted to those features, and a re-extracted store (another backbone, layers, prompt) would be
    scored silently with the wrong ones."""
    if not saved or features is None:
        return  # a run from before run.json recorded its features, or an ID-only one
    if saved.get("fingerprint") and saved["fingerprint"] != features.fingerprint:
        raise ValueError(
            f"feature store {features.source} has fingerprint {features.fingerprint[:12]}, but run "
            f"{run_dir} was trained on {saved['fingerprint'][:12]} (from {saved.get('store')}): "
            "the store was re-extracted with other settings since; retrain, or point --features at "
            "the store the run used"
        )
    if saved.get("shape") and list(saved["shape"]) != list(features.shape):
        raise ValueError(
            f"feature store {features.source} has tokens of shape {list(features.shape)}, run {run_dir} "
            f"was trained on {saved['shape']}"
        )


def build_for_split(
    model_config: ModelConfig, data_split: Split, check=None, train_counts: np.ndarray | None = None
) -> tuple[Recommender, Split, dict]:
    """The model for ``data_split`` and `features_record` of its features; items that have no features
    and nothing to fall back on (no ID fusion) are excluded from ranking, and the returned split says
    so. ``check(features)`` may refuse the features before anything is built. ``train_counts`` (items'
    training events) replaces the split's own when it trains on more than it holds (a sharded log)."""
    features = load_features(model_config, data_split)
    if check is not None:
        check(features)
    counts = data_split.train_item_counts() if train_counts is None else train_counts
    model = build_model(
        model_config,
        data_split.n_items,
        data_split.protocol.max_seq_len,
        counts,
        features,
        n_users=data_split.data.n_users,
    )
    if features is not None and features.n_missing:
        fallback = model_config.id_fusion or model_config.item_encoder == "dff"
        if not fallback:
            missing = np.flatnonzero(~features.present.numpy())
            data_split = replace(data_split, excluded_items=np.union1d(data_split.excluded_items, missing))
    unscorable = model.unscorable_items().numpy()
    if len(unscorable):
        data_split = replace(data_split, excluded_items=np.union1d(data_split.excluded_items, unscorable))
    return model, data_split, features_record(features)


def run_experiment(
    spec: DatasetSpec,
    protocol: Protocol,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    prepared: tuple[Split, str] | None = None,
    world: World | None = None,
) -> RunResult:
    """Every rank of a distributed run (``world``) calls this; rank 0 evaluates test and writes the
    run directory once, and every rank returns rank 0's result."""
    seed_everything(train_config.seed)
    log = spec.sharded()  # streamed: ``prepared`` (if given) is then its evaluation sample
    if log is not None and model_config.name not in STREAMED_MODELS:
        raise ValueError(
            f"model {model_config.name!r} cannot train from a sharded log (it needs every event at once "
            f"or a vector per user); streamed training serves {', '.join(STREAMED_MODELS)}"
        )
    data_split, name = prepared or prepare_split(spec, protocol, log)
    counts = log.train_counts if log is not None else None
    model, data_split, features = build_for_split(model_config, data_split, train_counts=counts)
    label = f"train {model_config.name}"
    if model_config.item_encoder != "id":
        label += f" + {model_config.item_encoder}" + (" + id" if model_config.id_fusion else "")
    batches = log.stream(protocol) if log is not None else None
    result: TrainResult = train(
        model,
        data_split,
        train_config,
        run_dir=run_dir,
        progress=progress,
        label=label,
        world=world,
        batches=batches,
    )
    if world is not None and not world.is_main:
        return world.share(None)  # rank 0 holds the best weights: it scores test, once
    started = time.perf_counter()
    kw = {"batch_size": train_config.eval_batch_size, "device": train_config.device}
    test = evaluate(model, data_split, "test", **kw)
    out = RunResult(
        dataset=name,
        protocol=protocol.to_dict(),
        model=model_config.name,
        item_encoder=model_config.item_encoder,
        seed=train_config.seed,
        metrics=test,
        valid_metrics=result.best_valid,
        best_epoch=result.best_epoch,
        train_seconds=result.train_seconds,
        seconds_to_best=result.seconds_to_best,
        peak_rss_mb=peak_rss_mb(),
        data=data_split.summary(),
        model_config=model_config.to_dict(),
        train_config=asdict(train_config),
        dataset_spec=asdict(spec),
        history=result.history,
        world_size=world.size if world is not None else 1,
        features=features,
    )
    if data_split.is_cold_start:
        out.metrics_warm = evaluate(model, data_split, "test", subset="warm", **kw)
        out.metrics_cold = evaluate(model, data_split, "test", subset="cold", **kw)
        out.metrics_cold_among_cold = evaluate(model, data_split, "test", subset="cold-among-cold", **kw)
    if log is not None:  # the log trained on; the split above is its evaluation sample
        out.data = {**log.summary(), "evaluated": out.data}
    out.data["excluded_items"] = len(data_split.excluded_items)
    out.data["test_seconds"] = time.perf_counter() - started
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(out.to_json(), indent=1))
    if world is not None:
        world.share(out)  # after run.json: the other ranks return once the run directory is complete
    return out


def load_run(run_dir: Path) -> tuple[Recommender, Split, RunResult]:
    """Rebuild the model of a saved run with its best weights, and its split, for re-scoring."""
    from safetensors.torch import load_file

    path = run_dir / "run.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a directory written by `linkedout train --run-dir`?"
        )
    saved = RunResult(**json.loads(path.read_text()))
    protocol = Protocol.from_dict(saved.protocol)
    spec = DatasetSpec(**saved.dataset_spec)
    log = spec.sharded()
    data_split, _ = prepare_split(spec, protocol, log)
    config = ModelConfig.from_dict(saved.model_config)
    model, data_split, _ = build_for_split(
        config,
        data_split,
        check=lambda f: check_features(saved.features, f, run_dir),
        train_counts=log.train_counts if log is not None else None,
    )
    model.fit(data_split)
    if model.trainable:
        model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    model.eval()
    return model, data_split, saved
