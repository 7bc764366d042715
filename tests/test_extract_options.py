"""`ExtractOptions`: the per-backbone rules of `linkedout extract` (which options apply, how layers are
spelled, which frame size, what the backbone's constructor receives), checked without loading a model."""

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.extract import ExtractOptions
from linkedout.video import FrameSampler


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ExtractOptions(backbone="clip"),
            "unknown backbone 'clip'; choose one of frames, text, caption, vllm, audio",
        ),
        (ExtractOptions(parallel="fork"), "--parallel must be threads or processes, not 'fork'"),
        (ExtractOptions(prompt="What happens?"), "--prompt does not apply to the frames backbone"),
        (ExtractOptions(backbone="text", model="m"), "--model does not apply to the text backbone"),
        (ExtractOptions(backbone="audio", prompt="p"), "--prompt does not apply to the audio backbone"),
        (ExtractOptions(new_tokens=4), "--new-tokens does not apply to the frames backbone"),
        (
            ExtractOptions(layers="every:4"),
            "--layers for the frames backbone is a comma list of integers, got 'every:4'",
        ),
    ],
)
def test_options_that_cannot_apply_are_refused_with_the_flag_named(options, message):
    with pytest.raises(ValueError) as err:
        options.validate()
    assert str(err.value) == message


def test_validation_comes_before_the_catalog_is_read(tmp_path):
    # a flag typo must not wait for (or be hidden by) a catalog scan
    with pytest.raises(ValueError, match="--prompt does not apply"):
        ExtractOptions(prompt="hi").run(tmp_path / "no-such-catalog", tmp_path / "store", progress=False)


def test_frame_size_defaults_per_backbone_and_zero_keeps_the_stored_size():
    assert ExtractOptions(backbone="frames").frame_sampler() == FrameSampler(8, 256)
    assert ExtractOptions(backbone="vllm:some/model", frames=4).frame_sampler() == FrameSampler(4, 448)
    assert ExtractOptions(size=0).frame_sampler() == FrameSampler(8, None)
    assert ExtractOptions(size=320).frame_sampler() == FrameSampler(8, 320)
    assert ExtractOptions(backbone="text").frame_sampler() is None  # text never decodes


def test_backbone_options_hold_only_what_was_set_in_the_backbones_spelling():
    sampler = FrameSampler(8, 256)
    frames = ExtractOptions(layers="0, 4,16", device="cuda:1").backbone_options(sampler)
    assert frames == {"device": "cuda:1", "layers": (0, 4, 16), "sampler": sampler.fingerprint()}
    assert ExtractOptions(backbone="text", prompt="q").backbone_options() == {"device": "cpu", "prompt": "q"}
    vllm = ExtractOptions(backbone="vllm", layers="every:2", model="m", new_tokens=2, batch_size=3)
    assert vllm.backbone_options() == {
        "device": "cpu",
        "layers": "every:2",
        "batch_size": 3,
        "model": "m",
        "new_tokens": 2,
    }
    assert ExtractOptions(backbone="text", layers=[1, 6]).backbone_options()["layers"] == (1, 6)


def test_build_goes_through_get_backbone_with_the_options(monkeypatch):
    seen = {}

    def fake_get_backbone(name, **options):
        seen.update(name=name, options=options)
        return "backbone"

    monkeypatch.setattr("linkedout.backbones.get_backbone", fake_get_backbone)
    backbone, sampler = ExtractOptions(backbone="vllm:tiny", size=0, frames=2).build()
    assert backbone == "backbone" and sampler == FrameSampler(2, None)
    assert seen == {
        "name": "vllm:tiny",
        "options": {"device": "cpu", "batch_size": 8, "sampler": sampler.fingerprint()},
    }


def test_cli_maps_an_option_error_to_exit_code_2_with_the_message(tmp_path):
    args = ["extract", "--catalog", str(tmp_path), "--store", str(tmp_path / "s"), "--model", "m"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "error: --model does not apply to the frames backbone" in result.output
