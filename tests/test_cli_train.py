"""`linkedout train` / `evaluate` end to end on real MovieLens-100K, and their error messages."""

import json

import pytest
from typer.testing import CliRunner

from linkedout.cli import app

runner = CliRunner()
pytestmark = pytest.mark.network


def test_train_writes_json_and_evaluate_rescores_the_saved_run(samples_small, tmp_path):
    out = tmp_path / "r.json"
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "ml-100k",
        "--protocol",
        "microlens",
        "--model",
        "sasrec",
        "--seed",
        "0",
        "--epochs",
        "2",
        "--json",
        str(out),
        "--run-dir",
        str(run_dir),
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "protocol=microlens" in result.output  # the protocol is printed under the table
    row = json.loads(out.read_text())
    for key in (
        "dataset",
        "protocol",
        "model",
        "seed",
        "metrics",
        "best_epoch",
        "train_seconds",
        "peak_rss_mb",
    ):
        assert key in row
    assert row["dataset"] == "ml-100k" and row["protocol"]["name"] == "microlens"
    assert set(row["metrics"]) >= {"HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR@10", "Recall@10"}
    assert 1 <= row["best_epoch"] <= 2
    # not a terminal here: the table is still printed in full, numbers not elided
    assert f"{row['metrics']['NDCG@10']:.4f}" in result.output and "…" not in result.output
    assert (run_dir / "model.safetensors").exists()

    again = tmp_path / "again.json"
    result = runner.invoke(app, ["evaluate", "--run", str(run_dir), "--json", str(again)])
    assert result.exit_code == 0, result.output
    # same weights, same split, same protocol: the same numbers
    assert json.loads(again.read_text())["metrics"] == pytest.approx(row["metrics"])


def test_baselines_through_the_cli(samples_small, tmp_path):
    for model in ("pop", "itemknn"):
        out = tmp_path / f"{model}.json"
        result = runner.invoke(
            app, ["train", "--model", model, "--protocol", "recbole", "--json", str(out), "-q"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["metrics"]["HR@10"] > 0.02


def test_bad_inputs_give_a_message_not_a_traceback(tmp_path):
    result = runner.invoke(app, ["train", "--dataset", str(tmp_path / "missing.inter"), "-q"])
    assert result.exit_code == 2 and "error:" in result.output
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t3\tabc\n")
    result = runner.invoke(app, ["train", "--dataset", str(bad), "-q"])
    assert result.exit_code == 2 and "bad.inter:3" in result.output and "timestamp" in result.output
    result = runner.invoke(app, ["train", "--protocol", "nope", "-q"])
    assert result.exit_code == 2 and "unknown protocol" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "run.json" in result.output
