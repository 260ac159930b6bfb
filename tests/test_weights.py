"""``avatarforcing weights fetch|path|verify`` with the real ``huggingface_hub`` client against a
Hugging Face Hub stand-in on 127.0.0.1 (`service_hub.FakeHub`, reached through ``HF_ENDPOINT``)
and local folders — never the network."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from service_hub import FakeHub

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.model_loading import resolve_model_source
from avatarforcing.plugin.app.weights import (
    DEFAULT_MANIFEST,
    LICENSE_NOTICE,
    LOCK_FILE_NAME,
    OFFICIAL_DRIVE_FOLDER,
    OFFICIAL_MIRROR,
    WAV2VEC2_REPO,
    WAV2VEC2_REVISION,
    Manifest,
    WeightFile,
    active_weights_dir,
    check_file,
    license_record_file,
    load_manifest,
    location_file,
)
from avatarforcing.plugin.app.weights_fetch import HubSettings
from avatarforcing.plugin.host import build_plugin_host

OFFICIAL = {
    "flow_transformer.pth": os.urandom(300_000),
    "motion_autoencoder.pth": os.urandom(120_000),
}
WAV2VEC2 = {
    "config.json": b'{"model_type": "wav2vec2"}',
    "model.safetensors": os.urandom(250_000),
}
# where each file lands in the weights directory
INSTALLED = {**OFFICIAL, **{f"wav2vec2-base-960h/{name}": data for name, data in WAV2VEC2.items()}}
TOKEN = "hf_SecretTokenForTests0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Known environment: no AVATARFORCING_* or Hugging Face variables, the per-user cache and
    ``HF_HOME`` inside tmp_path, no route off this machine.

    huggingface_hub derives a few paths from the environment once, when first imported (long
    before this test); they are set here to what a process started in this environment would
    have: its stored token and its agent registry under ``HF_HOME`` (an empty registry, so it
    fetches none). Name resolution answers for 127.0.0.1 only: a request meant for anywhere else
    fails at once instead of leaving the machine."""
    for name in list(os.environ):
        if name.startswith(("AVATARFORCING_", "HF_", "HUGGING")) or name == "TRANSFORMERS_OFFLINE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("COLUMNS", "400")  # tables on one line each: assertions do not depend on wrapping
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    (hf_home / ".agent_harnesses.json").write_text('{"standardEnvVars": [], "harnesses": {}}')
    for name, value in {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hf_home / "hub",
        "HF_TOKEN_PATH": hf_home / "token",
        "HF_STORED_TOKENS_PATH": hf_home / "stored_tokens",
        "AGENT_HARNESSES_PATH": hf_home / ".agent_harnesses.json",
        "HF_HUB_OFFLINE": False,
    }.items():
        monkeypatch.setattr(hf_constants, name, value if isinstance(value, bool) else str(value))
    resolve = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"this test may only reach 127.0.0.1, not {host}")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), build_plugin_host({}, load_entry_points=False), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def hub(monkeypatch) -> Iterator[FakeHub]:
    """The two repositories of the built-in manifest on a Hub stand-in; ``HF_ENDPOINT`` points
    at it. wav2vec2 sits at the commit the manifest pins."""
    fake = FakeHub()
    fake.publish(OFFICIAL_MIRROR, {**OFFICIAL, "README.md": b"mirror of the official checkpoints"})
    fake.publish(WAV2VEC2_REPO, {**WAV2VEC2, "vocab.json": b"{}"}, commit=WAV2VEC2_REVISION)
    with fake.running() as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        yield fake


def lock_of(dest: Path) -> dict:
    return json.loads((dest / LOCK_FILE_NAME).read_text())["files"]


def assert_installed(dest: Path, files: dict[str, bytes] = INSTALLED) -> None:
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]


def fetch(dest: Path, *extra: str) -> tuple[int, str, str]:
    return cli("weights", "fetch", "--dest", str(dest), *extra)


# ============================================================================================
# fetching from the Hub
# ============================================================================================
def test_fetch_downloads_verifies_and_locks_then_is_a_no_op(hub, tmp_path):
    dest = tmp_path / "weights"
    status, out, err = fetch(dest, "--accept-license")
    assert status == 0, err
    assert_installed(dest)
    assert out.count("downloaded") == 4
    # config.json is not in LFS: the Hub reports its git blob id, not a sha256
    assert out.count("sha256 verified (the Hub)") == 3 and out.count("git blob id verified (the Hub)") == 1
    # the licence: shown once, accepted, recorded for this user
    assert LICENSE_NOTICE.splitlines()[0] in err and "NOT be" in err and "Licence accepted (--accept-license)" in err
    assert "CC BY-NC 4.0" in json.loads(license_record_file().read_text())["accepted"]
    # the lock: per file, where it came from and what it is
    lock = lock_of(dest)
    mirror_commit = hub.repos[OFFICIAL_MIRROR].branches["main"]
    for name, data in INSTALLED.items():
        entry = lock[name]
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["source"] == "hub"
    assert lock["flow_transformer.pth"] | {"sha256": "", "git_blob": ""} == {
        "size": len(OFFICIAL["flow_transformer.pth"]),
        "sha256": "",
        "git_blob": "",
        "source": "hub",
        "repo": OFFICIAL_MIRROR,
        "filename": "flow_transformer.pth",
        "revision": "main",
        "commit": mirror_commit,
    }
    assert lock["wav2vec2-base-960h/config.json"]["commit"] == WAV2VEC2_REVISION
    # the files live once on disk: hard links to the Hugging Face cache's blobs
    cache = tmp_path / "hf" / "hub"
    assert (cache / "models--multimodalart--AvatarForcingHelpers" / "refs" / "main").read_text() == mirror_commit
    assert (dest / "flow_transformer.pth").stat().st_nlink == 2
    assert hub.downloads() == [
        f"/{OFFICIAL_MIRROR}/resolve/main/flow_transformer.pth",
        f"/{OFFICIAL_MIRROR}/resolve/main/motion_autoencoder.pth",
        f"/{WAV2VEC2_REPO}/resolve/{WAV2VEC2_REVISION}/config.json",
        f"/{WAV2VEC2_REPO}/resolve/{WAV2VEC2_REVISION}/model.safetensors",
    ]

    # a second fetch asks the Hub what is current, finds everything in place, downloads nothing
    asked = len(hub.requests)
    status, out, err = fetch(dest)
    assert status == 0, err
    assert out.count("present") == 4 and "CC BY-NC" not in err  # nothing installed: no licence step
    assert [r.path for r in hub.requests[asked:]] == [
        f"/api/models/{OFFICIAL_MIRROR}/revision/main?blobs=true",
        f"/api/models/{WAV2VEC2_REPO}/revision/{WAV2VEC2_REVISION}?blobs=true",
    ]
    # lost files come back from the Hugging Face cache, without a download
    for name in INSTALLED:
        (dest / name).unlink()
    status, out, err = fetch(dest)
    assert status == 0, err
    assert_installed(dest)
    assert out.count("cached") == 4 and len(hub.downloads()) == 4
    assert "Licence accepted (CC BY-NC 4.0 on " in err and "NOT be" not in err  # acknowledged once
    # verify holds the files to the lock
    status, out, _ = cli("weights", "verify", "--dir", str(dest), "--json")
    report = json.loads(out)
    assert status == 0 and [f["state"] for f in report["files"]] == ["ok"] * 4
    assert all(f["detail"].endswith("sha256 verified (lock)") for f in report["files"])


def test_fetch_into_the_weights_directory_in_use(hub, tmp_path):
    """Without --dest: the per-user weights directory, which the model then finds."""
    status, out, err = cli("weights", "fetch", "--accept-license")
    assert status == 0, err
    dest = tmp_path / "cache" / "avatarforcing" / "weights"
    assert_installed(dest)
    assert "avatarforcing weights path" not in out  # already where avatarforcing looks
    assert resolve_model_source(None, None).flow_transformer == dest / "flow_transformer.pth"


def test_a_changed_upstream_file_is_refused_without_update(hub, tmp_path):
    dest = tmp_path / "weights"
    assert fetch(dest, "--accept-license")[0] == 0
    old_lock = (dest / LOCK_FILE_NAME).read_text()
    old_commit = hub.repos[OFFICIAL_MIRROR].branches["main"]

    # a new commit that only touches the README: same content, nothing to refuse
    same = hub.publish(OFFICIAL_MIRROR, {**OFFICIAL, "README.md": b"edited"})
    status, out, err = fetch(dest)
    assert status == 0, err
    assert out.count("present") == 4 and lock_of(dest)["flow_transformer.pth"]["commit"] == same

    # a new commit that changes a checkpoint: refused, nothing touched
    changed = os.urandom(310_000)
    new_commit = hub.publish(OFFICIAL_MIRROR, {**OFFICIAL, "flow_transformer.pth": changed})
    downloads = len(hub.downloads())
    locked = (dest / LOCK_FILE_NAME).read_text()
    status, _, err = fetch(dest)
    assert status == 1
    assert "refusing to change what" in err and "flow_transformer.pth was multimodalart/AvatarForcingHelpers@" in err
    assert f"now {OFFICIAL_MIRROR}@{new_commit[:12]}" in err and "--update" in err
    assert "motion_autoencoder.pth" not in err  # unchanged files are not listed
    assert len(hub.downloads()) == downloads and (dest / LOCK_FILE_NAME).read_text() == locked
    assert_installed(dest)
    # also when the installed file is gone: the lock, not the file, is what is trusted
    (dest / "flow_transformer.pth").unlink()
    assert fetch(dest)[0] == 1 and not (dest / "flow_transformer.pth").exists()

    # --update accepts it
    status, out, err = fetch(dest, "--update")
    assert status == 0, err
    assert (dest / "flow_transformer.pth").read_bytes() == changed
    entry = lock_of(dest)["flow_transformer.pth"]
    assert entry["commit"] == new_commit and entry["sha256"] == hashlib.sha256(changed).hexdigest()
    assert old_commit != new_commit and old_lock != (dest / LOCK_FILE_NAME).read_text()
    assert fetch(dest)[0] == 0  # and from then on it is the trusted one


def test_a_corrupted_download_is_refused_and_nothing_is_installed(hub, tmp_path):
    dest = tmp_path / "weights"
    good = OFFICIAL["motion_autoencoder.pth"]
    bad = bytes(b ^ 0xFF for b in good[:100]) + good[100:]  # same size: only the sha256 tells
    hub.serve_instead(OFFICIAL_MIRROR, "motion_autoencoder.pth", bad)
    status, _, err = fetch(dest, "--accept-license")
    assert status == 1
    assert "motion_autoencoder.pth from multimodalart/AvatarForcingHelpers@" in err
    assert f"failed verification (sha256 {hashlib.sha256(bad).hexdigest()}, expected" in err
    assert "installed nothing" in err
    assert not dest.exists() or not any(dest.rglob("*"))  # not even the files that were fine
    blobs = tmp_path / "hf" / "hub" / "models--multimodalart--AvatarForcingHelpers" / "blobs"
    assert not (blobs / hashlib.sha256(good).hexdigest()).exists()  # the bad bytes left the cache
    # the server mends its ways: the next run downloads it again and installs everything
    hub.served_instead.clear()
    status, _, err = fetch(dest)
    assert status == 0, err
    assert_installed(dest)


def test_an_interrupted_transfer_resumes_where_it_stopped(hub, tmp_path):
    """huggingface_hub retries a dropped transfer from the bytes it has written (it writes in
    10 MiB blocks, so the file must be larger than one to show it)."""
    big = os.urandom(24 << 20)
    hub.publish(OFFICIAL_MIRROR, {**OFFICIAL, "flow_transformer.pth": big})
    hub.cut_once(OFFICIAL_MIRROR, "flow_transformer.pth")
    dest = tmp_path / "weights"
    status, _, err = fetch(dest, "--accept-license")
    assert status == 0, err
    assert_installed(dest, {**INSTALLED, "flow_transformer.pth": big})
    ranged = [r.range for r in hub.requests if r.path.endswith("/flow_transformer.pth") and r.method == "GET"]
    assert len(ranged) == 2 and ranged[0] is None
    resumed_at = int(ranged[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(big) // 2  # the second request continued, it did not restart


def test_offline_uses_the_cache_and_says_clearly_when_it_cannot(hub, tmp_path, monkeypatch):
    # a cold cache: one error naming every missing file, and not one request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # as read at import by a process started so
    status, _, err = fetch(tmp_path / "cold", "--accept-license")
    assert status == 1 and not hub.requests
    assert err.count("error:") == 1 and "HF_HUB_OFFLINE is set and the Hugging Face cache" in err
    assert all(name in err for name in INSTALLED) and "nothing was installed" in err
    assert not (tmp_path / "cold" / LOCK_FILE_NAME).exists()
    status, _, err = fetch(tmp_path / "cold", "--update")
    assert status == 2 and "--update needs the network" in err

    # a warm cache: the files come back from it, held to the lock, without the network
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    dest = tmp_path / "weights"
    assert fetch(dest, "--accept-license")[0] == 0
    for name in INSTALLED:
        (dest / name).unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    asked = len(hub.requests)
    status, out, err = fetch(dest)
    assert status == 0, err
    assert_installed(dest)
    assert out.count("cached") == 4 and out.count("verified (the lock)") == 4 and len(hub.requests) == asked
    # a fresh directory too: the cache's refs name the commit, its blob names the hashes
    status, out, err = fetch(tmp_path / "elsewhere")
    assert status == 0, err
    assert_installed(tmp_path / "elsewhere")
    assert out.count("sha256 verified (the ETag the Hub sent, kept as the cache's blob name)") == 3
    assert (
        lock_of(tmp_path / "elsewhere")["motion_autoencoder.pth"]["commit"]
        == lock_of(dest)["motion_autoencoder.pth"]["commit"]
    )
    assert len(hub.requests) == asked
    # a damaged cache is caught offline too, and the damaged copy leaves the cache
    (dest / "motion_autoencoder.pth").unlink()
    (tmp_path / "elsewhere" / "motion_autoencoder.pth").unlink()  # the blob's other hard link
    digest = hashlib.sha256(OFFICIAL["motion_autoencoder.pth"]).hexdigest()
    blob = tmp_path / "hf" / "hub" / "models--multimodalart--AvatarForcingHelpers" / "blobs" / digest
    blob.write_bytes(b"rotten" + OFFICIAL["motion_autoencoder.pth"][6:])
    status, _, err = fetch(dest)
    assert status == 1 and "motion_autoencoder.pth from multimodalart/AvatarForcingHelpers@" in err
    assert "failed verification (sha256" in err and not blob.exists()


def test_fetch_requires_accepting_the_licence_once(hub, tmp_path):
    dest = tmp_path / "weights"
    status, _, err = fetch(dest)
    assert status == 2
    assert LICENSE_NOTICE.splitlines()[0] in err
    assert err.count("error:") == 1 and "--accept-license" in err and "nothing was downloaded" in err
    assert not hub.downloads() and (not dest.exists() or not any(dest.rglob("*")))
    assert fetch(dest, "--accept-license")[0] == 0
    # accepted once is accepted: another directory needs no flag
    status, _, err = fetch(tmp_path / "other")
    assert status == 0, err
    assert "Licence accepted (CC BY-NC 4.0 on " in err


def test_the_token_is_used_but_never_shown(hub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)  # even the HTTP client's traces carry no token
    dest = tmp_path / "weights"
    status, out, err = fetch(dest, "--accept-license")
    assert status == 0, err
    assert {r.authorization for r in hub.requests} == {f"Bearer {TOKEN}"}
    debug_log = caplog.text
    # a server that echoes the credentials in its error message: the message is shown, the
    # token is not (also with --debug, which prints the traceback)
    caplog.clear()
    caplog.set_level(logging.INFO)  # below that, the HTTP client traces the server's raw reply
    hub.forbid(OFFICIAL_MIRROR)
    status, out2, err2 = cli("--debug", "weights", "fetch", "--dest", str(tmp_path / "other"))
    assert status == 1 and "access denied for Bearer ***" in err2 and "cannot ask" in err2
    for text in (out, err, out2, err2, debug_log, caplog.text, (dest / LOCK_FILE_NAME).read_text()):
        assert TOKEN not in text and TOKEN[3:] not in text
    assert HubSettings.from_environ({"HF_TOKEN": TOKEN}).redact(f"x {TOKEN} y") == "x *** y"


def test_fetch_from_a_folder_and_with_a_manifest(hub, tmp_path):
    """--from DIR: the files found there (e.g. from the authors' Drive folder) are copied, the
    rest comes from the Hub. A user manifest names other repositories and pins hashes."""
    drive = tmp_path / "drive"
    drive.mkdir()
    for name, data in OFFICIAL.items():
        (drive / name).write_bytes(data)
    dest = tmp_path / "weights"
    status, out, err = fetch(dest, "--from", str(drive), "--accept-license")
    assert status == 0, err
    assert_installed(dest)
    assert out.count("copied") == 2 and out.count("downloaded") == 2
    lock = lock_of(dest)
    assert lock["flow_transformer.pth"]["source"] == "local" and lock["flow_transformer.pth"]["location"] == str(drive)
    assert not any("/resolve/" in p and ".pth" in p for p in hub.downloads())
    # the Hub's copy matches: a plain fetch keeps them; a differing local copy needs --update
    assert fetch(dest)[0] == 0
    (drive / "motion_autoencoder.pth").write_bytes(b"another release")
    status, _, err = fetch(dest, "--from", str(drive))
    assert status == 1 and "motion_autoencoder.pth was copied from" in err and "--update" in err
    assert fetch(dest, "--from", str(drive), "--update")[0] == 0
    assert (dest / "motion_autoencoder.pth").read_bytes() == b"another release"
    # --from takes folders; a mirror of the Hub goes in HF_ENDPOINT
    status, _, err = fetch(dest, "--from", "https://mirror.example/weights")
    assert status == 2 and "HF_ENDPOINT" in err

    # a manifest: another repository, a pinned sha256, and a file nobody hosts
    hub.publish("someone/weights", {"ft.pth": b"flow weights", "extra.bin": b"extra"})
    manifest = tmp_path / "manifest.json"
    entries = [
        {"path": "flow_transformer.pth", "repo": "someone/weights", "filename": "ft.pth", "license": "CC BY-NC 4.0"},
        {"path": "extra.bin", "repo": "someone/weights", "sha256": hashlib.sha256(b"extra").hexdigest()},
        {"path": "by-hand.pth", "origin": "ask the authors"},
    ]
    manifest.write_text(json.dumps({"files": entries}))
    other = tmp_path / "other"
    status, out, err = fetch(other, "--manifest", str(manifest))
    assert status == 1, err
    assert (other / "flow_transformer.pth").read_bytes() == b"flow weights" and (other / "extra.bin").exists()
    assert "not fetched: by-hand.pth has no download source; get it from ask the authors" in out
    # a pin the Hub contradicts is an error before anything is downloaded
    entries[1]["sha256"] = "0" * 64
    manifest.write_text(json.dumps({"files": entries[:2]}))
    downloads = len(hub.downloads())
    status, _, err = fetch(tmp_path / "third", "--manifest", str(manifest))
    assert status == 1 and "extra.bin: someone/weights@" in err and "the manifest says 0000" in err
    assert len(hub.downloads()) == downloads


def test_an_unknown_repository_or_file_is_one_clear_error(hub, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": [{"path": "a.pth", "repo": "nobody/nothing"}]}))
    status, _, err = fetch(tmp_path / "w", "--manifest", str(manifest))
    assert status == 1 and err.count("error:") == 1
    assert "cannot ask" in err and "nobody/nothing@main" in err and "RepositoryNotFoundError" in err
    manifest.write_text(json.dumps({"files": [{"path": "a.pth", "repo": OFFICIAL_MIRROR}]}))
    status, _, err = fetch(tmp_path / "w", "--manifest", str(manifest))
    assert status == 1 and f"{OFFICIAL_MIRROR}@" in err and "has no a.pth" in err


def test_an_unreachable_hub_says_how_to_work_offline(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    status, _, err = fetch(tmp_path / "w", "--accept-license")
    assert status == 1 and err.count("error:") == 1
    assert f"cannot ask http://127.0.0.1:{port} about {OFFICIAL_MIRROR}@main: ConnectError" in err
    assert "set HF_HUB_OFFLINE=1" in err


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


def _manifest_for(folder: Path, path: Path, *, sha256: bool = True, size: bool = True) -> Path:
    files = [
        {
            "path": name,
            "size": len(data) if size else None,
            "sha256": hashlib.sha256(data).hexdigest() if sha256 else None,
            "license": "Apache-2.0",
        }
        for name, data in INSTALLED.items()
    ]
    path.write_text(json.dumps({"files": files}))
    return path


def test_weights_verify_reports_each_file(tmp_path):
    folder = tmp_path / "weights"
    for name, data in INSTALLED.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = _manifest_for(folder, tmp_path / "manifest.json")
    status, out, err = cli("weights", "verify", "--dir", str(folder), "--manifest", str(manifest), "--json")
    report = json.loads(out)
    assert status == 0, err
    assert [f["state"] for f in report["files"]] == ["ok"] * 4 and report["load"] is None

    (folder / "motion_autoencoder.pth").write_bytes(b"changed")
    (folder / "wav2vec2-base-960h" / "config.json").unlink()
    status, out, _ = cli("weights", "verify", "--dir", str(folder), "--manifest", str(manifest), "--json")
    states = {f["path"]: f["state"] for f in json.loads(out)["files"]}
    assert status == 1
    assert states == {
        "flow_transformer.pth": "ok",
        "motion_autoencoder.pth": "size-mismatch",
        "wav2vec2-base-960h/config.json": "missing",
        "wav2vec2-base-960h/model.safetensors": "ok",
    }
    _manifest_for(folder, manifest, size=False)
    status, out, _ = cli("weights", "verify", "--dir", str(folder), "--manifest", str(manifest))
    assert status == 1 and "hash-mismatch" in out and "missing" in out
    # without hashes in the manifest or a lock, present files are only "unverified"
    _manifest_for(folder, manifest, size=False, sha256=False)
    (folder / "wav2vec2-base-960h" / "config.json").write_bytes(b"{}")
    status, out, _ = cli("weights", "verify", "--dir", str(folder), "--manifest", str(manifest), "--json")
    assert status == 0 and {f["state"] for f in json.loads(out)["files"]} == {"unverified"}


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory) -> Path:
    """Formula weights (fixture_small) laid out like the official release, the motion
    autoencoder written with another key spelling (standalone names under DataParallel's
    ``module.``, nested in ``state_dict``) to prove the loader and the report follow it."""
    from safetensors.torch import save_file

    from avatarforcing.engine.config import ModelConfig
    from avatarforcing.engine.official.model import AvatarForcingModel

    torch.set_num_threads(2)
    model = AvatarForcingModel.with_formula_weights(ModelConfig.fixture_small(), 0)
    folder = tmp_path_factory.mktemp("official")
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    mae = "motion_autoencoder."
    torch.save(
        {"state_dict": {"module." + k[len(mae) :]: v for k, v in params.items() if k.startswith(mae)}, "epoch": 3},
        folder / "motion_autoencoder.pth",
    )
    torch.save(
        {k: v for k, v in params.items() if k.startswith(("flow_transformer.", "audio_encoder.audio_projection."))},
        folder / "flow_transformer.pth",
    )
    hf = folder / "wav2vec2-base-960h"
    hf.mkdir()
    prefix = "audio_encoder.wav2vec2."
    save_file(
        {"wav2vec2." + k[len(prefix) :]: v.contiguous() for k, v in params.items() if k.startswith(prefix)},
        hf / "model.safetensors",
    )
    (hf / "config.json").write_text(model.audio_encoder.wav2vec2.config.to_json_string())
    return folder


def test_weights_verify_load_prints_the_key_prefix_variant(official_folder):
    status, out, err = cli(
        "--set", "model.preset=fixture_small", "weights", "verify", "--dir", str(official_folder), "--load"
    )
    assert status == 0, out + err
    assert "load: ok (strict)" in out and "key-prefix variant found:" in out
    assert "motion_autoencoder.pth: standalone names, wrapper module. stripped" in out
    assert "like module.enc." in out and "-> motion_autoencoder.enc." in out
    assert "flow_transformer.pth: full names, no wrapper prefix" in out
    assert "like audio_encoder.audio_projection." in out
    status, out, _ = cli(
        "--set", "model.preset=fixture_small", "weights", "verify", "--dir", str(official_folder), "--load", "--json"
    )
    report = json.loads(out)
    assert status == 0 and report["load"] == "ok"
    layouts = {layout["file"]: layout for layout in report["key_layouts"]}
    assert layouts["motion_autoencoder.pth"]["groups"][0]["wrapper"] == "module."
    assert layouts["motion_autoencoder.pth"]["groups"][0]["added"] == "motion_autoencoder."
    assert layouts["flow_transformer.pth"]["variant"] == "full names, no wrapper prefix"


def test_weights_verify_load_refuses_checkpoints_that_do_not_fit(official_folder, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    os.link(official_folder / "flow_transformer.pth", folder / "flow_transformer.pth")
    torch.save({"model.encoder.fc.weight": torch.zeros(2)}, folder / "motion_autoencoder.pth")
    (folder / "wav2vec2-base-960h").symlink_to(official_folder / "wav2vec2-base-960h")
    status, out, _ = cli("weights", "--set", "model.preset=fixture_small", "verify", "--dir", str(folder), "--load")
    assert status == 1
    assert "load failed: cannot load official weights in" in out
    assert "motion_autoencoder.pth: no key names a parameter, no wrapper prefix (1 tensors)" in out
    assert "1 naming no parameter" in out
    # missing files: no load at all
    (folder / "flow_transformer.pth").unlink()
    status, out, _ = cli("weights", "--set", "model.preset=fixture_small", "verify", "--dir", str(folder), "--load")
    assert status == 1 and "load: skipped" in out


# ============================================================================================
# the manifest and the settings
# ============================================================================================
def test_the_built_in_manifest(tmp_path):
    assert [f.path for f in DEFAULT_MANIFEST.files] == [
        "flow_transformer.pth",
        "motion_autoencoder.pth",
        "wav2vec2-base-960h/config.json",
        "wav2vec2-base-960h/model.safetensors",
    ]
    flow, _, config, weights = DEFAULT_MANIFEST.files
    assert (flow.repo, flow.filename, flow.revision, flow.pinned) == (
        OFFICIAL_MIRROR,
        "flow_transformer.pth",
        "main",
        False,
    )
    assert flow.restricted and OFFICIAL_DRIVE_FOLDER in flow.origin  # the authors' source stays named
    assert (weights.repo, weights.filename, weights.pinned) == (WAV2VEC2_REPO, "model.safetensors", True)
    assert config.revision == WAV2VEC2_REVISION and not config.restricted
    assert Manifest.from_dict(DEFAULT_MANIFEST.to_dict(), "x").files == DEFAULT_MANIFEST.files


def test_manifest_entries_are_checked(tmp_path):
    entry = WeightFile("wav2vec2-base-960h/config.json", WAV2VEC2_REPO, "config.json")
    assert entry.revision == "main" and WeightFile("a/b.pth").filename == "a/b.pth"
    for bad in ("../escape.pth", "/abs.pth"):
        with pytest.raises(ValueError, match="must be relative"):
            WeightFile(bad)
    with pytest.raises(ValueError, match="sha256"):
        WeightFile("a", sha256="xyz")
    with pytest.raises(ValueError, match="owner/name"):
        WeightFile("a", repo="https://huggingface.co/x")
    # earlier manifests held Hub URLs: still read; any other URL is refused with the way forward
    old = {"path": "c.json", "url": f"https://huggingface.co/{WAV2VEC2_REPO}/resolve/main/config.json"}
    (converted,) = Manifest.from_dict({"files": [old, {"path": "x", "url": None}]}, "old").files[:1]
    assert (converted.repo, converted.revision, converted.filename) == (WAV2VEC2_REPO, "main", "config.json")
    (tmp_path / "bad.json").write_text('{"files": [{"path": "a", "url": "https://example.com/a.pth"}]}')
    with pytest.raises(CommandError, match="not a valid weights manifest.*Hugging Face Hub only.*--from DIR"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"files": [{"path": "a", "colour": 1}]}')
    with pytest.raises(CommandError, match="not a valid weights manifest.*unknown keys"):
        load_manifest(tmp_path / "bad.json")
    with pytest.raises(CommandError, match="not found"):
        load_manifest(tmp_path / "none.json")
    (tmp_path / "f").write_bytes(b"abc")
    ok = WeightFile("f", size=3, sha256=hashlib.sha256(b"abc").hexdigest())
    assert check_file(ok, tmp_path / "f").state == "ok"
    assert check_file(ok, tmp_path / "f", hash_files=False).state == "unverified"


def test_hub_settings_follow_the_environment(tmp_path):
    settings = HubSettings.from_environ({"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert settings == HubSettings(None, tmp_path / "xdg" / "huggingface" / "hub", None, False)
    settings = HubSettings.from_environ(
        {"HF_HOME": "/h", "HF_ENDPOINT": "http://127.0.0.1:9/", "HF_HUB_OFFLINE": "1", "HF_TOKEN": "t"}
    )
    assert settings == HubSettings("http://127.0.0.1:9", Path("/h/hub"), "t", True, 10.0)
    assert HubSettings.from_environ({"HF_HUB_ETAG_TIMEOUT": "3"}).timeout == 3.0
    assert HubSettings.from_environ({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}).cache_dir == Path("/c")
    assert HubSettings.from_environ({}).redact("Bearer abc hf_abcdefghijk") == "Bearer *** hf_***"
