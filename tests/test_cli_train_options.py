"""`linkedout train`'s hyperparameter options come from the ModelConfig / TrainConfig fields declared with
`flag_field`: every such field is a flag, a value given on the command line reaches the config, and an
unset flag leaves the recipe's value. No training here: `run_experiment` is replaced by a recorder."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import linkedout
from linkedout.cli import app
from linkedout.flags import config_flags, flag_field, with_config_options
from linkedout.models import ModelConfig
from linkedout.train.recipes import recipe
from linkedout.train.trainer import TrainConfig

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch):
    """The (ModelConfig, TrainConfig) `linkedout train` would have trained with."""
    seen: dict = {}

    def fake_run_experiment(spec, proto, mc, tc, **kw):
        seen.update(model=mc, train=tc, protocol=proto)
        row = {"dataset": "fake", "model": mc.name, "seed": tc.seed, "metrics": {"HR@10": 0.0}}
        row |= {"best_epoch": 0, "train_seconds": 0.0}
        return SimpleNamespace(dataset="fake", to_json=lambda: row)

    monkeypatch.setattr("linkedout.train.run.run_experiment", fake_run_experiment)
    return seen


def test_every_flagged_config_field_is_listed_by_train_help():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    flagged = config_flags(ModelConfig) + config_flags(TrainConfig)
    # the 20 hyperparameters the CLI offered before they moved into the fields, + bpr/lightgcn's 2
    # (negatives, layers) + tiger's 3 (code levels, codebook size, beam) + lightgcn's cold items 2
    # (isolated scale, isolate items) + the trainer's --sparse-ids + the in-batch/sampled window masking
    assert len(flagged) == 20 + 2 + 3 + 2 + 1 + 1
    for _, flag in flagged:
        for spelling in flag.split("/"):  # "--id-fusion/--no-id-fusion": both spellings are listed
            assert spelling in result.output
    for explicit in ("--dataset", "--protocol", "--model", "--cold-items", "--json", "--run-dir", "--quiet"):
        assert explicit in result.output


def test_mask_history_overrides_the_protocol_and_names_it(captured):
    result = runner.invoke(app, ["train", "--model", "bpr", "--mask-history", "--layers", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert captured["protocol"].mask_history and captured["protocol"].name == "recbole[mask_history=True]"
    assert captured["model"].layers == 2
    runner.invoke(
        app, ["train", "--model", "lightgcn", "--isolated-scale", "0.5", "--isolate-items", "0.2", "-q"]
    )
    assert (captured["model"].isolated_scale, captured["model"].isolate_items) == (0.5, 0.2)
    runner.invoke(app, ["train", "--model", "bpr", "-q"])
    assert not captured["protocol"].mask_history  # unset: the preset's own choice


def test_option_values_reach_the_configs(captured):
    args = ["train", "--model", "sasrec", "--protocol", "microlens", "-q"]
    args += ["--lr", "0.01", "--batch-size", "7", "--epochs", "3", "--seed", "5", "--device", "cpu"]
    args += ["--dim", "32", "--heads", "4", "--loss", "inbatch", "--logq", "--top-k", "2"]
    args += ["--item-encoder", "linkedout", "--features", "store", "--no-id-fusion", "--compressor", "mlp"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    mc, tc = captured["model"], captured["train"]
    assert (tc.lr, tc.batch_size, tc.epochs, tc.seed, tc.device) == (0.01, 7, 3, 5, "cpu")
    assert (mc.dim, mc.heads, mc.loss, mc.logq, mc.top_k) == (32, 4, "inbatch", True, 2)
    assert (mc.item_encoder, mc.features, mc.id_fusion, mc.compressor) == ("linkedout", "store", False, "mlp")


def test_unset_options_leave_the_recipe_values(captured):
    result = runner.invoke(app, ["train", "--model", "sasrec", "--protocol", "recbole", "-q"])
    assert result.exit_code == 0, result.output
    assert (captured["model"], captured["train"]) == recipe("sasrec", "recbole")


def test_a_bad_option_value_is_refused_before_training(captured):
    result = runner.invoke(app, ["train", "--lr", "fast", "-q"])
    assert result.exit_code == 2 and "--lr" in result.output and not captured


def test_a_field_clashing_with_a_command_parameter_is_refused():
    from dataclasses import dataclass

    @dataclass
    class Clash:
        quiet: bool = flag_field(False, "--quiet2")

    def command(model: str = "x", quiet: bool = False, **settings: object) -> None: ...

    with pytest.raises(ValueError, match="duplicate parameter name: 'quiet'"):
        with_config_options(command, Clash, after="model")


def test_commands_that_do_not_train_do_not_import_torch():
    # train's options come from the config dataclasses: torch-free, so `linkedout version` stays cheap
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from linkedout.cli import app\n"
        "assert CliRunner().invoke(app, ['version']).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    src = str(Path(linkedout.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_mistyped_command_still_suggests_train_although_train_is_built_lazily():
    result = runner.invoke(app, ["trian"])
    assert result.exit_code == 2 and "Did you mean 'train'?" in result.output
