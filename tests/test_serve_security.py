"""Security defaults of the service: API key on writes, no open bind without a key, media roots
(traversal, symlink escape), body limits (declared and streamed), CORS off unless asked."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from linkedout.serve.app import create_app
from linkedout.serve.security import check_bind, resolve_media_path
from linkedout.serve.state import ServeConfig
from linkedout.synthetic import synthetic_bundle

EVENT = {"events": [{"event_id": "e1", "user_id": "u", "item_id": "i1"}]}


@pytest.fixture(scope="module")
def bundle():
    return synthetic_bundle(20)[0]


def make_client(bundle, tmp_path, **kw) -> TestClient:
    return TestClient(create_app(ServeConfig(bundle=bundle, events=tmp_path / "s.sqlite", **kw)))


def test_write_endpoints_need_the_api_key_when_one_is_configured(bundle, tmp_path):
    with make_client(bundle, tmp_path, api_key="s3cret") as c:
        assert c.post("/v1/events", json=EVENT).status_code == 401
        assert c.post("/v1/events", json=EVENT, headers={"x-api-key": "wrong"}).status_code == 401
        r = c.post("/v1/items", json={"item_id": "n", "tokens": [[[0.0]]]})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert c.post("/v1/events", json=EVENT, headers={"x-api-key": "s3cret"}).status_code == 200
        ev2 = {"events": [{"event_id": "e2", "user_id": "u", "item_id": "i2"}]}
        assert c.post("/v1/events", json=ev2, headers={"authorization": "Bearer s3cret"}).status_code == 200
        # reads stay open
        assert c.post("/v1/recommend", json={"user_id": "u"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_no_api_key_means_open_writes_on_loopback(bundle, tmp_path):
    with make_client(bundle, tmp_path) as c:
        assert c.post("/v1/events", json=EVENT).status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_refuses_non_loopback_bind_without_a_key(host):
    with pytest.raises(ValueError, match="refusing to bind"):
        check_bind(host, None)
    check_bind(host, "key")  # with a key: allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_bind_needs_no_key(host):
    check_bind(host, None)


def test_cli_serve_refuses_open_bind_with_a_message(tmp_path, bundle, monkeypatch):
    from linkedout.cli import app

    monkeypatch.delenv("LINKEDOUT_API_KEY", raising=False)
    bundle.save(tmp_path / "b")
    result = CliRunner().invoke(app, ["serve", "--bundle", str(tmp_path / "b"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "refusing to bind" in result.output


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.mp4").write_bytes(b"x")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"y")
    os.symlink(outside, root / "escape.mp4")  # a link inside the root pointing out of it
    os.symlink(root / "sub" / "ok.mp4", root / "inner.mp4")  # a link that stays inside is fine
    return root, outside


def test_media_paths_only_under_roots(media):
    root, outside = media
    roots = [root.resolve()]
    assert resolve_media_path(str(root / "sub" / "ok.mp4"), roots) == (root / "sub" / "ok.mp4").resolve()
    assert resolve_media_path("sub/ok.mp4", roots) == (root / "sub" / "ok.mp4").resolve()
    assert resolve_media_path("inner.mp4", roots) == (root / "sub" / "ok.mp4").resolve()
    for bad in (
        str(outside),
        "../secret.mp4",
        "sub/../../secret.mp4",
        "escape.mp4",
        str(root / "escape.mp4"),
        "/etc/passwd",
        "sub",
        "missing.mp4",
        "a\x00b",
    ):
        with pytest.raises(PermissionError):
            resolve_media_path(bad, roots)
    with pytest.raises(PermissionError, match="no media roots"):
        resolve_media_path(str(root / "sub" / "ok.mp4"), [])


def test_api_rejects_video_paths_outside_roots_with_403(bundle, tmp_path, media):
    root, outside = media
    with make_client(bundle, tmp_path, media_roots=[root]) as c:
        for bad in (str(outside), "../secret.mp4", "escape.mp4"):
            r = c.post("/v1/items", json={"item_id": "v", "video_path": bad})
            assert r.status_code == 403, (bad, r.text)
    with make_client(bundle, tmp_path) as c:
        r = c.post("/v1/items", json={"item_id": "v", "video_path": str(root / "sub" / "ok.mp4")})
        assert r.status_code == 403 and "no media roots" in r.json()["detail"]


def test_body_limit_declared_and_streamed(bundle, tmp_path):
    with make_client(bundle, tmp_path, max_body_bytes=1000) as c:
        big = b'{"history": [' + b'"i1",' * 400 + b'"i1"]}'
        r = c.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413

        def chunks():  # no Content-Length: chunked transfer, counted while streaming
            yield b'{"history": ['
            for _ in range(400):
                yield b'"i1",'
            yield b'"i1"]}'

        r = c.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert c.post("/v1/recommend", json={"history": ["i1"]}).status_code == 200


def test_history_length_limit(bundle, tmp_path):
    with make_client(bundle, tmp_path, max_history=5) as c:
        r = c.post("/v1/recommend", json={"history": ["i1"] * 6})
        assert r.status_code == 422 and "limit of 5" in r.json()["detail"]
        r = c.post("/v1/recommend", json={"history": [f"i{i}" for i in range(5)]})
        assert r.status_code == 200


def test_cors_is_off_by_default_and_on_when_configured(bundle, tmp_path):
    headers = {"origin": "http://evil.example", "access-control-request-method": "POST"}
    with make_client(bundle, tmp_path) as c:
        r = c.get("/healthz", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.options("/v1/recommend", headers=headers).headers
    with make_client(bundle, tmp_path, cors_origins=["http://app.example"]) as c:
        r = c.get("/healthz", headers={"origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        assert (
            "access-control-allow-origin"
            not in c.get("/healthz", headers={"origin": "http://evil.example"}).headers
        )
