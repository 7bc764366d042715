"""`linkedout export` deploys what was trained, whole: every item of the feature store (store-only items
encoded from content alone, flagged cold), the run's exclusions still blocked, and the training log's
users served by id with their protocol history.

A synthetic log (60 users walking over 50 items) and a synthetic feature store stand in for ml-100k and
MiniLM title features (those take minutes on 2 cores): the store holds 10 items the log never names
(``x0``..``x9``) and misses two of the log's items (``m48``, ``m49``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from linkedout.backbones.base import ItemTokens
from linkedout.serve.app import create_app
from linkedout.serve.bundle import load_bundle
from linkedout.serve.histories import Histories, user_history_rows
from linkedout.serve.state import ServeConfig
from linkedout.store import FeatureStore

SHAPE = (3, 2, 8)  # layers, tokens, dim
STORE_ONLY = [f"x{i}" for i in range(10)]
NO_FEATURES = {"m48", "m49"}


def write_log(path: Path, n_users: int = 60, n_items: int = 50, per_user: int = 12) -> None:
    rng = np.random.default_rng(0)
    rows = ["user,item,time"]
    for u in range(n_users):
        start = rng.integers(0, n_items)
        for t in range(per_user):
            rows.append(f"u{u},m{(start + t + rng.integers(0, 2)) % n_items},{1000 * u + t}")
    path.write_text("\n".join(rows) + "\n")


def tokens_for(item_id: str) -> np.ndarray:
    seed = sum(ord(c) * 31**i for i, c in enumerate(item_id)) % 2**32
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float16)


def write_store(path: Path, ids: list[str] | None = None, backbone: str = "synthetic") -> list[str]:
    """A store of ``ids`` (default: the log's items less NO_FEATURES, plus STORE_ONLY)."""
    store = FeatureStore.create(
        path, {"backbone": backbone}, layers=[0, 1, 2], token_kinds=["video", "new"], dim=SHAPE[2]
    )
    if ids is None:
        ids = [f"m{i}" for i in range(50) if f"m{i}" not in NO_FEATURES] + STORE_ONLY
    store.append([ItemTokens(i, tokens_for(i)) for i in ids])
    return ids


@pytest.fixture(scope="module", params=["linkedout", "dff-cold"])
def exported(request, tmp_path_factory):
    """(run dir, bundle dir, store ids, encoder) of one tiny trained + exported run."""
    from linkedout.cli import app

    tmp = tmp_path_factory.mktemp(request.param)
    write_log(tmp / "log.csv")
    store_ids = write_store(tmp / "store")
    encoder = request.param.split("-")[0]
    args = ["train", "--dataset", str(tmp / "log.csv"), "--protocol", "microlens", "--model", "sasrec"]
    args += ["--item-encoder", encoder, "--features", str(tmp / "store"), "--epochs", "1", "--dim", "16"]
    if request.param == "dff-cold":  # in-dataset items with no training events (DFF: IDs fused)
        args += ["--cold-items", "0.2"]
    result = CliRunner().invoke(app, [*args, "--run-dir", str(tmp / "run"), "-q"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["export", "--run", str(tmp / "run"), "--out", str(tmp / "bundle")])
    assert result.exit_code == 0, result.output
    assert "10 store-only" in result.output and "60 users" in result.output
    return tmp / "run", tmp / "bundle", store_ids, encoder


def test_every_store_item_is_in_the_bundle_and_store_only_items_are_cold(exported):
    from linkedout.train.run import load_run

    run_dir, out, store_ids, encoder = exported
    bundle = load_bundle(out)
    model, data_split, _ = load_run(run_dir)
    n = data_split.n_items
    assert bundle.item_ids[:n] == [str(x) for x in data_split.data.item_ids.tolist()]
    assert bundle.item_ids[n:] == STORE_ONLY and bundle.n_items == n + len(STORE_ONLY)
    row_of = {i: r for r, i in enumerate(bundle.item_ids)}
    assert all(i in row_of and not bundle.blocked[row_of[i]] for i in store_ids)  # every one servable
    # the run's exclusions stay blocked: LinkedOut without ID fusion cannot rank featureless items
    featureless = [row_of[i] for i in NO_FEATURES]
    assert bool(bundle.blocked[featureless].all()) == (encoder == "linkedout")
    np.testing.assert_array_equal(
        bundle.blocked[:n].numpy(), np.isin(np.arange(n), data_split.excluded_items)
    )
    cold = bundle.cold.numpy()
    assert cold[n:].all()
    np.testing.assert_array_equal(cold[:n], data_split.train_item_counts() == 0)
    assert cold[:n].any() == (encoder == "dff")  # --cold-items held items out of training

    with torch.no_grad():
        # warm (and every dataset) item: the model's own item vector, so the model's own scores
        torch.testing.assert_close(bundle.item_matrix[:n], model.item_encoder.all_items())
        # store-only items: the content path, which is what the model gives an item with no events
        tokens = torch.from_numpy(np.stack([tokens_for(i) for i in STORE_ONLY])).float()
        content = model.item_encoder.content_vectors(tokens)
        torch.testing.assert_close(bundle.item_matrix[n:], content, rtol=1e-5, atol=1e-6)
        untrained = np.flatnonzero(cold[:n] & ~np.isin(np.arange(n), data_split.excluded_items))
        for row in untrained[:5]:  # in-dataset items with no training events: equally content alone
            t = torch.from_numpy(tokens_for(bundle.item_ids[row])).float()[None]
            torch.testing.assert_close(
                bundle.item_matrix[row], model.item_encoder.content_vectors(t)[0], rtol=1e-5, atol=1e-6
            )
    if bundle.layer_weights is not None:
        assert bundle.layer_weights.shape[0] == bundle.n_items
        torch.testing.assert_close(bundle.layer_weights[n:].sum(1), torch.ones(len(STORE_ONLY)))


def test_a_training_user_is_served_by_id_with_their_protocol_history(exported, tmp_path):
    from linkedout.train.run import load_run

    run_dir, out, _, _ = exported
    bundle = load_bundle(out)
    model, data_split, _ = load_run(run_dir)
    data, test = data_split.data, data_split.test
    assert bundle.histories is not None and bundle.histories.n_users == data.n_users
    u = int(test.users[3])
    user_id = str(data.user_ids[u])
    carried = bundle.histories.get(user_id)
    # what the bundle carries = the test split's history followed by the event it was tested on
    test_history = data.items[data.offsets[u] : test.history_end[3]]
    np.testing.assert_array_equal(carried, [*test_history, test.targets[3]])

    app = create_app(ServeConfig(bundle=bundle, events=tmp_path / "state.sqlite"))
    with TestClient(app) as c:
        r = c.post("/v1/recommend", json={"user_id": user_id, "k": 5, "explain": False})
        assert r.status_code == 200, r.text
        body = r.json()
        used = carried[-bundle.max_len :]
        assert body["history_used"] == [bundle.item_ids[i] for i in used]
        with torch.no_grad():  # the trained model's ranking of that history, seen items masked
            scores = model.score_all_items(torch.as_tensor(used, dtype=torch.long)[None])[0]
        scores[torch.as_tensor(np.unique(carried), dtype=torch.long)] = float("-inf")
        scores[torch.as_tensor(data_split.excluded_items, dtype=torch.long)] = float("-inf")
        full = torch.cat([scores, torch.full((bundle.n_items - len(scores),), float("-inf"))])
        with torch.no_grad():  # store-only items score too: the served ranking covers them
            user = bundle.user_encoder()(
                bundle.item_matrix[used][None], torch.ones(1, len(used), dtype=torch.bool)
            )
            full[len(scores) :] = user[0, -1] @ bundle.item_matrix[len(scores) :].T
        want = torch.topk(full, 5)
        assert [it["item_id"] for it in body["items"]] == [bundle.item_ids[i] for i in want.indices.tolist()]
        np.testing.assert_allclose(
            [it["score"] for it in body["items"]], want.values.numpy(), rtol=1e-4, atol=1e-5
        )

        # events stored since the export follow the bundle history
        ev = {"event_id": "e1", "user_id": user_id, "item_id": STORE_ONLY[0]}
        assert c.post("/v1/events", json={"events": [ev]}).status_code == 200
        after = c.post("/v1/recommend", json={"user_id": user_id, "k": 3, "explain": False}).json()
        assert after["history_used"][-1] == STORE_ONLY[0]
        assert after["history_used"][:-1] == body["history_used"][-(bundle.max_len - 1) :]

        assert c.post("/v1/recommend", json={"user_id": "nobody"}).status_code == 404
        item = c.get(f"/v1/items/{STORE_ONLY[1]}").json()
        assert item["cold"] is True and item["blocked"] is False


def test_a_bundle_without_histories_or_cold_flags_still_loads_and_serves(exported, tmp_path):
    """Bundles exported before this change: no histories -> users known by events only, none cold."""
    import shutil

    _, out, _, _ = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "histories.safetensors").unlink()
    (old / "users.json").unlink()
    tensors = load_file(str(old / "items.safetensors"))
    del tensors["cold"]
    save_file(tensors, str(old / "items.safetensors"))
    bundle = load_bundle(old)
    assert bundle.histories is None and not bundle.cold.any()
    user_id = json.loads((out / "users.json").read_text())[0]
    with TestClient(create_app(ServeConfig(bundle=bundle, events=tmp_path / "s.sqlite"))) as c:
        assert c.post("/v1/recommend", json={"user_id": user_id}).status_code == 404


def test_user_history_rows_merges_bundle_and_stored_events():
    class Log:
        def __init__(self, events: dict[str, list[str]]) -> None:
            self.events = events

        def history(self, user_id: str, limit: int, after_seq: int | None = None) -> list[str]:
            return self.events.get(user_id, [])[after_seq or 0 :][-limit:]  # seq = position here

    h = Histories.from_sequences(["a", "b"], [np.array([0, 1, 2]), np.array([3])])
    row_of = {"i0": 0, "i1": 1, "i2": 2, "i3": 3, "i4": 4}
    log = Log({"b": ["i4", "gone"], "c": ["i1"], "d": ["gone"]})
    assert user_history_rows(h, log, row_of, "a", 10) == [0, 1, 2]
    assert user_history_rows(h, log, row_of, "b", 10) == [3, 4]  # the unknown stored item is skipped
    assert user_history_rows(h, log, row_of, "a", 2) == [1, 2]  # the most recent `limit`
    assert user_history_rows(h, log, row_of, "c", 10) == [1]  # known by events only
    assert user_history_rows(h, log, row_of, "d", 10) == []  # known, but nothing servable: 422 upstream
    assert user_history_rows(h, log, row_of, "z", 10) is None  # unknown: 404
    assert user_history_rows(None, log, row_of, "a", 10) is None
    assert user_history_rows(h, log, row_of, "b", 10, trained_upto=1) == [3]  # i4 was trained on


def test_malformed_histories_are_refused():
    from linkedout.serve.histories import HistoryError

    with pytest.raises(HistoryError, match="offsets"):
        Histories(["a"], np.array([0, 2, 3]), np.array([1, 2, 3]))
    with pytest.raises(HistoryError, match="twice"):
        Histories.from_sequences(["a", "a"], [np.array([1]), np.array([2])])
    with pytest.raises(HistoryError, match="outside"):
        Histories.from_sequences(["a"], [np.array([7])]).check_rows(5)


def test_a_run_refuses_a_feature_store_other_than_the_one_it_trained_on(exported, tmp_path):
    from linkedout.cli import app

    run_dir, _, _, _ = exported
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["features"]["fingerprint"] and saved["features"]["missing_items"] == len(NO_FEATURES)
    # the same items, re-extracted with another backbone: another fingerprint
    write_store(tmp_path / "other", [f"m{i}" for i in range(50)], backbone="another")
    moved = tmp_path / "run"
    moved.mkdir()
    (moved / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    saved["model_config"]["features"] = str(tmp_path / "other")
    (moved / "run.json").write_text(json.dumps(saved))
    r = CliRunner().invoke(app, ["evaluate", "--run", str(moved)])
    assert r.exit_code == 2, r.output
    message = r.output
    assert str(tmp_path / "other") in message and "fingerprint" in message

    # a store of another catalogue (no item in common with the log) is refused at training time
    write_store(tmp_path / "foreign", STORE_ONLY)
    args = ["train", "--dataset", str(run_dir.parent / "log.csv"), "--protocol", "microlens"]
    args += ["--item-encoder", "linkedout", "--features", str(tmp_path / "foreign"), "--epochs", "1", "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    message = r.output
    assert "has no row for any of the dataset's" in message and str(tmp_path / "foreign") in message
