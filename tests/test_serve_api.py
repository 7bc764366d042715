"""HTTP API of `linkedout serve` in-process (FastAPI TestClient): recommend, events, items, ops, bad input,
and schemathesis over the OpenAPI spec (no 5xx for anything it can generate); then the handlers of
`linkedout.serve.routes` called directly with a State, no HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator

import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from linkedout.serve import routes
from linkedout.serve.app import create_app
from linkedout.serve.schemas import ItemInfo, ItemList, RecommendRequest, RecommendResponse
from linkedout.serve.state import ServeConfig, State
from linkedout.synthetic import synthetic_bundle

N_ITEMS = 40


@pytest.fixture(scope="module")
def bundle_and_model():
    return synthetic_bundle(N_ITEMS, max_len=20)


@pytest.fixture
def client(bundle_and_model, tmp_path):
    bundle, _ = bundle_and_model
    app = create_app(
        ServeConfig(bundle=bundle, events=tmp_path / "state.sqlite", max_history=200, max_body_bytes=200_000)
    )
    with TestClient(app) as c:
        yield c


def test_recommend_by_history_returns_k_unseen_items_with_explanations(client, bundle_and_model):
    _, model = bundle_and_model
    r = client.post("/v1/recommend", json={"history": ["i3", "i5", "i7"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 5 and not {"i3", "i5", "i7"} & set(ids)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    first = body["items"][0]
    assert len(first["layer_weights"]) == 4 and abs(sum(first["layer_weights"]) - 1) < 1e-5
    assert {c["item_id"] for c in first["because"]} == {"i3", "i5", "i7"}
    assert body["layer_names"] == ["layer0", "layer1", "layer2", "layer3"]
    # the same numbers as the trained model scoring the same history, seen items masked
    import torch

    ref = model.score_all_items(torch.tensor([[3, 5, 7]]))[0].detach()
    ref[[3, 5, 7]] = float("-inf")
    assert ids == [f"i{i}" for i in torch.topk(ref, 5).indices.tolist()]
    np.testing.assert_allclose(scores, torch.topk(ref, 5).values.numpy(), rtol=1e-5, atol=1e-5)


def test_integer_ids_and_exclude_seen_false(client):
    r = client.post("/v1/recommend", json={"history": [3, "i5"], "k": 3})
    assert r.status_code == 422  # "3" is not an item id of this bundle (ids are i0..): a message, not a 5xx
    assert "unknown item ids" in r.json()["detail"]
    r = client.post(
        "/v1/recommend", json={"history": ["i1"], "k": N_ITEMS, "exclude_seen": False, "explain": False}
    )
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == N_ITEMS and items[0]["because"] is None
    assert "i1" in {it["item_id"] for it in items}


def test_events_are_idempotent_and_feed_recommend_by_user(client):
    events = [{"event_id": f"e{i}", "user_id": "u1", "item_id": f"i{i}", "ts": 100 + i} for i in (4, 2, 9)]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 200 and r.json() == {"accepted": 3, "duplicates": []}
    r = client.post("/v1/events", json={"events": events[:2]})  # a client retry
    assert r.json() == {"accepted": 0, "duplicates": ["e4", "e2"]}
    changed = {**events[0], "item_id": "i11"}
    r = client.post("/v1/events", json={"events": [changed]})
    assert r.status_code == 409 and "already stored" in r.json()["detail"]
    r = client.post("/v1/recommend", json={"user_id": "u1", "k": 4})
    assert r.status_code == 200
    assert r.json()["history_used"] == ["i2", "i4", "i9"]  # by ts, not by arrival
    assert not {"i4", "i2", "i9"} & {it["item_id"] for it in r.json()["items"]}
    assert client.post("/v1/recommend", json={"user_id": "nobody"}).status_code == 404
    # a retry without ts is still a duplicate (the first arrival was stamped by the server)
    no_ts = {"event_id": "x1", "user_id": "u2", "item_id": "i1"}
    assert client.post("/v1/events", json={"events": [no_ts]}).json()["accepted"] == 1
    assert client.post("/v1/events", json={"events": [no_ts]}).json()["duplicates"] == ["x1"]
    assert client.get("/healthz").json()["events"] == 4


def test_event_batch_with_an_unknown_item_stores_nothing(client):
    events = [
        {"event_id": "a", "user_id": "u", "item_id": "i1"},
        {"event_id": "b", "user_id": "u", "item_id": "zz"},
    ]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 422 and "zz" in r.json()["detail"]
    assert client.post("/v1/recommend", json={"user_id": "u"}).status_code == 404


def test_new_item_from_tokens_is_recommendable_at_once_and_listed(client):
    g = np.random.default_rng(1)
    tokens = g.standard_normal((4, 4, 12)).round(3).tolist()
    r = client.post("/v1/items", json={"item_id": "new1", "title": "fresh clip", "tokens": tokens})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["added_online"] and info["row"] == N_ITEMS and len(info["layer_weights"]) == 4
    assert client.get("/v1/items/new1").json()["title"] == "fresh clip"
    r = client.post("/v1/recommend", json={"history": ["i0"], "k": 100, "explain": False})
    assert "new1" in {it["item_id"] for it in r.json()["items"]}
    r = client.post("/v1/recommend", json={"history": ["new1", "i2"], "k": 3})  # usable in a history too
    assert r.status_code == 200
    assert client.post("/v1/items", json={"item_id": "new1", "tokens": tokens}).status_code == 409
    bad = client.post("/v1/items", json={"item_id": "new2", "tokens": [[[1.0, 2.0]]]})
    assert bad.status_code == 422 and "shape" in bad.json()["detail"]
    ragged = client.post("/v1/items", json={"item_id": "new3", "tokens": [[[1.0], [1.0, 2.0]]]})
    assert ragged.status_code == 422
    huge = np.array(tokens)
    huge[0, 0, 0] = 1e39  # valid JSON, beyond float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no numpy overflow warning on the way
        r = client.post("/v1/items", json={"item_id": "new4", "tokens": huge.tolist()})
    assert r.status_code == 422 and "infinity" in r.json()["detail"]
    assert client.get("/healthz").json()["items"] == N_ITEMS + 1


def test_new_item_with_the_tokens_of_a_catalogue_item_gets_its_vector(client, bundle_and_model):
    _, model = bundle_and_model
    tokens = model.features.tokens[7].float().numpy().tolist()
    assert client.post("/v1/items", json={"item_id": "copy7", "tokens": tokens}).status_code == 201
    r = client.post("/v1/recommend", json={"history": ["i1", "i2"], "k": 100, "explain": False}).json()
    score = {it["item_id"]: it["score"] for it in r["items"]}
    assert score["copy7"] == pytest.approx(score["i7"], abs=1e-4)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"history": []}, 422, "empty"),
        ({"history": ["i1"] * 201}, 422, "limit"),
        ({"history": ["i1"], "k": 101}, 422, "limit"),
        ({"history": ["i1"], "k": 0}, 422, ""),
        ({"history": ["i1"], "user_id": "u"}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"history": "i1"}, 422, ""),
        ({"history": [["i1"]]}, 422, ""),
        ({"history": ["i1"], "k": "ten"}, 422, ""),
        ({"history": ["i1"], "extra": 1}, 422, ""),
        ({"history": ["nope"]}, 422, "unknown"),
    ],
)
def test_bad_recommend_input_is_a_4xx_with_a_message(client, body, status, words):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])


def test_malformed_json_wrong_content_and_unknown_routes(client):
    r = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert (
        client.post(
            "/v1/recommend", content=b"\xff\xfe", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert (
        client.post("/v1/events", content=b"[1,2]", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert client.post("/v1/events", json={"events": []}).status_code == 422
    assert (
        client.post(
            "/v1/events", json={"events": [{"event_id": "e", "user_id": "u", "item_id": "i1", "ts": "x"}]}
        ).status_code
        == 422
    )
    assert client.get("/v1/items/missing").status_code == 404
    assert client.get("/v1/items/i1/thumbnail").status_code == 404
    assert client.get("/nope").status_code == 404


def test_oversized_body_is_413(client):
    r = client.post("/v1/recommend", json={"history": ["i1"] * 50000})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_catalogue_healthz_metrics_and_page(client):
    r = client.get("/v1/items", params={"limit": 5, "q": "item 1"})
    assert r.status_code == 200 and r.json()["total"] == 11  # item 1, item 10..19
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["items"] == N_ITEMS and h["item_encoder"] == "linkedout"
    client.post("/v1/recommend", json={"history": ["i1"]})
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'linkedout_http_requests_total{method="POST",route="/v1/recommend",status="200"}' in m.text
    assert "linkedout_catalogue_items 40" in m.text
    page = client.get("/")
    assert page.status_code == 200 and "/v1/recommend" in page.text


def test_schemathesis_finds_no_server_error(bundle_and_model, tmp_path):
    """Property-based fuzzing of every operation in the OpenAPI spec: any generated input (valid or not)
    gets a documented, non-5xx answer."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    bundle, _ = bundle_and_model
    app = create_app(ServeConfig(bundle=bundle, events=tmp_path / "fuzz.sqlite", max_body_bytes=200_000))
    with TestClient(app):  # runs the lifespan (bundle, event log) for the fuzzed app
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures = []

        statuses: dict[int, int] = {}

        def fuzz(operation, mode) -> None:
            @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def run(case) -> None:
                response = case.call()
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    failures.append((operation.label, case.body, response.status_code, response.text[:200]))

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE

        labels = []
        for op in schema.get_all_operations():
            operation = op.ok()
            labels.append(operation.label)
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                fuzz(operation, mode)
    assert {"POST /v1/recommend", "POST /v1/events", "POST /v1/items", "POST /v1/admin/reload"} <= set(labels)
    assert sum(statuses.values()) > 100 and 200 in statuses and 422 in statuses, statuses
    assert not failures, failures


# ---------------------------------------------------------------------- handlers without an HTTP client
@contextlib.asynccontextmanager
async def started_state(bundle, tmp_path, **kw) -> AsyncIterator[State]:
    """The State the app's lifespan would build, with its batcher running, for calling handlers directly."""
    state = State(ServeConfig(bundle=bundle, events=tmp_path / "direct.sqlite", **kw))
    await state.batcher.start()
    try:
        yield state
    finally:
        await state.batcher.stop()
        state.close()


def test_recommend_handler_called_directly_ranks_as_the_model(bundle_and_model, tmp_path):
    bundle, model = bundle_and_model

    async def call() -> RecommendResponse:
        async with started_state(bundle, tmp_path) as state:
            return await routes.recommend(RecommendRequest(history=["i3", "i5", "i7"], k=5), state)

    response = asyncio.run(call())
    assert isinstance(response, RecommendResponse)
    import torch

    ref = model.score_all_items(torch.tensor([[3, 5, 7]]))[0].detach()
    ref[[3, 5, 7]] = float("-inf")
    assert [it.item_id for it in response.items] == [f"i{i}" for i in torch.topk(ref, 5).indices.tolist()]
    assert response.history_used == ["i3", "i5", "i7"] and not response.truncated
    assert {c.item_id for c in response.items[0].because} == {"i3", "i5", "i7"}


@pytest.mark.parametrize(
    ("request_body", "words"),
    [
        (RecommendRequest(history=["i1"], user_id="u"), "exactly one"),
        (RecommendRequest(), "exactly one"),
        (RecommendRequest(history=["i1"], k=4), "over the limit of 3"),  # the State's config, not a global
        (RecommendRequest(history=["i1", "nope"], k=2), "unknown item ids"),
    ],
)
def test_recommend_handler_called_directly_refuses_bad_requests_with_422(
    bundle_and_model, tmp_path, request_body, words
):
    async def call() -> None:
        async with started_state(bundle_and_model[0], tmp_path, max_k=3) as state:
            await routes.recommend(request_body, state)

    with pytest.raises(HTTPException) as raised:
        asyncio.run(call())
    assert raised.value.status_code == 422 and words in raised.value.detail


def test_item_handlers_called_directly(bundle_and_model, tmp_path):
    async def call() -> tuple[ItemList, ItemList, ItemInfo]:
        async with started_state(bundle_and_model[0], tmp_path) as state:
            everything = await routes.list_items(state)
            found = await routes.list_items(state, offset=1, limit=5, q="ITEM 1")
            one = await routes.get_item("i7", state)
            with pytest.raises(HTTPException) as missing:
                await routes.get_item("nope", state)
            assert missing.value.status_code == 404
            return everything, found, one

    everything, found, one = asyncio.run(call())
    assert everything.total == N_ITEMS and len(everything.items) == N_ITEMS  # default limit 60
    assert found.total == 11 and [it.item_id for it in found.items] == ["i10", "i11", "i12", "i13", "i14"]
    assert one.row == 7 and not one.added_online and one.source == "bundle" and len(one.layer_weights) == 4


def test_handlers_sit_flat_in_the_app_route_list(bundle_and_model, tmp_path):
    """Not behind app.include_router, whose per-request dispatch through the nested router costs
    15-20 us a request in FastAPI 0.165 (see create_app)."""
    app = create_app(ServeConfig(bundle=bundle_and_model[0], events=tmp_path / "s.sqlite"))
    in_app = {id(r) for r in app.routes}
    assert routes.router.routes and all(id(r) in in_app for r in routes.router.routes)
