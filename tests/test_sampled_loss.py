"""`--loss sampled` (mixed negative sampling: in-batch candidates + shared uniform negatives, logQ by
the mixture's expected counts) against a loop-by-loop reference, its masking, its sampling, and a run
through `linkedout train`."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.data.batches import PAD
from linkedout.models import ModelConfig, build_model
from linkedout.models.base import TrainBatch

N_ITEMS = 20
COUNTS = np.array([0, 5, 1, 3, 0, 9, 2, 2, 7, 1, 4, 0, 6, 3, 1, 8, 2, 5, 1, 3])  # items 0, 4, 11 untrained


def sampled_model(logq: bool = True, negatives: int = 6, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        name="sasrec", dim=8, dropout=0.0, loss="sampled", logq=logq, negatives=negatives, **kw
    )
    return build_model(config, N_ITEMS, 5, COUNTS).eval()  # eval: nothing random in the forward


def batch() -> TrainBatch:
    return TrainBatch(
        torch.tensor([[PAD, PAD, 3, 5, 7], [9, 10, 12, 13, 15], [PAD, 16, 17, 3, 18]]),
        torch.tensor([[PAD, 3, 5, 7, 8], [10, 12, 13, 15, 16], [16, 17, 3, 18, 19]]),
    )


def reference_loss(
    model, batch: TrainBatch, negatives: list[int], logq: bool, mask_window: bool
) -> torch.Tensor:
    """The loss written out: candidates = the distinct targets and negatives; each logit minus
    log(n_targets * p(i) + N / n_trained) with p the +1-smoothed training frequency; per position,
    every candidate in the row's own window other than its target is masked."""
    valid = (batch.inputs != PAD) & (batch.targets != PAD)
    states = model.encode_history(batch.inputs)[valid]
    targets = batch.targets[valid].tolist()
    candidates = sorted(set(targets) | set(negatives))
    vectors = model.item_encoder.encode(torch.tensor(candidates))[0]
    logits = states @ vectors.T
    if logq:
        p = (COUNTS + 1.0) / (COUNTS + 1.0).sum()
        expected = len(targets) * p[candidates] + len(negatives) / int((COUNTS > 0).sum())
        logits = logits - torch.tensor(np.log(expected), dtype=logits.dtype)
    rows = torch.arange(len(batch.inputs))[:, None].expand_as(batch.inputs)[valid].tolist()
    mask = torch.zeros_like(logits, dtype=torch.bool)
    for j, (row, target) in enumerate(zip(rows, targets, strict=True)):
        window = {int(i) for i in torch.cat([batch.inputs[row], batch.targets[row]]) if i != PAD}
        for c, item in enumerate(candidates):
            mask[j, c] = mask_window and item in window and item != target
    labels = torch.tensor([candidates.index(t) for t in targets])
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), labels)


@pytest.mark.parametrize(("logq", "mask_window"), [(True, True), (False, True), (True, False)])
def test_sampled_loss_equals_the_reference_for_a_fixed_negative_set(logq, mask_window):
    """Same loss and same gradient on every parameter; the negatives repeat an item, include a target
    of the batch (8) and items of row 0's and row 1's own windows (5, 9)."""
    model = sampled_model(logq=logq, mask_window=mask_window)
    b = batch()
    valid = (b.inputs != PAD) & (b.targets != PAD)
    negatives = [1, 6, 6, 8, 5, 9, 14]
    results = []
    for compute in (
        lambda: model.in_batch_loss(b, valid, torch.tensor(negatives))[0],
        lambda: reference_loss(model, b, negatives, logq, mask_window),
    ):
        model.zero_grad()
        loss = compute()
        loss.backward()
        results.append(
            (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (fast, fast_grads), (reference, reference_grads) = results
    torch.testing.assert_close(fast, reference)
    assert fast_grads.keys() == reference_grads.keys() and fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], reference_grads[name], msg=name)


def test_shared_negatives_in_a_rows_window_or_among_targets_change_nothing_without_logq():
    """Without logQ a shared negative only adds a column: one in every row's own window (9 opens both
    rows and is never a target) is masked at every position, one that is a target already adds
    nothing; one in nobody's window is a real negative."""
    model = sampled_model(logq=False)
    b = TrainBatch(
        torch.tensor([[9, 3, 5, 7], [9, 10, 12, 13]]), torch.tensor([[3, 5, 7, 8], [10, 12, 13, 15]])
    )
    valid = (b.inputs != PAD) & (b.targets != PAD)
    inbatch = model.in_batch_loss(b, valid)[0]
    # 9 is in both rows' windows and never a target: masked for every position
    torch.testing.assert_close(model.in_batch_loss(b, valid, torch.tensor([9, 9]))[0], inbatch)
    # 8 and 15 are targets already: the same candidate set
    torch.testing.assert_close(model.in_batch_loss(b, valid, torch.tensor([8, 15, 3]))[0], inbatch)
    # 1 is in nobody's window: a real negative, the loss grows
    assert model.in_batch_loss(b, valid, torch.tensor([1]))[0] > inbatch
    # --no-mask-window: the row's own items are negatives again, 9 among them
    unmasked = sampled_model(logq=False, mask_window=False)
    assert unmasked.in_batch_loss(b, valid, torch.tensor([9]))[0] > unmasked.in_batch_loss(b, valid)[0]


def test_negatives_are_drawn_from_trained_items_only_and_need_a_count():
    model = sampled_model(negatives=4000)
    drawn = model.sample_negatives(torch.device("cpu"))
    assert drawn.shape == (4000,)
    assert set(drawn.tolist()) == set(np.flatnonzero(COUNTS > 0).tolist())  # every trained item, no other
    with pytest.raises(ValueError, match="negatives >= 1"):
        sampled_model(negatives=0)
    b = batch()
    loss = model.loss(b)  # the training path draws its own negatives
    assert torch.isfinite(loss) and loss.requires_grad


def test_with_no_negatives_the_correction_is_the_in_batch_logq():
    model = sampled_model()
    candidates = torch.tensor([1, 3, 5])
    torch.testing.assert_close(model.correction(candidates, 10, 0), model.logq[candidates])
    p = torch.exp(model.logq[candidates])
    expected = torch.log(10 * p + 4 / 17)  # 17 trained items
    torch.testing.assert_close(model.correction(candidates, 10, 4), expected)
    assert math.isclose(float(torch.exp(model.logq).sum()), 1.0, rel_tol=1e-5)


def write_log(path, n_users: int = 30, per_user: int = 8, n_items: int = 15) -> None:
    rng = np.random.default_rng(0)
    rows = ["user,item,time"] + [
        f"u{u},m{int(rng.integers(n_items))},{100 * u + t}" for u in range(n_users) for t in range(per_user)
    ]
    path.write_text("\n".join(rows) + "\n")


def test_sampled_loss_trains_through_linkedout_train(tmp_path):
    write_log(tmp_path / "log.csv")
    out = tmp_path / "run.json"
    args = ["train", "--dataset", str(tmp_path / "log.csv"), "--protocol", "microlens", "--model", "sasrec"]
    args += ["--loss", "sampled", "--negatives", "8", "--logq", "--epochs", "2", "--dim", "8"]
    result = CliRunner().invoke(app, [*args, "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert (row["model_config"]["loss"], row["model_config"]["negatives"], row["model_config"]["logq"]) == (
        "sampled",
        8,
        True,
    )
    assert np.isfinite(row["metrics"]["NDCG@10"]) and len(row["history"]) == 2
    bad = CliRunner().invoke(app, [*args[:-4], "--negatives", "0", "-q"])
    assert bad.exit_code != 0 and "negatives" in (bad.output + repr(bad.exception))
