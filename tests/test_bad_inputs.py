"""Every bad input of `run`/`render` gets one clear answer before going live: unreadable file
sources, outputs that cannot or must not be written, a portrait that is not an image, secrets in
printed configurations; a live session whose files end stops, a file that fails mid-session
and a recorder whose disk is gone end it with exit 1 (see docs/troubleshooting.md).

Real files, the real CLI (`run_cli` with the installed plugins, or a subprocess where the exit
status of the process or a signal-free mid-session event matters)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from avatarforcing.integrations.media import VideoWriter, load_audio, video_info
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.host import build_plugin_host

HANG_GUARD_S = 240  # a guard against a hang, not a speed bound


@pytest.fixture(scope="module")
def host():
    return build_plugin_host({})


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 1.5 s tone, a 0 s wav, a video without audio, a text file, a text file named like an image."""
    folder = tmp_path_factory.mktemp("media")
    t = np.arange(int(1.5 * 16000)) / 16000
    soundfile.write(folder / "voice.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    soundfile.write(folder / "empty.wav", np.zeros(0, np.float32), 16000)
    with VideoWriter(folder / "mute.mp4", 25, audio_sample_rate=None) as writer:
        for i in range(25):
            writer.write_frame(np.full((64, 64, 3), i * 5, np.uint8))
    (folder / "notes.txt").write_text("not media")
    (folder / "notes.jpg").write_text("not an image")
    return {p.stem if p.suffix != ".jpg" else "notes_jpg": p for p in folder.iterdir()}


def cli(host, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), host, out, err, environ={})
    return status, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    """The single error line of `err` (asserts there is exactly one and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def subprocess_run(argv: list[str], cwd: Path, warm_up: bool = False, **kwargs) -> subprocess.Popen:
    """`avatarforcing ARGV` in a subprocess without a display (the demo preset then records);
    without warm-up unless asked (the tests here are about inputs and outputs, not the start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    cmd = [sys.executable, "-m", "avatarforcing.plugin", *argv, "--set", f"session.warm_up={str(warm_up).lower()}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, **kwargs)


# -- file sources ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, name, problem",
    [
        ("--user-audio", "mute", "has no audio stream"),  # a video without audio as a voice
        ("--avatar-audio", "notes", "cannot be opened as media"),
        ("--user-video", "voice", "has no video stream"),
        ("--avatar-video", "notes", "cannot be opened as media"),
        ("--avatar-video", "voice", "has no video stream"),
    ],
)
def test_run_refuses_an_unreadable_file_source_before_going_live(host, media, tmp_path, flag, name, problem):
    argv = ["run", "--preset", "demo", "--record", str(tmp_path / "r.mp4"), flag, str(media[name])]
    if flag != "--avatar-audio":
        argv += ["--avatar-audio", str(media["voice"])]
    status, out, err = cli(host, *argv)
    assert status == 2
    assert one_line(err) == f"avatarforcing: error: {flag}: {problem}" + one_line(err).split(problem, 1)[1]
    assert str(media[name]) in err and "frames 0" not in err + out
    assert not (tmp_path / "r.mp4").exists()


def test_a_file_source_chosen_with_set_is_checked_too(host, media, tmp_path):
    status, _, err = cli(
        host,
        "run",
        "--preset",
        "demo",
        "--record",
        str(tmp_path / "r.mp4"),
        "--set",
        "sources.user_audio.use=audio-file",
        "--set",
        f"sources.user_audio.path={media['mute']}",
    )
    assert status == 2
    assert one_line(err) == f"avatarforcing: error: sources.user_audio.path: has no audio stream: '{media['mute']}'"


def test_run_exits_2_in_a_real_process_without_retrying(media, tmp_path):
    proc = subprocess_run(["run", "--preset", "demo", "--user-audio", str(media["mute"])], tmp_path)
    _out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    assert "retrying" not in err and "is back" not in err
    assert one_line(err) == f"avatarforcing: error: --user-audio: has no audio stream: '{media['mute']}'"


def test_run_with_only_an_avatar_audio_file_ends_at_its_end(media, tmp_path):
    """The demo preset's endless silence (the other party) must not keep the session alive."""
    record = tmp_path / "out.mp4"
    argv = ["run", "--preset", "demo", "--avatar-audio", str(media["voice"]), "--record", str(record)]
    proc = subprocess_run([*argv, "--set", "session.stats_interval=0"], tmp_path)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    assert "session ended:" in out
    assert video_info(record).frame_count > 0


def test_a_short_file_starts_with_the_clock_not_during_warm_up(tmp_path):
    """File sources start when the session goes live, not before warm-up: a 3 s voice reaches the
    recording but for the first clip's stale frames, which a live session skips to show its live
    edge (counted in the stats). Started before warm-up, the voice played unheard during warm-up
    as well (0.2-0.3 s here in a fresh process)."""
    voice, record, stats = tmp_path / "voice3.wav", tmp_path / "short.mp4", tmp_path / "stats.json"
    t = np.arange(3 * 16000) / 16000
    soundfile.write(voice, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    argv = ["run", "--preset", "demo", "--avatar-audio", str(voice), "--record", str(record)]
    proc = subprocess_run([*argv, "--set", "session.stats_interval=0", "--stats", str(stats)], tmp_path, warm_up=True)
    _out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    skipped_s = json.loads(stats.read_text())["skipped_stale"] / 25
    audio = load_audio(record)
    rms = np.sqrt(np.mean(audio[: len(audio) // 400 * 400].reshape(-1, 400) ** 2, axis=1))  # 25 ms windows
    voiced_s = np.count_nonzero(rms > 0.1) * 0.025  # the tone's rms is 0.21, silence ~0
    # 0.06 s: a 25 ms window at each end of the tone may fall under the threshold
    assert voiced_s >= 3.0 - skipped_s - 0.06, f"{voiced_s:.2f} s of the 3 s voice recorded, {skipped_s:.2f} s skipped"


def test_a_file_that_fails_mid_session_ends_run_with_exit_1_naming_it(media, tmp_path):
    """Live, a file source is not retried: its file vanishing (read again by --loop) ends the
    session with exit 1 and the file named."""
    voice = tmp_path / "voice.wav"
    shutil.copy(media["voice"], voice)
    argv = ["run", "--preset", "demo", "--avatar-audio", str(voice), "--loop", "--record", str(tmp_path / "o.mp4")]
    proc = subprocess_run([*argv, "--set", "session.stats_interval=0"], tmp_path)
    try:
        for line in proc.stderr:  # wait until the session is live, then take the file away
            if line.startswith("live:"):
                break
        voice.unlink()
        _out, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "session failed: sources.avatar_audio:" in err and str(voice) in err
    assert "retrying" not in err


# -- outputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command, flag",
    [("run", "--record"), ("run", "--stats"), ("render", "--out")],
)
def test_an_existing_output_is_refused_unless_overwrite(host, media, tmp_path, command, flag):
    existing = tmp_path / "previous.mp4"
    existing.write_bytes(b"the user's previous recording")
    argv = [command, "--avatar-audio", str(media["voice"]), flag, str(existing)]
    if command == "run":
        argv += ["--preset", "demo"]
    status, out, err = cli(host, *argv)
    assert status == 2
    assert one_line(err) == f"avatarforcing: error: {flag}: {existing} already exists; give --overwrite to replace it"
    assert existing.read_bytes() == b"the user's previous recording"
    assert "frames 0" not in out + err


def test_overwrite_replaces_a_previous_recording(host, media, tmp_path):
    record, stats = tmp_path / "again.mp4", tmp_path / "stats.json"
    record.write_bytes(b"old")
    stats.write_text("old")
    argv = ["run", "--preset", "demo", "--avatar-audio", str(media["voice"]), "--record", str(record)]
    argv += [
        "--stats",
        str(stats),
        "--overwrite",
        "--set",
        "session.stats_interval=0",
        "--set",
        "session.warm_up=false",
    ]
    status, _out, err = cli(host, *argv)
    assert status == 0, err
    assert video_info(record).frame_count > 0 and '"error": null' in stats.read_text()


def _immutable(folder: Path) -> bool:
    """Make `folder` unwritable even for root (`chattr +i`); False where that is not possible."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


@pytest.mark.parametrize("command, flag", [("run", "--record"), ("run", "--stats"), ("render", "--out")])
def test_an_output_folder_that_cannot_hold_the_file_is_refused(host, media, tmp_path, command, flag):
    base = [command, "--avatar-audio", str(media["voice"])] + (["--preset", "demo"] if command == "run" else [])
    status, _, err = cli(host, *base, flag, str(tmp_path / "missing" / "x.mp4"))
    assert status == 2
    assert one_line(err) == f"avatarforcing: error: {flag}: folder does not exist: {tmp_path / 'missing'}"
    status, _, err = cli(host, *base, flag, str(media["notes"] / "x.mp4"))  # a path under a file
    assert status == 2 and one_line(err) == f"avatarforcing: error: {flag}: {media['notes']} is not a folder"
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _immutable(locked):
        pytest.skip("chattr +i is not available here")
    try:
        status, _, err = cli(host, *base, flag, str(locked / "x.mp4"))
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert status == 2
    assert one_line(err).startswith(f"avatarforcing: error: {flag}: folder is not writable: {locked} (")
    assert list(locked.iterdir()) == []


def test_a_recording_must_be_an_mp4_but_stats_take_any_name(host, media, tmp_path):
    base = ["run", "--preset", "demo", "--avatar-audio", str(media["voice"])]
    status, _, err = cli(host, *base, "--record", str(tmp_path / "x.avi"))
    assert status == 2 and one_line(err) == f"avatarforcing: error: --record: {tmp_path / 'x.avi'} must end in .mp4"
    status, _, err = cli(host, *base, "--record", str(tmp_path / "x.avi"), "--stats", str(tmp_path / "s.log"))
    assert status == 2 and "--record:" in err  # the stats name is fine, the recording is not


def test_a_recorder_whose_disk_is_gone_ends_the_session_naming_its_file(media, tmp_path):
    """The recorder is the only output and its writes fail (ENOSPC from /dev/full): the session
    ends with exit 1, the message names the recording, and the process does not crash."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    record = tmp_path / "full.mp4"
    record.symlink_to("/dev/full")
    argv = ["run", "--preset", "demo", "--avatar-audio", str(media["voice"]), "--loop", "--record", str(record)]
    proc = subprocess_run([*argv, "--overwrite", "--set", "session.stats_interval=0"], tmp_path)
    _out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 1, err[-3000:]
    assert f"session failed: sinks.recorder: RuntimeError: recording to {record} stopped" in err
    assert "Traceback" not in err


def test_render_with_an_empty_avatar_audio_says_so(host, media, tmp_path):
    """0 s of avatar audio: nothing to render alone; beside a user's voice the listening avatar is
    rendered and the summary says its sound track is silent."""
    out = tmp_path / "x.mp4"
    status, _out, err = cli(host, "render", "--avatar-audio", str(media["empty"]), "--out", str(out))
    assert status == 2 and "nothing to render: the inputs hold 0.00 s of audio" in one_line(err)
    assert not out.exists()

    argv = ["render", "--avatar-audio", str(media["empty"]), "--user-audio", str(media["voice"]), "--out", str(out)]
    status, said, err = cli(host, *argv)
    assert status == 0, err
    assert "with a silent sound track (the avatar audio is empty)" in said and "with the avatar audio" not in said
    assert abs(video_info(out).frame_count - 1.5 * 25) <= 1


# -- portrait and setup messages ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "render"])
def test_a_portrait_that_is_not_an_image_is_one_line(host, media, tmp_path, command):
    argv = [command, "--avatar-audio", str(media["voice"]), "--portrait", str(media["notes_jpg"])]
    argv += ["--preset", "demo", "--record"] if command == "run" else ["--out"]
    status, _out, err = cli(host, *argv, str(tmp_path / "x.mp4"))
    assert status == 2
    assert one_line(err) == (
        f"avatarforcing: error: --portrait: cannot decode image file {media['notes_jpg']} "
        "(not an image OpenCV can read)"
    )
    assert not (tmp_path / "x.mp4").exists()


def test_a_run_that_fails_during_setup_prints_no_stats_line(host, media, tmp_path):
    status, out, err = cli(host, "run", "--preset", "demo", "--avatar-audio", str(media["voice"]), "--sink", "preview")
    assert status == 1 and "sink 'preview' cannot start" in err
    assert "frames 0" not in out + err


# -- secrets --------------------------------------------------------------------------------------
def test_config_masks_the_obs_password(host):
    for argv in (["config"], ["config", "--json"]):
        status, out, err = cli(host, *argv, "--set", "sinks.obs.password=hunter2")
        assert status == 0, err
        assert "hunter2" not in out and "***" in out
    status, out, _ = cli(host, "config", "--set", "sinks.obs.host=10.0.0.2")
    assert "***" not in out  # no password set: nothing to mask


def test_a_bad_secret_value_is_not_echoed_in_the_error(host, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[sinks.obs]\npassword = 271828\n")
    status, _, err = cli(host, "--config-file", str(config), "run", "--sink", "obs", "--duration", "1")
    assert status == 2 and "271828" not in err
    assert one_line(err) == "avatarforcing: error: sinks.obs.password: expected a string, got ***"
