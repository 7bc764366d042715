#!/usr/bin/env python3
"""Peers on a proven split: RecBole, cornac and implicit beside linkedout on MovieLens-100K.

Why: ml-100k ties many timestamps inside a user. RecBole orders a user's events by its float32
timestamp (min-max normalised for its ml-100k preset, raw seconds otherwise) with a stable sort,
so ties keep the file's row order; linkedout breaks ties by item id (`linkedout.data.interactions`).
Fed the raw file, the two sides hold out different items for hundreds of users, and a "same
protocol" comparison is not on one split.

What this script does:

1. the split proof: writes ml-100k in linkedout's order (`write_atomic`: users in order, each user's
   events by (timestamp, item id)), has RecBole build its split of that file in its own venv
   (``dataset.build()``), and asserts that every user's train sequence, validation item and test item
   equal linkedout's `split(...)` under the `recbole` protocol. The same check on the raw file order
   (the cached ``ml-100k.inter``, same three columns) counts how many users differ there. It also
   counts the same-user timestamp pairs that RecBole's float32 merges (distinct seconds, one
   float32), normalised and raw: with the file sorted by (user, timestamp, item id) a stable sort
   keeps them in linkedout's order anyway, and the per-user assertion (run for both) shows it.
2. peer runs on that file, each a child process in the peer's own venv, one JSON line per run:
   RecBole BPR / LightGCN / Pop (general models: with ``repeatable: False``, set here, RecBole
   masks the user's earlier items at evaluation) and SASRec (sequential: no masking; a converged
   run takes ~80 min here, so `--sasrec-epochs` caps it for a smoke test); cornac BPR, VBPR (the
   ml-100k caption vectors as its `ImageModality`) and TIGER (the same vectors as its
   `FeatureModality`; `--tiger-epochs` caps it); implicit BPR and ALS (a speed reference).
   Every run dumps the split it actually trained and evaluated on (RecBole: its built datasets;
   cornac: the datasets `BaseMethod.from_splits` / `NextItemEvaluation.from_splits` built from what
   was passed; implicit: its CSR matrices), and the parent asserts it equals linkedout's split.
   Each library's test NDCG@10 / HR@10 is also recomputed with numpy from the model's full score
   matrix (`_reference_metrics`) and asserted equal (RecBole's Pop excepted: mostly ties).
3. linkedout rows: ``linkedout train --model M`` on the same file under `recbole`, or under
   ``recbole[mask_history=True]`` (``M:masked``) to pair with the general peers, run with
   ``--linkedout-python`` and ``PYTHONPATH=--linkedout-src`` (the worktree under test).

The parent side (this file without ``--child``) needs linkedout (numpy, the data readers, the
feature store); each child needs only its peer's venv. Nothing here is part of linkedout's install.

Set-up used for the recorded numbers (Python 3.11; torch 2.13.0 is a CPU wheel on local disk)::

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.1 \\
        "numpy<2" "pandas<2.2" "scipy<1.13" "setuptools>=77,<81"
    python3 -m venv /tmp/cornac-venv      # cornac 3 needs numpy >= 2; implicit 0.7.3 shares it
    /tmp/cornac-venv/bin/pip install "cornac>=3,<4" "numpy>=2" implicit==0.7.3 torch==2.13.0 \\
        "transformers>=4.40"

(torch and transformers in the cornac venv: VBPR and TIGER are written in PyTorch, TIGER's T5 comes
from transformers.)

Reproduce (every invocation re-does and re-asserts the split proof first; rows merge into --out by
library, model, ranking and seed)::

    PYTHONPATH=src .venv/bin/python benchmarks/peers.py \\
        --recbole BPR --recbole LightGCN --recbole SASRec --cornac BPR --implicit bpr --implicit als \\
        --linkedout pop:masked --linkedout sasrec
    PYTHONPATH=src .venv/bin/python benchmarks/peers.py --recbole Pop --cornac VBPR --max-train-seconds 1200
    PYTHONPATH=src .venv/bin/python benchmarks/peers.py --table benchmarks/results/peers_ml100k.json

Masking: "masked" = the user's training items (and, at test, the validation item) are excluded from
the ranking, as RecBole does for general models, cornac's `ranking_eval` and implicit's
`filter_already_liked_items` do; "not masked" = RecBole's sequential default. Every row says which.
Metrics are each library's own (RecBole's evaluator, cornac's `ranking_eval`, implicit's
`ndcg_at_k` / `precision_at_k`; with one held-out item per user, precision_at_k is HR@10 because
implicit divides by min(K, relevant items)).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import provenance  # benchmarks/ is on sys.path when this file runs
from recbole_reference import BASE_CONFIG as RECBOLE_REFERENCE_BASE  # standard library only too
from recbole_reference import MODEL_CONFIG as RECBOLE_REFERENCE_MODELS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATASET_LO = "ml-100k-lo"  # linkedout's order
DATASET_RAW = "ml-100k-raw"  # the cached file's row order
CAPTION_STORE = Path("~/.cache/linkedout/features/ml-100k-caption").expanduser()
GENERAL = ("BPR", "LightGCN", "Pop")  # RecBole general models: training items masked at test
SEQUENTIAL = ("SASRec",)

# RecBole: shared by every run; the protocol part is what `recbole_reference.py` uses for SASRec, and
# forced for the general models too (their default is a random 8:1:1 split). Its SASRec-only keys
# (loss, negatives, history length, `repeatable`) go per model below.
_SEQUENTIAL_ONLY = ("loss_type", "train_neg_sample_args", "MAX_ITEM_LIST_LENGTH", "repeatable")
RECBOLE_BASE = {
    **{k: v for k, v in RECBOLE_REFERENCE_BASE.items() if k not in _SEQUENTIAL_ONLY},
    "epochs": 300,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},  # the written files have no rating
    # RecBole's ml-100k preset normalises timestamps; a dataset under another name (ours) gets its
    # sample preset, which does not, so it is set here (the proof also runs without it)
    "normalize_all": True,
}
# RecBole's own defaults (properties/model/*.yaml), repeated so the config is explicit
# `repeatable` picks RecBole's evaluation sampler: False (its default) masks each user's earlier items
# at evaluation, True (what recbole_reference.py uses for SASRec) masks nothing. General models: False.
RECBOLE_MODELS = {
    "BPR": {"embedding_size": 64, "train_batch_size": 2048, "repeatable": False},
    "LightGCN": {
        "embedding_size": 64,
        "n_layers": 2,
        "reg_weight": 1e-05,
        "train_batch_size": 2048,
        "repeatable": False,
    },
    "Pop": {"train_batch_size": 2048, "epochs": 1, "repeatable": False},
    "SASRec": {
        **RECBOLE_REFERENCE_MODELS["SASRec"],  # the same SASRec as benchmarks/recbole_reference.py
        "repeatable": True,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "MAX_ITEM_LIST_LENGTH": 50,
        "train_batch_size": 2048,
    },
}
# cornac / implicit: settings chosen once, not tuned; evaluated on validation every `eval_every`
# epochs, stopped after `patience` evaluations without improvement, best-validation weights tested.
CORNAC_MODELS = {
    "BPR": {"k": 64, "learning_rate": 0.01, "lambda_reg": 0.01, "eval_every": 5, "max_epochs": 1000},
    "VBPR": {
        "k": 32,
        "k2": 32,
        "learning_rate": 0.001,
        "lambda_w": 0.01,
        "lambda_b": 0.01,
        "lambda_e": 0.0,
        "batch_size": 512,
        "eval_every": 5,
        "max_epochs": 300,
    },
    # cornac's GRID_CONFIG (rkmeans tokenizer, Adam 5e-4, best-on-validation epoch) with the epoch
    # count from --tiger-epochs: a smoke test here, not a converged TIGER
    "TIGER": {},
}
IMPLICIT_MODELS = {
    "bpr": {
        "factors": 64,
        "learning_rate": 0.01,
        "regularization": 0.01,
        "eval_every": 5,
        "max_epochs": 1000,
    },
    "als": {"factors": 64, "regularization": 0.01, "alpha": 1.0, "eval_every": 1, "max_epochs": 100},
}


def _md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _peak_rss_mb(pid: int | str = "self") -> float | None:
    """VmHWM of a process, in MB. Not ru_maxrss: Linux carries that across execve, so a child
    started from this parent (~450 MB with linkedout loaded) would report at least the parent's size."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return round(kb / 1024, 1)


def call_measured(cmd: list[str], log: Path, **kw) -> tuple[int, float | None]:
    """Run ``cmd`` with output to ``log``; return its exit code and its peak RSS (VmHWM, polled:
    a high-water mark, so the last reading before exit holds the peak up to then)."""
    peak = None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
        while proc.poll() is None:
            peak = _peak_rss_mb(proc.pid) or peak
            time.sleep(0.2)
    return proc.returncode, peak


class _Stop(Exception):
    """Raised from a per-epoch callback to end training early (implicit has no stop hook)."""


# ==================================================================================================
# children: each runs inside its peer's venv and imports only that peer (+ numpy)
# ==================================================================================================


def _recbole_shims(threads: int) -> None:
    """RecBole 1.2.1 vs newer libraries (see recbole_reference.py): np.float, torch.load default."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]  # RecBole 1.2.1 metrics
    original = torch.load

    def load(*a, **kw):
        kw.setdefault("weights_only", False)  # RecBole reloads its own checkpoint (pickled Config)
        return original(*a, **kw)

    torch.load = load


def _recbole_split_dump(dataset, built) -> dict:
    """Per user (raw token): train items in RecBole's order, valid item, test item; for sequential
    datasets (rows are prefixes) the train targets and the valid / test histories instead."""
    uid, iid = dataset.uid_field, dataset.iid_field
    out: dict[str, dict] = {}
    sequential = hasattr(dataset, "item_list_length_field") and dataset.item_id_list_field in (
        built[0].inter_feat.columns
    )
    for part, ds in zip(("train", "valid", "test"), built, strict=True):
        users = dataset.id2token(uid, ds.inter_feat[uid].numpy())
        items = dataset.id2token(iid, ds.inter_feat[iid].numpy())
        if sequential and part != "train":
            lists = ds.inter_feat[dataset.item_id_list_field].numpy()
            lengths = ds.inter_feat[dataset.item_list_length_field].numpy()
        for row, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
            rec = out.setdefault(str(u), {"train": []})
            if part == "train":
                rec["train"].append(str(i))
            else:
                if part in rec:
                    raise AssertionError(f"user {u} has two {part} rows in RecBole's split")
                rec[part] = str(i)
                if sequential:
                    hist = dataset.id2token(iid, lists[row][: lengths[row]])
                    rec[f"{part}_history"] = [str(x) for x in hist.tolist()]
    if sequential:  # train rows are prefixes: their targets, and histories cut to the last L items
        return {"train_kind": "targets", "history_len": dataset.config["MAX_ITEM_LIST_LENGTH"], "users": out}
    return {"train_kind": "sequence", "users": out}


def _recbole_reference_metrics(model, dataset, split: dict) -> tuple[float, float]:
    """Test NDCG@10 / HR@10 of a RecBole general model recomputed from its `full_sort_predict`, with
    the targets and masks taken from the split it dumped (train + valid items masked)."""
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction

    users = list(split["users"])
    recs = [split["users"][u] for u in users]
    model.eval()
    with torch.no_grad():
        ids = torch.as_tensor(dataset.token2id(dataset.uid_field, users))
        scores = model.full_sort_predict(Interaction({dataset.uid_field: ids})).view(len(users), -1)
    scores = scores.double().numpy()
    seen = [np.append(dataset.token2id(dataset.iid_field, r["train"] + [r["valid"]]), 0) for r in recs]
    targets = np.asarray(dataset.token2id(dataset.iid_field, [r["test"] for r in recs]))
    return _reference_metrics(scores, targets, seen)  # column 0 is RecBole's padding item: masked


def child_recbole_split(spec: dict) -> dict:
    """Build RecBole's split of a file (no training) and dump it."""
    _recbole_shims(spec["threads"])
    import numpy as np
    from recbole.config import Config
    from recbole.data import create_dataset

    config = Config(model=spec["model"], dataset=spec["dataset"], config_dict=spec["config"])
    dataset = create_dataset(config)
    built = dataset.build()
    # RecBole's min-max normalised float32 timestamps, per (user, raw timestamp): the parent counts
    # the distinct seconds that became one float32
    feat = dataset.inter_feat
    return {
        "split": _recbole_split_dump(dataset, built),
        "data_file": spec["inter_file"],
        "data_md5": _md5(spec["inter_file"]),
        "n_inter": int(dataset.inter_num),
        "timestamp_dtype": str(feat[dataset.time_field].dtype),
        "n_distinct_normalised_times": int(np.unique(feat[dataset.time_field].numpy()).size),
    }


def child_recbole_run(spec: dict) -> dict:
    t_proc = time.time()
    _recbole_shims(spec["threads"])
    import numpy as np
    import recbole
    import recbole.quick_start.quick_start as qs
    import recbole.trainer.trainer as trainer_mod
    import torch
    from recbole.data.dataset import Dataset

    info: dict = {"epochs": []}
    state: dict = {"fit_start": None}

    original_build = Dataset.build

    def build(self):
        built = original_build(self)
        info["split"] = _recbole_split_dump(self, built)
        state["dataset"] = self
        return built

    Dataset.build = build
    Trainer = trainer_mod.Trainer
    original_fit, original_valid, original_save = Trainer.fit, Trainer._valid_epoch, Trainer._save_checkpoint

    def fit(self, *a, **kw):
        state["fit_start"], state["trainer"] = time.time(), self
        out = original_fit(self, *a, **kw)
        info["fit_s"] = time.time() - state["fit_start"]
        return out

    def valid_epoch(self, *a, **kw):
        score, result = original_valid(self, *a, **kw)
        info["epochs"].append([round(time.time() - state["fit_start"], 2), round(float(score), 4)])
        return score, result

    def save_checkpoint(self, epoch, *a, **kw):
        if epoch >= 0 and state["fit_start"] is not None:  # fit saves exactly when validation improves
            info["best_epoch"] = epoch
            info["s_to_best"] = round(time.time() - state["fit_start"], 2)
        return original_save(self, epoch, *a, **kw)

    Trainer.fit, Trainer._valid_epoch, Trainer._save_checkpoint = fit, valid_epoch, save_checkpoint
    res = qs.run_recbole(model=spec["model"], dataset=spec["dataset"], config_dict=spec["config"], saved=True)
    test = {k: round(float(v), 4) for k, v in res["test_result"].items()}
    reference = None
    if spec["model"] in GENERAL:  # the trainer's model holds the best checkpoint after the test
        reference = _recbole_reference_metrics(state["trainer"].model, state["dataset"], info["split"])
    return {
        "test": test,
        "ndcg10": test["ndcg@10"],
        "hr10": test["hit@10"],
        "reference_ndcg10_hr10": reference,
        "best_valid_ndcg10": round(float(res["best_valid_score"]), 4),
        "best_epoch": info.get("best_epoch"),
        "epochs_run": len(info["epochs"]),
        "s_to_best": info.get("s_to_best"),
        "fit_s": round(info.get("fit_s", float("nan")), 2),
        "total_s": round(time.time() - t_proc, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "split": info["split"],
        "data_md5": _md5(spec["inter_file"]),
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "epoch_trace": info["epochs"],
    }


def _read_split_tsv(folder: str) -> dict[str, list[tuple[str, str, float]]]:
    out = {}
    for part in ("train", "valid", "test"):
        with open(os.path.join(folder, f"{part}.tsv")) as f:
            out[part] = [(u, i, float(t)) for u, i, t in (line.rstrip("\n").split("\t") for line in f)]
    return out


def _reference_metrics(scores, targets, seen) -> tuple[float, float]:
    """NDCG@10 and HR@10 from a full score matrix, plain numpy: the peer's evaluator cross-checked.
    ``scores`` [n_users, n_items], ``targets`` [n_users] (-1 = no held-out item), ``seen``: per user
    the item columns masked from the ranking. A tie with the target counts against it."""
    import numpy as np

    ndcg, hits, n = 0.0, 0, 0
    for row, target in enumerate(targets.tolist()):
        if target < 0:
            continue
        s = scores[row].astype(np.float64).copy()
        s[seen[row]] = -np.inf
        rank = int((s >= s[target]).sum()) - 1
        n += 1
        if rank < 10:
            hits += 1
            ndcg += 1.0 / np.log2(rank + 2)
    return round(ndcg / n, 4), round(hits / n, 4)


def _early_stopping_loop(
    train_chunk, validate, snapshot, restore, eval_every, max_epochs, patience, max_seconds=None
):
    """Train ``eval_every`` epochs at a time, validate, keep the best snapshot; stop after
    ``patience`` validations without improvement, or after the first validation past
    ``max_seconds`` (then ``truncated``). Returns (best_epoch, best_valid, s_to_best, trace, fit_s,
    truncated)."""
    start = time.time()
    best, best_epoch, best_state, s_to_best, since, trace = -1.0, 0, None, 0.0, 0, []
    epoch, truncated = 0, False
    while epoch < max_epochs and since < patience and not truncated:
        train_chunk(eval_every)
        epoch += eval_every
        score = validate()
        trace.append([epoch, round(time.time() - start, 2), round(score, 4)])
        if score > best:
            best, best_epoch, best_state, since = score, epoch, snapshot(), 0
            s_to_best = round(time.time() - start, 2)
        else:
            since += 1
        truncated = max_seconds is not None and time.time() - start > max_seconds and since < patience
    restore(best_state)
    return best_epoch, best, s_to_best, trace, round(time.time() - start, 2), truncated


def child_cornac(spec: dict) -> dict:
    t_proc = time.time()
    import numpy as np

    if spec["model"] in ("VBPR", "TIGER"):
        import torch

        torch.set_num_threads(spec["threads"])
    import cornac
    from cornac.data import ImageModality
    from cornac.eval_methods import BaseMethod
    from cornac.eval_methods.base_method import ranking_eval
    from cornac.metrics import NDCG, HitRatio

    parts = _read_split_tsv(spec["splits"])
    hp = dict(CORNAC_MODELS[spec["model"]])
    eval_every, max_epochs = hp.pop("eval_every", 0), hp.pop("max_epochs", 0)
    seed, patience = spec["seed"], spec["patience"]
    ids = json.loads(Path(spec["feature_ids"]).read_text()) if spec.get("features") else None
    features = np.load(spec["features"]) if spec.get("features") else None

    if spec["model"] == "TIGER":
        return _child_cornac_tiger(spec, parts, hp, features, ids, t_proc)

    # uir triplets; exclude_unknowns=False keeps the users whose held-out item never occurs in
    # training (RecBole and linkedout rank them too): the item is then scored from its initial vector
    triplets = {p: [(u, i, 1.0) for u, i, _ in rows] for p, rows in parts.items()}
    modality = {"item_image": ImageModality(features=features, ids=ids)} if spec["model"] == "VBPR" else {}
    method = BaseMethod.from_splits(
        train_data=triplets["train"],
        test_data=triplets["test"],
        val_data=triplets["valid"],
        exclude_unknowns=False,
        seed=seed,
        verbose=False,
        **modality,
    )
    train_set, val_set, test_set = method.train_set, method.val_set, method.test_set
    # from_splits builds train, then test, then validation, so the test set's item count misses the
    # items seen only in validation; cornac 3.0.1's ranking_eval sizes its masks by that count and
    # fails on them (IndexError) unless unknowns are dropped. Every item is a candidate on the other
    # sides, so the test set is told the full count (its matrix is built lazily from it).
    test_set.num_items = val_set.num_items = method.total_items
    if spec["model"] == "BPR":
        model = cornac.models.BPR(max_iter=eval_every, seed=seed, num_threads=spec["threads"], **hp)
    else:
        model = cornac.models.VBPR(n_epochs=eval_every, seed=seed, use_gpu=False, verbose=False, **hp)
    metrics = [NDCG(k=10), HitRatio(k=10)]

    def validate() -> float:
        return float(ranking_eval(model, metrics, train_set, val_set, exclude_unknowns=False)[0][0])

    names = (
        ("u_factors", "i_factors", "i_biases")
        if spec["model"] == "BPR"
        else ("beta_item", "gamma_user", "gamma_item", "theta_user", "emb_matrix", "beta_prime")
    )

    def snapshot():
        return {n: np.copy(getattr(model, n)) for n in names}

    def restore(saved):
        for n, v in saved.items():
            setattr(model, n, v)
        if spec["model"] == "VBPR":  # its scores use these, precomputed at fit
            feats = train_set.item_image.features[: model.total_items].astype(np.float32)
            model.theta_item = feats @ model.emb_matrix
            model.visual_bias = (feats @ model.beta_prime).ravel()

    # fit() keeps existing parameters (BPR: `if self.u_factors is None`; VBPR: `_init` likewise), so
    # calling it again trains `eval_every` more epochs; VBPR's Adam moments restart at each call
    best_epoch, best_valid, s_to_best, trace, fit_s, truncated = _early_stopping_loop(
        lambda n: model.fit(train_set, val_set),
        validate,
        snapshot,
        restore,
        eval_every,
        max_epochs,
        patience,
        spec.get("max_train_seconds"),
    )
    # exclude_unknowns=False here too: its default drops the held-out items never seen in training
    test_avg, _ = ranking_eval(model, metrics, train_set, test_set, val_set=val_set, exclude_unknowns=False)
    n_users = method.total_users
    targets = np.full(n_users, -1, dtype=np.int64)
    targets[test_set.uir_tuple[0]] = test_set.uir_tuple[1]
    seen: list[list[int]] = [[] for _ in range(n_users)]
    for ds in (train_set, val_set):
        for u, i in zip(ds.uir_tuple[0].tolist(), ds.uir_tuple[1].tolist(), strict=True):
            seen[u].append(i)
    scores = np.stack([model.score(u) for u in range(n_users)])
    reference = _reference_metrics(scores, targets, seen)
    inv_u = {v: k for k, v in train_set.uid_map.items()}
    inv_i = {v: k for k, v in train_set.iid_map.items()}
    dump: dict[str, dict] = {}
    for part, ds in (("train", train_set), ("valid", val_set), ("test", test_set)):
        for u, i in zip(ds.uir_tuple[0].tolist(), ds.uir_tuple[1].tolist(), strict=True):
            rec = dump.setdefault(inv_u[u], {"train": []})
            if part == "train":
                rec["train"].append(inv_i[i])
            else:
                rec[part] = inv_i[i]
    return {
        "ndcg10": round(float(test_avg[0]), 4),
        "hr10": round(float(test_avg[1]), 4),
        "reference_ndcg10_hr10": reference,
        "best_valid_ndcg10": round(best_valid, 4),
        "best_epoch": best_epoch,
        "epochs_run": trace[-1][0] if trace else 0,
        "s_to_best": s_to_best,
        "fit_s": fit_s,
        "total_s": round(time.time() - t_proc, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "ranked_items": int(test_set.num_items),
        "truncated": truncated,
        "split": {"train_kind": "set", "users": dump},
        "settings": {**CORNAC_MODELS[spec["model"]], "patience": patience},
        "versions": {"cornac": cornac.__version__, "numpy": np.__version__},
        "epoch_trace": trace,
    }


def _child_cornac_tiger(spec, parts, hp, features, ids, t_proc) -> dict:
    """TIGER is a next-item model: one session per user. The validation session is the training
    sequence plus the validation item, the test session adds the test item; cornac's "last" mode
    ranks a session's last item given the rest (no history masking, as in RecBole's sequential
    protocol). Timestamps are the positions, so cornac's per-session time order is linkedout's."""
    import cornac
    import numpy as np
    import torch
    from cornac.data import FeatureModality
    from cornac.eval_methods import NextItemEvaluation
    from cornac.metrics import NDCG, HitRatio

    train_seq: dict[str, list[str]] = {}
    for u, i, _ in parts["train"]:
        train_seq.setdefault(u, []).append(i)
    held = {p: {u: i for u, i, _ in parts[p]} for p in ("valid", "test")}
    train_data = [(u, u, i, float(t)) for u, seq in train_seq.items() for t, i in enumerate(seq)]
    val_data, test_data = [], []
    for u, seq in train_seq.items():
        if u not in held["valid"]:
            continue
        v_seq = [*seq, held["valid"][u]]
        t_seq = [*v_seq, held["test"][u]]
        val_data += [(u, f"{u}/valid", i, float(t)) for t, i in enumerate(v_seq)]
        test_data += [(u, f"{u}/test", i, float(t)) for t, i in enumerate(t_seq)]
    method = NextItemEvaluation.from_splits(
        train_data=train_data,
        test_data=test_data,
        val_data=val_data,
        fmt="USIT",
        exclude_unknowns=False,
        seed=spec["seed"],
        verbose=False,
        item_feature=FeatureModality(features=features, ids=ids),
    )
    from cornac.models.tiger import GRID_CONFIG

    hp = {**GRID_CONFIG, **hp, "n_epochs": spec["tiger_epochs"]}
    model = cornac.models.TIGER(**hp, seed=spec["seed"], device="cpu", verbose=False)
    metrics = [NDCG(k=10), HitRatio(k=10)]
    start = time.time()
    test_result, val_result = method.evaluate(model, metrics=metrics, user_based=False, show_validation=True)
    fit_s = round(time.time() - start, 2)
    inv_u = {v: k for k, v in method.train_set.uid_map.items()}
    inv_i = {v: k for k, v in method.train_set.iid_map.items()}
    dump: dict[str, dict] = {}
    for part, ds in (("train", method.train_set), ("valid", method.val_set), ("test", method.test_set)):
        for _, [mapped], [session_items] in ds.si_iter(batch_size=1, shuffle=False):
            user = inv_u[int(ds.uir_tuple[0][mapped[0]])]
            seq = [inv_i[int(i)] for i in session_items]
            rec = dump.setdefault(user, {"train": []})
            if part == "train":
                rec["train"] = seq
            else:
                rec[part], rec[f"{part}_history"] = seq[-1], seq[:-1]
    avg = test_result.metric_avg_results
    return {
        "ndcg10": round(float(avg["NDCG@10"]), 4),
        "hr10": round(float(avg["HitRatio@10"]), 4),
        "best_valid_ndcg10": round(float(val_result.metric_avg_results["NDCG@10"]), 4),
        "best_epoch": getattr(model, "best_epoch", None),
        "epochs_run": hp["n_epochs"],
        "s_to_best": None,  # TIGER selects its best epoch inside fit and does not say when
        "fit_s": fit_s,
        "total_s": round(time.time() - t_proc, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "split": {"train_kind": "sequence", "history_len": None, "users": dump},
        "settings": hp,
        "versions": {"cornac": cornac.__version__, "torch": torch.__version__, "numpy": np.__version__},
    }


def child_implicit(spec: dict) -> dict:
    t_proc = time.time()
    import implicit
    import numpy as np
    import scipy.sparse as sp
    from implicit.evaluation import ndcg_at_k, precision_at_k

    parts = _read_split_tsv(spec["splits"])
    users = sorted({u for rows in parts.values() for u, _, _ in rows}, key=int)
    items = sorted({i for rows in parts.values() for _, i, _ in rows}, key=int)
    urow = {u: n for n, u in enumerate(users)}
    icol = {i: n for n, i in enumerate(items)}

    def matrix(*names: str) -> sp.csr_matrix:
        rows = [r for name in names for r in parts[name]]
        data = np.ones(len(rows), dtype=np.float32)
        r = [urow[u] for u, _, _ in rows]
        c = [icol[i] for _, i, _ in rows]
        return sp.csr_matrix((data, (r, c)), shape=(len(users), len(items)))

    train, valid, test, seen_at_test = (
        matrix("train"),
        matrix("valid"),
        matrix("test"),
        matrix("train", "valid"),
    )
    hp = dict(IMPLICIT_MODELS[spec["model"]])
    max_epochs, eval_every = hp.pop("max_epochs"), hp.pop("eval_every")
    common = {"random_state": spec["seed"], "num_threads": spec["threads"], "iterations": max_epochs}
    if spec["model"] == "bpr":
        model = implicit.cpu.bpr.BayesianPersonalizedRanking(**hp, **common)
    else:
        model = implicit.cpu.als.AlternatingLeastSquares(**hp, **common)
    patience = spec["patience"]
    start = time.time()
    state = {"best": -1.0, "since": 0, "trace": []}

    def callback(epoch, *_):
        if (epoch + 1) % eval_every:
            return
        score = ndcg_at_k(model, train, valid, K=10, show_progress=False, num_threads=1)
        state["trace"].append([epoch + 1, round(time.time() - start, 2), round(float(score), 4)])
        if score > state["best"]:
            state.update(best=float(score), since=0, epoch=epoch + 1, s_to_best=round(time.time() - start, 2))
            state["saved"] = (model.user_factors.copy(), model.item_factors.copy())
        else:
            state["since"] += 1
            if state["since"] >= patience:
                raise _Stop

    with contextlib.suppress(_Stop):
        model.fit(train, show_progress=False, callback=callback)
    fit_s = round(time.time() - start, 2)
    model.user_factors, model.item_factors = state["saved"]
    if hasattr(model, "_user_norms"):  # cached from the last epoch's factors
        model._user_norms = model._item_norms = None
    ndcg = ndcg_at_k(model, seen_at_test, test, K=10, show_progress=False, num_threads=1)
    hr = precision_at_k(model, seen_at_test, test, K=10, show_progress=False, num_threads=1)
    targets = np.full(len(users), -1, dtype=np.int64)
    test_coo = test.tocoo()
    targets[test_coo.row] = test_coo.col
    seen = [
        seen_at_test.indices[seen_at_test.indptr[r] : seen_at_test.indptr[r + 1]] for r in range(len(users))
    ]
    reference = _reference_metrics(np.asarray(model.user_factors @ model.item_factors.T), targets, seen)
    dump: dict[str, dict] = {}
    for part, m in (("train", train), ("valid", valid), ("test", test)):
        coo = m.tocoo()
        for r, c in zip(coo.row.tolist(), coo.col.tolist(), strict=True):
            rec = dump.setdefault(users[r], {"train": []})
            if part == "train":
                rec["train"].append(items[c])
            else:
                rec[part] = items[c]
    return {
        "ndcg10": round(float(ndcg), 4),
        "hr10": round(float(hr), 4),
        "reference_ndcg10_hr10": reference,
        "best_valid_ndcg10": round(state["best"], 4),
        "best_epoch": state.get("epoch"),
        "epochs_run": state["trace"][-1][0] if state["trace"] else 0,
        "s_to_best": state.get("s_to_best"),
        "fit_s": fit_s,
        "total_s": round(time.time() - t_proc, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "split": {"train_kind": "set", "users": dump},
        "settings": {**IMPLICIT_MODELS[spec["model"]], "patience": patience},
        "versions": {"implicit": implicit.__version__, "numpy": np.__version__},
        "epoch_trace": state["trace"],
    }


CHILDREN = {
    "recbole-split": child_recbole_split,
    "recbole": child_recbole_run,
    "cornac": child_cornac,
    "implicit": child_implicit,
}


# ==================================================================================================
# parent: linkedout's split, the files every peer reads, the comparisons
# ==================================================================================================


def linkedout_split(inter_file: Path, **protocol_overrides):
    """linkedout's `split` of an atomic file under `recbole` (+ overrides), and its per-user dump."""
    from linkedout.data.formats import load_interactions
    from linkedout.data.protocol import get_protocol, split

    data = load_interactions(inter_file, format="atomic").interactions
    s = split(data, get_protocol("recbole", **protocol_overrides))
    item_ids = s.data.item_ids.astype(str)
    users = s.data.user_ids.astype(str)
    dump: dict[str, dict] = {}
    for u in range(s.data.n_users):
        dump[users[u]] = {"train": item_ids[s.data.items[s.data.offsets[u] : s.train_end[u]]].tolist()}
    for part, eval_set in (("valid", s.valid), ("test", s.test)):
        for u, target in zip(eval_set.users.tolist(), eval_set.targets.tolist(), strict=True):
            dump[users[u]][part] = str(item_ids[target])
    return s, dump


def compare_splits(ours: dict[str, dict], theirs: dict) -> dict:
    """Users whose train / valid / test differ between linkedout's dump and a peer's.

    ``train_kind`` of the peer's dump: ``sequence`` (ordered list, compared in order), ``set``
    (compared as multisets: the peer keeps no order, e.g. a CSR matrix) or ``targets`` (RecBole's
    sequential datasets: one training row per prefix, so the targets are ``train[1:]``, and the
    validation / test rows carry their histories, compared with linkedout's cut to ``history_len``)."""
    kind, cut = theirs["train_kind"], theirs.get("history_len")
    peer = theirs["users"]
    counts = {
        "users": len(ours),
        "missing_on_peer": len(set(ours) - set(peer)),
        "extra_on_peer": len(set(peer) - set(ours)),
        "train_differs": 0,
        "valid_differs": 0,
        "test_differs": 0,
        "history_differs": 0,
    }
    for user in set(ours) & set(peer):
        a, b = ours[user], peer[user]
        counts["valid_differs"] += a.get("valid") != b.get("valid")
        counts["test_differs"] += a.get("test") != b.get("test")
        if kind == "set":
            counts["train_differs"] += sorted(a["train"]) != sorted(b["train"])
        elif kind == "targets":
            counts["train_differs"] += a["train"][1:] != b["train"]
        else:
            counts["train_differs"] += a["train"] != b["train"]
        if "valid_history" in b:
            valid_history = a["train"]
            test_history = [*a["train"], a["valid"]]
            if cut:
                valid_history, test_history = valid_history[-cut:], test_history[-cut:]
            counts["history_differs"] += (
                b["valid_history"] != valid_history or b["test_history"] != test_history
            )
    counts["identical"] = not any(v for k, v in counts.items() if k != "users")
    return counts


def write_raw_order_file(source: Path, folder: Path, name: str) -> Path:
    """The cached file's rows, in its row order, with linkedout's three columns (rating dropped)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.inter"
    with open(source) as f, open(out, "w") as g:
        header = f.readline().rstrip("\n").split("\t")
        cols = [header.index(c) for c in ("user_id:token", "item_id:token", "timestamp:float")]
        g.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            g.write("\t".join(parts[c] for c in cols) + "\n")
    return out


def float32_merges(data) -> dict:
    """Same-user neighbours (in linkedout's order) whose distinct timestamps become one float32 in
    RecBole: min-max normalised ((t - min) / (max - min) in float64, then float32: what its ml-100k
    preset does, `normalize_all: True`) and raw (a dataset without that preset keeps the seconds as
    float32, whose spacing at ~8.9e8 s is 64 s)."""
    import numpy as np

    t = data.timestamps.astype(np.float64)
    same_user = np.ones(len(t) - 1, dtype=bool)
    same_user[data.offsets[1:-1] - 1] = False  # the pair across a user boundary
    raw_tie = t[1:] == t[:-1]
    out = {"same_user_equal_timestamps": int((raw_tie & same_user).sum())}
    for name, as32 in (
        ("normalised", ((t - t.min()) / (t.max() - t.min())).astype(np.float32)),
        ("raw", t.astype(np.float32)),
    ):
        merged = (as32[1:] == as32[:-1]) & ~raw_tie & same_user
        out[name] = {
            "distinct_seconds_merged": int(merged.sum()),
            "distinct_float32_values": int(np.unique(as32).size),
        }
    return out


def write_peer_inputs(s, workdir: Path) -> tuple[Path, Path, Path]:
    """train / valid / test TSVs (user, item, timestamp; linkedout's per-user order) and the caption
    vectors as .npy aligned to a JSON list of item ids, for the cornac and implicit children."""
    import numpy as np

    from linkedout.models.features import ItemFeatures

    folder = workdir / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    users = s.data.user_ids.astype(str)
    items = s.data.item_ids.astype(str)
    with open(folder / "train.tsv", "w") as f:
        for u in range(s.data.n_users):
            for pos in range(int(s.data.offsets[u]), int(s.train_end[u])):
                f.write(f"{users[u]}\t{items[s.data.items[pos]]}\t{s.data.timestamps[pos]}\n")
    for part, eval_set in (("valid", s.valid), ("test", s.test)):
        with open(folder / f"{part}.tsv", "w") as f:
            for u, end in zip(eval_set.users.tolist(), eval_set.history_end.tolist(), strict=True):
                f.write(f"{users[u]}\t{items[s.data.items[end]]}\t{s.data.timestamps[end]}\n")
    features = ItemFeatures.from_store(CAPTION_STORE, s.data.item_ids)
    if features.n_missing:
        raise SystemExit(f"{CAPTION_STORE}: no caption vector for {features.n_missing} ml-100k items")
    vectors = features.tokens.float().numpy().reshape(s.data.n_items, -1)
    np.save(workdir / "caption.npy", vectors.astype(np.float32))
    (workdir / "caption_ids.json").write_text(json.dumps(items.tolist()))
    return folder, workdir / "caption.npy", workdir / "caption_ids.json"


def run_child(python: str, kind: str, spec: dict, workdir: Path, threads: int) -> tuple[dict, list[str]]:
    """Start this file as ``--child`` under ``python``; return its JSON answer and its command."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "kind": kind, "threads": threads, "out": str(workdir / "result.json")}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [python, str(Path(__file__).resolve()), "--child", str(spec_path)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)  # the child's venv, nothing of linkedout's
    rc, _ = call_measured(cmd, workdir / "stdout.log", cwd=workdir, env=env)
    if rc != 0 or not (workdir / "result.json").exists():
        tail = (workdir / "stdout.log").read_text()[-3000:]
        raise RuntimeError(f"{kind} child failed (exit {rc}); log {workdir / 'stdout.log'}:\n{tail}")
    return json.loads((workdir / "result.json").read_text()), cmd


def recbole_config(model: str, dataset_dir: Path, workdir: Path, seed: int, epochs: int | None) -> dict:
    cfg = {**RECBOLE_BASE, **RECBOLE_MODELS[model]}
    cfg.update({"seed": seed, "data_path": str(dataset_dir), "checkpoint_dir": str(workdir / "saved")})
    if epochs is not None:
        cfg["epochs"] = epochs
    return cfg


def split_proof(args, workdir: Path) -> tuple[dict, Path]:
    """linkedout's split vs RecBole's, on linkedout's order (must be identical) and on the raw order."""
    from linkedout.data.formats import load_interactions, write_atomic
    from linkedout.samples import resolve_dataset

    cached = Path(resolve_dataset("ml-100k"))
    cached_inter = cached / "ml-100k.inter" if cached.is_dir() else cached
    data_dir = workdir / "data"
    loaded = load_interactions(cached_inter, format="atomic").interactions
    lo_file = write_atomic(loaded, data_dir / DATASET_LO, DATASET_LO)
    raw_file = write_raw_order_file(cached_inter, data_dir / DATASET_RAW, DATASET_RAW)
    _, ours = linkedout_split(lo_file)
    _, ours_raw = linkedout_split(raw_file)
    if ours != ours_raw:  # linkedout's own split must not depend on the file's row order
        raise AssertionError("linkedout's split of the raw-order file differs from the ordered file's")
    merges = float32_merges(load_interactions(lo_file, format="atomic").interactions)
    proof: dict = {
        "ordered_file": str(lo_file),
        "ordered_file_md5": _md5(lo_file),
        "raw_order_file": str(raw_file),
        "raw_order_source": str(cached_inter),
        "raw_order_source_md5": _md5(cached_inter),
        "timestamps": merges,
    }
    for name, file, model, overrides in (
        ("recbole_general_ordered", lo_file, "BPR", {}),
        ("recbole_sequential_ordered", lo_file, "SASRec", {}),
        ("recbole_general_ordered_unnormalised", lo_file, "BPR", {"normalize_all": None}),
        ("recbole_general_raw_order", raw_file, "BPR", {}),
        ("recbole_general_raw_order_unnormalised", raw_file, "BPR", {"normalize_all": None}),
    ):
        wd = workdir / "proof" / name
        spec = {
            "model": model,
            "dataset": file.stem,
            "inter_file": str(file),
            "config": {**recbole_config(model, data_dir, wd, 0, None), **overrides},
        }
        t = time.time()
        got, _ = run_child(args.recbole_python, "recbole-split", spec, wd, args.threads)
        counts = compare_splits(ours, got["split"])
        normalised = "unnormalised" not in name
        proof[name] = {
            "model_for_config": model,
            "timestamps": "min-max normalised, float32" if normalised else "raw seconds, float32",
            **counts,
            "recbole_data_md5": got["data_md5"],
            "recbole_n_inter": got["n_inter"],
            "recbole_distinct_float32_times": got["n_distinct_normalised_times"],
            "seconds": round(time.time() - t, 1),
        }
        print(json.dumps({"proof": name, **proof[name]}), flush=True)
        expected = merges["normalised" if normalised else "raw"]["distinct_float32_values"]
        if "general" in name and got["n_distinct_normalised_times"] != expected:
            raise AssertionError(f"{name}: RecBole's float32 timestamps are not what float32_merges assumes")
    for name in (
        "recbole_general_ordered",
        "recbole_sequential_ordered",
        "recbole_general_ordered_unnormalised",
    ):
        if not proof[name]["identical"]:
            raise AssertionError(f"{name}: RecBole's split differs from linkedout's: {proof[name]}")
    return proof, lo_file


# ==================================================================================================
# parent: runs
# ==================================================================================================


def _row(side: str, model: str, masking: str, seed: int, got: dict, cmd: list[str], **extra) -> dict:
    keep = (
        "ndcg10",
        "hr10",
        "best_valid_ndcg10",
        "best_epoch",
        "epochs_run",
        "s_to_best",
        "fit_s",
        "total_s",
    )
    row = {"side": side, "model": model, "masking": masking, "seed": seed}
    row.update({k: got.get(k) for k in keep})
    row["peak_rss_mb"] = got.get("peak_rss_mb")
    row.update(extra)
    row["child_command"] = " ".join(cmd)
    for k in (
        "truncated",
        "reference_ndcg10_hr10",
        "settings",
        "versions",
        "ranked_items",
        "test",
        "epoch_trace",
    ):
        if k in got:
            row[k] = got[k]
    return row


def run_peer(args, side: str, model: str, seed: int, ours: dict, inputs: dict, workdir: Path) -> dict:
    wd = workdir / "runs" / f"{side}-{model}-seed{seed}"
    if side == "recbole":
        smoke = model in SEQUENTIAL
        epochs = args.sasrec_epochs if smoke else None
        spec = {
            "model": model,
            "dataset": inputs["lo_file"].stem,
            "inter_file": str(inputs["lo_file"]),
            "config": recbole_config(model, inputs["lo_file"].parent.parent, wd, seed, epochs),
        }
        got, cmd = run_child(args.recbole_python, "recbole", spec, wd, args.threads)
        masking = (
            "not masked (sequential)" if model in SEQUENTIAL else "masked (train items; + valid at test)"
        )
        extra = {"smoke_epoch_cap": epochs} if smoke else {}
    else:
        spec = {
            "model": model,
            "seed": seed,
            "patience": args.patience,
            "tiger_epochs": args.tiger_epochs,
            "max_train_seconds": args.max_train_seconds,
            "splits": str(inputs["splits"]),
            "features": str(inputs["features"]) if model in ("VBPR", "TIGER") else None,
            "feature_ids": str(inputs["feature_ids"]) if model in ("VBPR", "TIGER") else None,
        }
        python = args.cornac_python if side == "cornac" else args.implicit_python
        got, cmd = run_child(python, side, spec, wd, args.threads)
        masking = "not masked (next-item)" if model == "TIGER" else "masked (train items; + valid at test)"
        extra = {"smoke_epoch_cap": args.tiger_epochs} if model == "TIGER" else {}
    check = compare_splits(ours, got["split"])
    if not check["identical"]:
        raise AssertionError(f"{side} {model}: the split it used differs from linkedout's: {check}")
    reference = got.get("reference_ndcg10_hr10")
    # the library's metrics vs plain numpy on the same scores, targets and masks; Pop is left out:
    # its scores are mostly ties, which each evaluator breaks its own way
    if reference is not None and model != "Pop":
        gap = max(abs(reference[0] - got["ndcg10"]), abs(reference[1] - got["hr10"]))
        if gap > 2e-4:
            raise AssertionError(
                f"{side} {model}: its metrics {got['ndcg10']}, {got['hr10']} vs numpy {reference}"
            )
    return _row(side, model, masking, seed, got, cmd, split_check=check, **extra)


def run_linkedout(args, spec_text: str, seed: int, lo_file: Path, workdir: Path) -> dict:
    """``linkedout train`` on the ordered file; ``MODEL:masked`` adds ``--mask-history``;
    ``MODEL+caption`` fuses the ml-100k caption vectors with the ID embedding (VBPR's pairing:
    ``--item-encoder caption --features CAPTION_STORE --id-fusion``)."""
    model, _, flag = spec_text.partition(":")
    if flag not in ("", "masked"):
        raise SystemExit(f"--linkedout {spec_text!r}: MODEL[+caption] or MODEL[+caption]:masked")
    family, _, feature = model.partition("+")
    if feature not in ("", "caption"):
        raise SystemExit(f"--linkedout {spec_text!r}: the only feature suffix is +caption")
    content = []
    if feature:
        content = ["--item-encoder", "caption", "--features", str(CAPTION_STORE), "--id-fusion"]
    wd = workdir / "runs" / f"linkedout-{model}{'-masked' if flag else ''}-seed{seed}"
    wd.mkdir(parents=True, exist_ok=True)
    out = wd / "result.json"
    cmd = [
        args.linkedout_python,
        "-c",
        "import sys; from linkedout.cli import app; sys.argv[0] = 'linkedout'; app()",
        "train",
        "--dataset",
        str(lo_file),
        "--format",
        "atomic",
        "--protocol",
        "recbole",
        "--model",
        family,
        *content,
        "--seed",
        str(seed),
        "--json",
        str(out),
        "--quiet",
        *(["--mask-history"] if flag else []),
        *args.linkedout_arg,
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(args.linkedout_src).resolve()))
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t = time.time()
    rc, peak = call_measured(cmd, wd / "stdout.log", cwd=wd, env=env)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"linkedout {spec_text} failed (exit {rc}); log {wd / 'stdout.log'}")
    got = json.loads(out.read_text())
    metrics = got["metrics"]
    return {
        "side": "linkedout",
        "model": model,
        "masking": "masked (train items; + valid at test)" if flag else "not masked",
        "seed": seed,
        "ndcg10": round(metrics["NDCG@10"], 4),
        "hr10": round(metrics["HR@10"], 4),
        "best_valid_ndcg10": round(got["valid_metrics"].get("NDCG@10", float("nan")), 4),
        "best_epoch": got["best_epoch"],
        "epochs_run": len(got.get("history", [])),
        "s_to_best": round(got["seconds_to_best"], 2),
        "fit_s": round(got["train_seconds"], 2),
        "total_s": round(time.time() - t, 2),
        "peak_rss_mb": peak,  # VmHWM polled by this parent (run.json's ru_maxrss includes the parent's)
        "protocol": got["protocol"]["description"],
        "split_check": "by construction: linkedout's own split of the same file",
        "child_command": " ".join([*cmd[:2], "<linkedout.cli>", *cmd[3:]]),
        "linkedout_src": str(Path(args.linkedout_src).resolve()),
    }


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def print_table(path: Path) -> None:
    """The runs of a results file as the markdown table docs/benchmarks.md shows."""
    results = json.loads(path.read_text())
    print(
        "| library | model | ranking | NDCG@10 | HR@10 | numpy re-check | best epoch | epochs run "
        "| s to best | total s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        ref = r.get("reference_ndcg10_hr10")
        cap = r.get("smoke_epoch_cap")
        model = f"{r['model']} (smoke: {cap} epoch{'s' if cap != 1 else ''})" if cap else r["model"]
        if r.get("truncated"):
            model += " (time cap: truncated)"
        cells = [
            r["side"],
            model,
            r["masking"],
            f"{r['ndcg10']:.4f}",
            f"{r['hr10']:.4f}",
            f"{ref[0]:.4f} / {ref[1]:.4f}" if ref else "-",
            r["best_epoch"],
            r["epochs_run"],
            r["s_to_best"] if r["s_to_best"] is not None else "-",
            r["total_s"],
            r["peak_rss_mb"],
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recbole", action="append", default=[], choices=[*GENERAL, *SEQUENTIAL])
    ap.add_argument("--cornac", action="append", default=[], choices=sorted(CORNAC_MODELS))
    ap.add_argument("--implicit", action="append", default=[], choices=sorted(IMPLICIT_MODELS))
    ap.add_argument(
        "--linkedout",
        action="append",
        default=[],
        metavar="MODEL[:masked]",
        help="linkedout train --model MODEL (repeatable); ':masked' = recbole protocol with history masked",
    )
    ap.add_argument("--linkedout-arg", action="append", default=[], help="extra `linkedout train` argument")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS / OpenMP threads per child")
    ap.add_argument("--patience", type=int, default=10, help="cornac / implicit: validations without gain")
    ap.add_argument("--sasrec-epochs", type=int, default=1, help="RecBole SASRec epoch cap (smoke test)")
    ap.add_argument("--tiger-epochs", type=int, default=1, help="cornac TIGER epochs (smoke test)")
    ap.add_argument(
        "--max-train-seconds",
        type=float,
        default=None,
        help="cornac BPR / VBPR: stop after the first validation past this (best epoch still tested; "
        "the row says truncated)",
    )
    ap.add_argument("--recbole-python", default="/tmp/recbole-venv/bin/python")
    ap.add_argument("--cornac-python", default="/tmp/cornac-venv/bin/python")
    ap.add_argument("--implicit-python", default="/tmp/cornac-venv/bin/python")
    ap.add_argument("--linkedout-python", default="/work/main/.venv/bin/python")
    ap.add_argument("--linkedout-src", default=str(REPO / "src"), help="PYTHONPATH of the linkedout runs")
    ap.add_argument("--workdir", default=None, help="scratch folder (files, logs, checkpoints)")
    ap.add_argument("--out", default=str(HERE / "results" / "peers_ml100k.json"))
    ap.add_argument("--table", metavar="RESULTS", help="print a results file as a markdown table and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.table:
        print_table(Path(args.table))
        return 0

    if args.child:
        spec = json.loads(Path(args.child).read_text())
        result = CHILDREN[spec["kind"]](spec)
        Path(spec["out"]).write_text(json.dumps(result))
        return 0

    made_by = provenance(None if argv is None else [sys.argv[0], *argv])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="peers-ml100k-"))
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    proof, lo_file = split_proof(args, workdir)
    results["provenance"] = made_by  # the latest invocation; each run row carries its own
    results["split_proof"] = {**proof, "provenance": made_by}
    results["cpu_flags"] = made_by["machine"]["cpu_flags"]
    results["machine_note"] = (
        "busy machine: 2 cores shared with 3 other engineers; timings are not speed claims"
    )
    _save(out_path, results)

    s, ours = linkedout_split(lo_file)
    splits, features, feature_ids = write_peer_inputs(s, workdir)
    inputs = {"lo_file": lo_file, "splits": splits, "features": features, "feature_ids": feature_ids}
    jobs = [("recbole", m) for m in args.recbole]
    jobs += [("cornac", m) for m in args.cornac] + [("implicit", m) for m in args.implicit]
    status = 0
    for seed in args.seeds:
        for side, model in [*jobs, *(("linkedout", m) for m in args.linkedout)]:
            try:
                if side == "linkedout":
                    row = run_linkedout(args, model, seed, lo_file, workdir)
                else:
                    row = run_peer(args, side, model, seed, ours, inputs, workdir)
            except (RuntimeError, AssertionError) as e:
                print(json.dumps({"side": side, "model": model, "seed": seed, "error": str(e)}), flush=True)
                status = 1
                continue
            row["provenance"] = made_by
            key = (row["side"], row["model"], row["masking"], row["seed"])
            results["runs"] = [
                r for r in results["runs"] if (r["side"], r["model"], r["masking"], r["seed"]) != key
            ] + [row]
            _save(out_path, results)
            print(
                json.dumps({k: v for k, v in row.items() if k not in ("epoch_trace", "provenance")}),
                flush=True,
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
