#!/usr/bin/env python3
"""Reference numbers from RecBole's own SASRec / GRU4Rec on MovieLens-100K.

This script sets nothing up. It needs an existing virtualenv with RecBole in
it; its python is given with ``--python``. Each run is started as a separate
process under that python (this same file, in ``--child`` mode), which calls
``recbole.quick_start.run_recbole`` with the config below and prints one JSON
line with the test metrics, the best validation NDCG@10, the best epoch, wall
seconds (total, and from the start of training to the end of the best
epoch's validation) and the peak RSS. Runs go one after another.

The venv used for the reported numbers (Python 3.11)::

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.1 \
        "numpy<2" "pandas<2.2" "scipy<1.13" "setuptools>=77,<81"

(setuptools<81 because ray, which recbole.quick_start imports, still needs
``pkg_resources``.)

Reproduce::

    python3 benchmarks/recbole_reference.py --python /tmp/recbole-venv/bin/python \
        --run SASRec:2048:0 --run SASRec:256:0 --run GRU4Rec:2048:0 --run GRU4Rec:256:0

Cost: RecBole expands every prefix into a training sequence (~97k of length 50 per epoch). One
SASRec epoch took 178 s on the idle 2 cores (bs 2048, 2 threads) and 210-250 s with one thread
while another job used the other core (bs 256); on a busier machine 500-700 s. The converged bs-256
runs recorded in docs/benchmarks.md (patience 10; seed 0 stopped after 18 epochs, seed 1 after 27)
took 81 and 92 minutes with one thread.

A run is ``MODEL:TRAIN_BATCH_SIZE:SEED``. Only the parent side (the default
mode) uses the standard library alone; the child side imports recbole.

Protocol (RecBole's sequential default): all 100,000 ml-100k interactions as
implicit feedback, no rating/value filter and no user/item count filter
(``[0,inf)``), chronological leave-one-out per user (``LS: valid_and_test``,
``order: TO``, ``group_by: user``), full ranking over all 1,682 items; for
sequential models RecBole's FullSortEvalDataLoader masks only the padding
item, so items the user already interacted with stay in the candidate set.
``MAX_ITEM_LIST_LENGTH: 50``, CE loss over all items, no negative sampling.

Compatibility shims applied in the child only (RecBole 1.2.1 vs. newer libs):
``np.float = float`` (removed in numpy 1.24, used by RecBole's MRR/MAP) and
``torch.load(..., weights_only=False)`` by default (torch >= 2.6 changed the
default; RecBole loads its own best checkpoint, which pickles its Config).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

from provenance import provenance  # standard library only, like this parent side

DEFAULT_DATA_PATH = os.path.expanduser("~/.cache/linkedout")

# Shared by every run. Model hyper-parameters are RecBole's own defaults
# (properties/model/SASRec.yaml, GRU4Rec.yaml); they are repeated here so the
# config is explicit.
BASE_CONFIG = {
    "epochs": 200,
    "stopping_step": 10,
    "eval_step": 1,
    "learning_rate": 0.001,
    "learner": "adam",
    "weight_decay": 0.0,
    "loss_type": "CE",
    "train_neg_sample_args": None,
    "MAX_ITEM_LIST_LENGTH": 50,
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    "val_interval": None,
    "rm_dup_inter": None,
    "filter_inter_by_user_or_item": True,
    "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)",
    "eval_args": {
        "split": {"LS": "valid_and_test"},
        "order": "TO",
        "group_by": "user",
        "mode": "full",
    },
    "repeatable": True,
    "metrics": ["Hit", "NDCG", "MRR"],
    "topk": [10, 20],
    "valid_metric": "NDCG@10",
    "valid_metric_bigger": True,
    "eval_batch_size": 4096,
    "reproducibility": True,
    "use_gpu": False,
    "show_progress": False,
    "state": "INFO",
}

MODEL_CONFIG = {
    "SASRec": {
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
    },
    "GRU4Rec": {
        "embedding_size": 64,
        "hidden_size": 128,
        "num_layers": 1,
        "dropout_prob": 0.3,
    },
}


def build_config(model: str, batch_size: int, seed: int, data_path: str, workdir: str) -> dict:
    cfg = dict(BASE_CONFIG)
    cfg.update(MODEL_CONFIG[model])
    cfg.update(
        {
            "train_batch_size": batch_size,
            "seed": seed,
            "data_path": data_path,
            "checkpoint_dir": os.path.join(workdir, "saved"),
        }
    )
    return cfg


# --------------------------------------------------------------------------
# child side: runs inside the RecBole venv
# --------------------------------------------------------------------------


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def child(spec: dict) -> dict:
    t_proc = time.time()
    import resource

    import numpy as np
    import torch

    threads = spec["threads"]
    torch.set_num_threads(threads)

    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]  # RecBole 1.2.1 metrics
    _orig_load = torch.load

    def _load(*a, **kw):
        kw.setdefault("weights_only", False)
        return _orig_load(*a, **kw)

    torch.load = _load

    import recbole
    import recbole.quick_start.quick_start as qs
    from recbole.trainer import Trainer

    info: dict = {"epochs": []}
    state = {"fit_start": None, "epoch": None}

    orig_create = qs.create_dataset

    def create_dataset(config):
        ds = orig_create(config)
        inter = os.path.join(config["data_path"], f"{config['dataset']}.inter")
        info["data_file"] = os.path.realpath(inter)
        info["data_md5"] = _md5(inter)
        info["n_inter"] = int(ds.inter_num)
        info["n_users"] = int(ds.user_num) - 1  # minus [PAD]
        info["n_items"] = int(ds.item_num) - 1
        return ds

    qs.create_dataset = create_dataset

    orig_fit = Trainer.fit
    orig_train_epoch = Trainer._train_epoch
    orig_valid_epoch = Trainer._valid_epoch
    orig_save = Trainer._save_checkpoint

    def fit(self, *a, **kw):
        state["fit_start"] = time.time()
        out = orig_fit(self, *a, **kw)
        info["fit_s"] = time.time() - state["fit_start"]
        return out

    def train_epoch(self, train_data, epoch_idx, *a, **kw):
        state["epoch"] = epoch_idx
        t = time.time()
        out = orig_train_epoch(self, train_data, epoch_idx, *a, **kw)
        info["epochs"].append({"epoch": epoch_idx, "train_s": round(time.time() - t, 3)})
        return out

    def valid_epoch(self, *a, **kw):
        t = time.time()
        score, result = orig_valid_epoch(self, *a, **kw)
        now = time.time()
        e = info["epochs"][-1]
        e["valid_s"] = round(now - t, 3)
        e["elapsed_s"] = round(now - state["fit_start"], 3)
        e["valid_ndcg10"] = round(float(score), 4)
        return score, result

    def save_checkpoint(self, epoch, *a, **kw):
        # Trainer.fit saves exactly when the validation score improves.
        if epoch >= 0 and state["fit_start"] is not None:
            info["best_epoch"] = epoch
            info["s_to_best"] = round(time.time() - state["fit_start"], 2)
        return orig_save(self, epoch, *a, **kw)

    # Optional wall-clock cap (--max-train-seconds), and SIGUSR1: end training
    # after the current epoch's validation, as if early stopping had fired;
    # quick-start then tests the best checkpoint as usual. Reported as
    # "truncated".
    import signal

    import recbole.trainer.trainer as trainer_mod

    cap = spec.get("max_train_seconds")
    state["stop"] = False
    signal.signal(signal.SIGUSR1, lambda *_: state.__setitem__("stop", True))
    orig_early_stopping = trainer_mod.early_stopping

    def early_stopping(*a, **kw):
        best, cur_step, stop_flag, update_flag = orig_early_stopping(*a, **kw)
        over = cap is not None and time.time() - state["fit_start"] > cap
        if not stop_flag and (over or state["stop"]):
            info["truncated"] = "max_train_seconds" if over else "SIGUSR1"
            stop_flag = True
        return best, cur_step, stop_flag, update_flag

    trainer_mod.early_stopping = early_stopping

    Trainer.fit = fit
    Trainer._train_epoch = train_epoch
    Trainer._valid_epoch = valid_epoch
    Trainer._save_checkpoint = save_checkpoint

    res = qs.run_recbole(model=spec["model"], dataset="ml-100k", config_dict=spec["config"], saved=True)
    t_end = time.time()

    test = {k: round(float(v), 4) for k, v in res["test_result"].items()}
    valid = {k: round(float(v), 4) for k, v in res["best_valid_result"].items()}
    return {
        "model": spec["model"],
        "train_batch_size": spec["config"]["train_batch_size"],
        "seed": spec["config"]["seed"],
        "test": test,
        "best_valid": valid,
        "best_valid_ndcg10": round(float(res["best_valid_score"]), 4),
        "best_epoch": info.get("best_epoch"),
        "truncated": info.get("truncated", False),
        "epochs_run": len(info["epochs"]),
        "s_to_best": info.get("s_to_best"),
        "fit_s": round(info.get("fit_s", float("nan")), 2),
        "total_s": round(t_end - t_proc, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "data_file": info.get("data_file"),
        "data_md5": info.get("data_md5"),
        "n_inter": info.get("n_inter"),
        "n_users": info.get("n_users"),
        "n_items": info.get("n_items"),
        "versions": {
            "recbole": recbole.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "epoch_trace": [[e["epoch"], e.get("elapsed_s"), e.get("valid_ndcg10")] for e in info["epochs"]],
    }


# --------------------------------------------------------------------------
# parent side: standard library only
# --------------------------------------------------------------------------


def parse_run(text: str) -> tuple[str, int, int]:
    model, bs, seed = text.split(":")
    if model not in MODEL_CONFIG:
        raise SystemExit(f"unknown model {model!r}; choose from {sorted(MODEL_CONFIG)}")
    return model, int(bs), int(seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", help="python of a venv with recbole==1.2.1 installed")
    ap.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="MODEL:BATCH:SEED",
        help="repeatable; default SASRec:2048:0 and GRU4Rec:2048:0",
    )
    ap.add_argument(
        "--data-path",
        default=DEFAULT_DATA_PATH,
        help="folder holding ml-100k/ml-100k.inter (RecBole 1.2.1 ignores it for "
        "dataset 'ml-100k' and uses its bundled, identical copy; the md5 of "
        "the file actually read is reported)",
    )
    ap.add_argument("--workdir", default=None, help="scratch dir for RecBole logs/checkpoints")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--max-train-seconds",
        type=float,
        default=None,
        help="stop training after the first epoch that ends past this many seconds "
        "(test still uses the best-validation checkpoint); reported as truncated",
    )
    ap.add_argument("--print-config", action="store_true", help="print the configs and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        with open(args.child) as f:
            spec = json.load(f)
        out = child(spec)
        with open(spec["out"], "w") as f:
            json.dump(out, f)
        return 0

    runs = [parse_run(r) for r in (args.run or ["SASRec:2048:0", "GRU4Rec:2048:0"])]
    base = args.workdir or tempfile.mkdtemp(prefix="recbole-ref-")
    if args.print_config:
        for model, bs, seed in runs:
            print(json.dumps({"model": model, "config": build_config(model, bs, seed, args.data_path, base)}))
        return 0
    if not args.python:
        ap.error("--python is required")

    inter = os.path.join(args.data_path, "ml-100k", "ml-100k.inter")
    if not os.path.isfile(inter):
        ap.error(f"{inter} not found (RecBole would try to download it)")

    made_by = provenance(None if argv is None else [sys.argv[0], *argv])
    status = 0
    for model, bs, seed in runs:
        wd = os.path.join(base, f"{model}-bs{bs}-seed{seed}")
        os.makedirs(wd, exist_ok=True)
        spec = {
            "model": model,
            "threads": args.threads,
            "max_train_seconds": args.max_train_seconds,
            "config": build_config(model, bs, seed, args.data_path, wd),
            "out": os.path.join(wd, "result.json"),
        }
        spec_path = os.path.join(wd, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        t = time.time()
        with open(os.path.join(wd, "stdout.log"), "w") as log:
            rc = subprocess.call(
                [args.python, os.path.abspath(__file__), "--child", spec_path],
                cwd=wd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if rc != 0 or not os.path.isfile(spec["out"]):
            print(
                json.dumps(
                    {
                        "model": model,
                        "train_batch_size": bs,
                        "seed": seed,
                        "error": f"exit {rc}",
                        "log": os.path.join(wd, "stdout.log"),
                    }
                ),
                flush=True,
            )
            status = 1
            continue
        with open(spec["out"]) as f:
            out = json.load(f)
        out["inter_file_expected_md5"] = _md5(inter)
        out["process_wall_s"] = round(time.time() - t, 2)
        out["log_dir"] = wd
        out["provenance"] = made_by  # the parent's machine and command; the child's versions are above
        print(json.dumps(out), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
