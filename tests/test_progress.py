"""Progress of long steps when the output is not a terminal: plain lines at an interval, one at the
end, nothing when disabled (make demo | tee log, CI logs)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from linkedout.data.interactions import Interactions
from linkedout.data.protocol import Protocol, split
from linkedout.extract.pipeline import _Progress
from linkedout.models import ModelConfig, build_model
from linkedout.progress import INTERVAL_ENV, StepProgress, interval_from_env
from linkedout.train.trainer import TrainConfig, seed_everything, train


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_and_one_at_the_end() -> None:
    out, clock = io.StringIO(), FakeClock()
    with StepProgress("count", 10, stream=out, interval=30, clock=clock) as bar:
        assert not bar.live  # a StringIO is not a terminal
        for _ in range(4):
            clock.now += 10
            bar.update(1)
    lines = out.getvalue().splitlines()
    # 10 s per update: only the third update is 30 s past the start
    assert lines == ["count: 3/10 items, 0.1 items/s, 30 s", "count: 4/10 items, 0.1 items/s, 40 s, done"]


def test_interval_zero_prints_every_update_with_its_counts() -> None:
    out = io.StringIO()
    with StepProgress("count", 3, stream=out, interval=0) as bar:
        for _ in range(3):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"count: {n}/3 items" for n in (1, 2, 3, 3)]
    assert lines[-1].endswith(", done")


def test_an_exception_ends_with_a_stopped_line() -> None:
    out, clock = io.StringIO(), FakeClock()
    with pytest.raises(RuntimeError), StepProgress("count", 3, stream=out, interval=60, clock=clock) as bar:
        clock.now += 2
        bar.update(1)
        raise RuntimeError("boom")
    assert out.getvalue().splitlines() == ["count: 1/3 items, 0.5 items/s, 2 s, stopped"]


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    with StepProgress("count", 3, stream=out, interval=0, enabled=False) as bar:
        bar.update(1)
        bar.print("a message")
    assert out.getvalue() == ""


def test_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert interval_from_env() == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert interval_from_env() == 2.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        interval_from_env()


def test_extraction_progress_goes_to_stderr_with_failures(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with _Progress(True, 4, "extract frames") as bar:
        bar.done(2)
        bar.failed("clip-3", "decode: no video stream")
        bar.done(1)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays clean for --json
    lines = captured.err.splitlines()
    assert "failed clip-3: decode: no video stream" in lines
    assert lines[-1].startswith("extract frames: 4/4 items, 1 failed, ")
    assert lines[-1].endswith(", done")


def test_extraction_progress_disabled_or_empty_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    for enabled, total in ((False, 4), (True, 0)):
        with _Progress(enabled, total, "extract frames") as bar:
            bar.done(2)
            bar.failed("clip-3", "decode: no video stream")
    assert capsys.readouterr() == ("", "")


def _walk_split():
    """A tiny log (each user walks i -> i+1): a real training run in well under a second."""
    users = np.repeat(np.arange(20), 10)
    items = (np.repeat(np.arange(20), 10) + np.tile(np.arange(10), 20)) % 15
    times = np.tile(np.arange(10), 20)
    return split(Interactions.from_arrays(users, items, times), Protocol("t", max_seq_len=8))


def test_training_prints_epoch_and_step_lines_to_stdout_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    seed_everything(0)
    s = _walk_split()
    model = build_model(ModelConfig(name="sasrec", dim=8, dropout=0.0), s.n_items, 8)
    result = train(model, s, TrainConfig(epochs=2, batch_size=8), label="train sasrec")
    captured = capsys.readouterr()
    assert captured.err == ""  # the same stream as the terminal bar: stdout
    lines = captured.out.splitlines()
    steps = int(lines[-1].split("step ")[1].split("/")[1].split(",")[0])
    assert steps >= 2
    assert f"train sasrec: epoch 1/2, step 1/{steps}, " in captured.out
    assert f"train sasrec: epoch 2/2, step {steps}/{steps}, " in captured.out
    best = result.best_valid["NDCG@10"]
    assert lines[-1].endswith(f"best valid NDCG@10 {best:.4f} (epoch {result.best_epoch}), done")


def test_training_with_progress_off_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    seed_everything(0)
    s = _walk_split()
    model = build_model(ModelConfig(name="sasrec", dim=8, dropout=0.0), s.n_items, 8)
    train(model, s, TrainConfig(epochs=2, batch_size=8), progress=False)
    assert capsys.readouterr() == ("", "")
