"""``avatarforcing weights fetch|path|verify`` against stand-ins for the remote: a local
directory (``file://``) and HTTP servers on 127.0.0.1 — never the network."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.model_loading import resolve_model_source
from avatarforcing.plugin.app.weights import (
    DEFAULT_MANIFEST,
    LICENSE_NOTICE,
    Manifest,
    WeightFile,
    active_weights_dir,
    check_file,
    load_manifest,
    location_file,
    source_url,
)
from avatarforcing.plugin.host import build_plugin_host

FILES = {
    "flow_transformer.pth": os.urandom(300_000),
    "motion_autoencoder.pth": os.urandom(120_000),
    "wav2vec2-base-960h/config.json": b'{"model_type": "wav2vec2"}',
    "wav2vec2-base-960h/model.safetensors": os.urandom(2_500_000),
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Known environment: no AVATARFORCING_* variables, the per-user cache inside tmp_path."""
    for name in list(os.environ):
        if name.startswith("AVATARFORCING_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), build_plugin_host({}, load_entry_points=False), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def remote(tmp_path) -> Path:
    """A directory standing in for the remote: the four files of the manifest."""
    folder = tmp_path / "remote"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def manifest_file(
    path: Path, *, sha256: bool = True, size: bool = True, urls: str | None = None, corrupt: str = ""
) -> Path:
    """A manifest for FILES (sizes/hashes optional; `corrupt` gets a wrong sha256)."""
    files = []
    for name, data in FILES.items():
        digest = hashlib.sha256(data).hexdigest()
        files.append(
            {
                "path": name,
                "url": f"{urls}/{name}" if urls else None,
                "size": len(data) if size else None,
                "sha256": ("0" * 64 if name == corrupt else digest) if sha256 else None,
                "license": "CC BY-NC 4.0" if name.endswith(".pth") else "Apache-2.0",
                "origin": "test",
            }
        )
    path.write_text(json.dumps({"files": files}))
    return path


def assert_fetched(dest: Path) -> None:
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data, name
    assert not list(dest.rglob("*.part"))


# ============================================================================================
# fetch from a local directory (file://)
# ============================================================================================
def test_fetch_from_a_directory_checks_sizes_and_hashes(remote, tmp_path):
    dest = tmp_path / "weights"
    manifest = manifest_file(tmp_path / "manifest.json")
    status, out, err = cli(
        "weights", "fetch", "--from", str(remote), "--dest", str(dest), "--manifest", str(manifest), "--accept-license"
    )
    assert status == 0, err
    assert_fetched(dest)
    assert "CC BY-NC 4.0" in err and "NOT be" in err and "Licence accepted" in err
    assert out.count("downloaded") == 4 and out.count("sha256 verified") == 4
    # a second run keeps what checks out and touches nothing, even with the remote gone
    for name in FILES:
        (remote / name).unlink()
    status, out, err = cli("weights", "fetch", "--from", str(remote), "--dest", str(dest), "--manifest", str(manifest))
    assert status == 0, err
    assert out.count("present") == 4 and "CC BY-NC" not in err  # nothing to download: no licence prompt
    assert_fetched(dest)


def test_fetch_with_the_default_manifest_warns_that_nothing_could_be_verified(remote, tmp_path):
    dest = tmp_path / "weights"
    status, out, err = cli("weights", "fetch", "--from", remote.as_uri(), "--dest", str(dest), "--accept-license")
    assert status == 0, err
    assert_fetched(dest)
    assert out.count("warning:") == 4 and "the manifest has no size or sha256 to verify it" in out
    # the fetched files are not where avatarforcing looks: the command says how to point at them
    assert "avatarforcing weights path" in out


def test_fetch_requires_accepting_the_licence(remote, tmp_path):
    dest = tmp_path / "weights"
    status, _, err = cli("weights", "fetch", "--from", str(remote), "--dest", str(dest))
    assert status == 2
    assert LICENSE_NOTICE.splitlines()[0] in err and "--accept-license" in err and "nothing was downloaded" in err
    assert not dest.exists() or not any(dest.rglob("*"))


def test_fetch_deletes_a_file_that_fails_its_hash(remote, tmp_path):
    dest = tmp_path / "weights"
    manifest = manifest_file(tmp_path / "manifest.json", corrupt="motion_autoencoder.pth")
    status, _, err = cli(
        "weights", "fetch", "--from", str(remote), "--dest", str(dest), "--manifest", str(manifest), "--accept-license"
    )
    assert status == 1
    assert "motion_autoencoder.pth from file://" in err and "failed verification: sha256" in err and "deleted" in err
    assert (dest / "flow_transformer.pth").read_bytes() == FILES["flow_transformer.pth"]  # earlier files stay
    assert not (dest / "motion_autoencoder.pth").exists() and not (dest / "motion_autoencoder.pth.part").exists()


def test_fetch_resumes_a_partial_file_from_a_directory(remote, tmp_path):
    dest = tmp_path / "weights"
    data = FILES["wav2vec2-base-960h/model.safetensors"]
    part = dest / "wav2vec2-base-960h" / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1_000_000])
    manifest = manifest_file(tmp_path / "manifest.json")
    status, _, err = cli(
        "weights", "fetch", "--from", str(remote), "--dest", str(dest), "--manifest", str(manifest), "--accept-license"
    )
    assert status == 0, err
    assert_fetched(dest)


def test_fetch_without_download_urls_points_at_the_official_folder(tmp_path):
    """The built-in manifest has no direct URL for the official checkpoints (the authors use a
    Google Drive folder): the wav2vec2 files already present are kept, the others named."""
    dest = tmp_path / "weights"
    for name in ("config.json", "model.safetensors"):
        (dest / "wav2vec2-base-960h").mkdir(parents=True, exist_ok=True)
        (dest / "wav2vec2-base-960h" / name).write_bytes(b"{}")
    status, out, _ = cli("weights", "fetch", "--dest", str(dest))
    assert status == 1
    assert out.count("not fetched:") == 2 and "drive.google.com/drive/folders/" in out
    assert "avatarforcing weights fetch --from DIR" in out


# ============================================================================================
# fetch over HTTP (servers on 127.0.0.1)
# ============================================================================================
class RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves FILES with ``Range: bytes=N-`` support; the first request for a path listed in
    ``cut`` sends only half of its body and drops the connection."""

    requests: ClassVar[list[tuple[str, str | None]]] = []
    cut: ClassVar[set[str]] = set()

    def do_GET(self):
        name = self.path.lstrip("/")
        self.requests.append((name, self.headers.get("Range")))
        if name not in FILES:
            self.send_error(404)
            return
        data = FILES[name]
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.cut:
            self.cut.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def serving(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_over_http_resumes_after_an_interrupted_transfer(tmp_path):
    RangeServer.requests = []
    RangeServer.cut = {"flow_transformer.pth"}
    dest = tmp_path / "weights"
    with serving(RangeServer) as url:
        manifest = manifest_file(tmp_path / "manifest.json", urls=url)  # URLs in the manifest itself
        status, _, err = cli("weights", "fetch", "--dest", str(dest), "--manifest", str(manifest), "--accept-license")
        assert status == 1 and "flow_transformer.pth" in err and "run the command again to resume" in err
        partial = dest / "flow_transformer.pth.part"
        assert partial.stat().st_size == len(FILES["flow_transformer.pth"]) // 2
        assert not (dest / "flow_transformer.pth").exists()  # never a truncated file at the final name
        status, _, err = cli("weights", "fetch", "--dest", str(dest), "--manifest", str(manifest), "--accept-license")
    assert status == 0, err
    assert_fetched(dest)
    half = len(FILES["flow_transformer.pth"]) // 2
    assert ("flow_transformer.pth", f"bytes={half}-") in RangeServer.requests  # resumed, not restarted


def test_fetch_over_http_from_a_server_without_range_support(remote, tmp_path):
    """``--from http://...`` against the standard library's file server, which ignores Range:
    a stale partial file is replaced by a complete download."""
    dest = tmp_path / "weights"
    stale = dest / "flow_transformer.pth.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale bytes that are not the start of the file")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(remote), **kwargs)

        def log_message(self, *args):
            pass

    manifest = manifest_file(tmp_path / "manifest.json")
    with serving(Files) as url:
        status, _, err = cli(
            "weights", "fetch", "--from", url, "--dest", str(dest), "--manifest", str(manifest), "--accept-license"
        )
        assert status == 0, err
        status, _, err = cli(
            "weights",
            "fetch",
            "--from",
            url + "/missing",
            "--dest",
            str(tmp_path / "other"),
            "--manifest",
            str(manifest),
            "--accept-license",
        )
    assert_fetched(dest)
    assert status == 1 and "HTTP 404" in err and "flow_transformer.pth" in err


# ============================================================================================
# path and verify
# ============================================================================================
def test_weights_path_shows_records_and_resets_the_local_copy(tmp_path, monkeypatch):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    status, out, _ = cli("weights", "path", "--json")
    shown = json.loads(out)
    assert status == 0 and shown["origin"] == "per-user cache"
    assert shown["path"] == str(tmp_path / "cache" / "avatarforcing" / "weights")
    assert shown["files"] == {entry.path: False for entry in DEFAULT_MANIFEST.files}

    copy = tmp_path / "my copy"
    copy.mkdir()
    for name in ("flow_transformer.pth", "motion_autoencoder.pth"):
        (copy / name).write_bytes(b"x")
    status, out, _ = cli("weights", "path", str(copy))
    assert status == 0 and f"recorded {copy}" in out and "found" in out
    assert json.loads(location_file(env).read_text()) == {"weights_dir": str(copy)}
    active = active_weights_dir(None, env)
    assert active.path == copy and active.origin.startswith("recorded in ")
    # the model default follows the recorded copy
    assert resolve_model_source(None, None, env).flow_transformer == copy / "flow_transformer.pth"
    # the environment variable and [model] checkpoint_dir take precedence, and the command says so
    monkeypatch.setenv("AVATARFORCING_WEIGHTS", str(tmp_path / "elsewhere"))
    status, _, err = cli("weights", "path", str(copy))
    assert status == 0 and "$AVATARFORCING_WEIGHTS takes precedence" in err
    monkeypatch.delenv("AVATARFORCING_WEIGHTS")
    status, out, _ = cli("--set", f"model.checkpoint_dir={tmp_path}", "weights", "path")
    assert f"{tmp_path} ([model] checkpoint_dir)" in out

    status, out, _ = cli("weights", "path", "--reset")
    assert status == 0 and "forgot" in out and not location_file(env).exists()
    status, _, err = cli("weights", "path", str(tmp_path / "missing"))
    assert status == 2 and "is not an existing directory" in err


def test_weights_verify_reports_each_file(remote, tmp_path):
    manifest = manifest_file(tmp_path / "manifest.json")
    status, out, err = cli("weights", "verify", "--dir", str(remote), "--manifest", str(manifest), "--json")
    report = json.loads(out)
    assert status == 0, err
    assert [f["state"] for f in report["files"]] == ["ok"] * 4 and report["load"] is None

    (remote / "motion_autoencoder.pth").write_bytes(b"changed")
    (remote / "wav2vec2-base-960h" / "config.json").unlink()
    status, out, _ = cli("weights", "verify", "--dir", str(remote), "--manifest", str(manifest), "--json")
    states = {f["path"]: f["state"] for f in json.loads(out)["files"]}
    assert status == 1
    assert states == {
        "flow_transformer.pth": "ok",
        "motion_autoencoder.pth": "size-mismatch",
        "wav2vec2-base-960h/config.json": "missing",
        "wav2vec2-base-960h/model.safetensors": "ok",
    }
    manifest_file(manifest, size=False)
    status, out, _ = cli("weights", "verify", "--dir", str(remote), "--manifest", str(manifest))
    assert status == 1 and "hash-mismatch" in out and "missing" in out


def test_weights_verify_load_refuses_checkpoints_that_do_not_fit(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({"not_a_parameter": torch.zeros(2)}, folder / "flow_transformer.pth")
    torch.save({"motion_autoencoder.nope": torch.zeros(2)}, folder / "motion_autoencoder.pth")
    hf = folder / "wav2vec2-base-960h"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    status, out, _ = cli("weights", "--set", "model.preset=fixture_small", "verify", "--dir", str(folder), "--load")
    assert status == 1
    assert "load failed: cannot load official weights in" in out


# ============================================================================================
# the manifest
# ============================================================================================
def test_manifest_entries_and_urls(tmp_path):
    entry = WeightFile("wav2vec2-base-960h/config.json", None, 3, None, "Apache-2.0", "test")
    assert not entry.restricted and DEFAULT_MANIFEST.files[0].restricted
    assert source_url(entry, "https://mirror.example/w/") == "https://mirror.example/w/wav2vec2-base-960h/config.json"
    assert source_url(entry, str(tmp_path)) == (tmp_path / "wav2vec2-base-960h" / "config.json").as_uri()
    assert source_url(entry, None) is None
    hub = WeightFile("wav2vec2-base-960h/config.json", "https://hub.example/config.json", None, None, "Apache-2.0", "t")
    assert source_url(hub, str(tmp_path)) == "https://hub.example/config.json"  # not in the folder: its hub
    assert [f.path for f in DEFAULT_MANIFEST.files] == [
        "flow_transformer.pth",
        "motion_autoencoder.pth",
        "wav2vec2-base-960h/config.json",
        "wav2vec2-base-960h/model.safetensors",
    ]
    assert (
        DEFAULT_MANIFEST.files[3].url
        == "https://huggingface.co/facebook/wav2vec2-base-960h/resolve/main/model.safetensors"
    )
    assert Manifest.from_dict(DEFAULT_MANIFEST.to_dict(), "x").files == DEFAULT_MANIFEST.files
    for bad in ("../escape.pth", "/abs.pth"):
        with pytest.raises(ValueError, match="must be relative"):
            WeightFile(bad, None, None, None, "", "")
    with pytest.raises(ValueError, match="sha256"):
        WeightFile("a", None, None, "xyz", "", "")
    (tmp_path / "bad.json").write_text('{"files": [{"path": "a", "colour": 1}]}')
    with pytest.raises(CommandError, match="not a valid weights manifest.*unknown keys"):
        load_manifest(tmp_path / "bad.json")
    with pytest.raises(CommandError, match="not found"):
        load_manifest(tmp_path / "none.json")
    (tmp_path / "f").write_bytes(b"abc")
    ok = WeightFile("f", None, 3, hashlib.sha256(b"abc").hexdigest(), "", "")
    assert check_file(ok, tmp_path / "f").state == "ok"
    assert check_file(ok, tmp_path / "f", hash_files=False).state == "unverified"
