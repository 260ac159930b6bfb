"""The live session: pacing, back-pressure, shutdown, failures and recovery, stats, `run` CLI.

The engine used here is a real (tiny) motion engine defined below: its latent per frame is the
loudness of that frame's avatar audio, optionally with extra compute time per block; the
renderer paints that loudness; sinks record when each frame reached them.
"""

from __future__ import annotations

import io
import json
import statistics
import threading
import time
from typing import ClassVar

import numpy as np
import pytest
import soundfile

from avatarforcing.plugin import (
    EngineSpec,
    Frame,
    MotionBlock,
    OptionSpec,
    RendererSpec,
    SinkSpec,
    SourceSpec,
    hookimpl,
)
from avatarforcing.plugin.api.types import AudioChunk
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.config import load_config
from avatarforcing.plugin.app.session import Session, SpeakListenPolicy, StageQueue, VoiceActivityDetector
from avatarforcing.plugin.app.session.queues import END, Aborted
from avatarforcing.plugin.builtins.sources import files as files_plugin
from avatarforcing.plugin.host import build_plugin_host


class LoudnessEngine:
    """Latent of a frame = RMS of its 640 avatar samples; blocks of `block` frames; each block
    costs `block_s` seconds of (sleeping) compute; `fail_at` raises in generate at that block."""

    fps, sample_rate = 25, 16000

    def __init__(self, block: int, block_s: float, fail_at: int, stall_at: int = -1, stall_s: float = 0.0):
        self.first_block_frames = self.block_frames = block
        self.block_s, self.fail_at = block_s, fail_at
        self.stall_at, self.stall_s = stall_at, stall_s
        self.pending: list[tuple[int, float]] = []
        self.blocks = 0
        self.guidance: list[tuple[float, float]] = []

    def open(self, session):
        self.session = session

    def warm_up(self):
        return [MotionBlock(-1, 0, 1, np.zeros((1, 1), np.float32))]

    def extract(self, tick):
        rms = np.sqrt((tick.avatar_audio.reshape(tick.num_frames, 640) ** 2).mean(axis=1))
        return [(tick.first_frame + i, float(r)) for i, r in enumerate(rms)]

    def set_guidance(self, avatar_scale, user_scale):
        self.guidance.append((avatar_scale, user_scale))

    def _block(self, items):
        if self.blocks == self.fail_at:
            raise RuntimeError("the engine broke")
        time.sleep(self.block_s + (self.stall_s if self.blocks == self.stall_at else 0.0))
        latents = np.asarray([v for _, v in items], np.float32)[:, None]
        block = MotionBlock(self.blocks, items[0][0], len(items), latents)
        self.blocks += 1
        return block

    def generate(self, features):
        self.pending.extend(features)
        out = []
        while len(self.pending) >= self.block_frames:
            out.append(self._block(self.pending[: self.block_frames]))
            del self.pending[: self.block_frames]
        return out

    def finish(self):
        rest, self.pending = self.pending, []
        return [self._block(rest)] if rest else []

    def close(self):
        pass


class LoudnessRenderer:
    def __init__(self, size: int):
        self.size = size

    def open(self, session):
        pass

    def render(self, block):
        return [
            Frame(
                np.full((self.size, self.size, 3), min(255, int(v * 255)), np.uint8),
                block.first_frame + i,
                (block.first_frame + i) / 25,
            )
            for i, v in enumerate(block.latents[:, 0])
        ]

    def close(self):
        pass


class TimedSink:
    """Records (monotonic time, frame index, held) of every frame, and the first pixel of each
    frame and the RMS of its audio by frame index (`pairs`); `fail_at` raises once."""

    log: ClassVar[dict[str, list]] = {}
    opened: ClassVar[dict[str, int]] = {}
    pairs: ClassVar[dict[int, dict[str, float]]] = {}

    def __init__(self, label: str, fail_at: int):
        self.label, self.fail_at = label, fail_at
        TimedSink.log.setdefault(label, [])
        TimedSink.opened.setdefault(label, 0)

    def open(self, session):
        TimedSink.opened[self.label] += 1

    def write_frame(self, frame):
        entries = TimedSink.log[self.label]
        if len(entries) == self.fail_at and TimedSink.opened[self.label] == 1:
            raise OSError("device vanished")
        entries.append((time.monotonic(), frame.index, frame.metadata["held"]))
        if not frame.metadata["held"]:
            TimedSink.pairs.setdefault(frame.index, {})["pixel"] = int(frame.image[0, 0, 0])

    def write_audio(self, chunk):
        assert chunk.samples.shape == (640,)
        TimedSink.pairs.setdefault(chunk.index, {})["rms"] = float(np.sqrt(np.mean(chunk.samples**2)))

    def close(self):
        pass


class FlakyToneSource:
    """A realtime 440 Hz tone; the first instance raises after `fail_after` chunks."""

    instances = 0

    def __init__(self, fail_after: int):
        FlakyToneSource.instances += 1
        self.fail = FlakyToneSource.instances == 1
        self.fail_after = fail_after
        self.inner = files_plugin.SilenceSource(0.0, 16000, 40, True)

    def __iter__(self):
        for chunk in self.inner:
            if self.fail and chunk.index == self.fail_after:
                raise OSError("microphone unplugged")
            t = np.arange(chunk.index * 640, chunk.index * 640 + 640) / 16000
            yield AudioChunk(
                (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, chunk.timestamp, chunk.index
            )

    def close(self):
        self.inner.close()


class LevelSource:
    """A realtime source whose 40 ms chunk `i` is the constant level (i * 37 % 100 + 10) / 255:
    every tick's loudness differs from its neighbours'."""

    def __init__(self):
        self.inner = files_plugin.SilenceSource(0.0, 16000, 40, True)

    def __iter__(self):
        for chunk in self.inner:
            level = (chunk.index * 37 % 100 + 10) / 255.0
            yield AudioChunk(np.full(640, level, np.float32), 16000, chunk.timestamp, chunk.index)

    def close(self):
        self.inner.close()


class TestPlugin:
    @hookimpl
    def register_engines(self):
        return [
            EngineSpec(
                "loudness",
                "latents = loudness",
                LoudnessEngine,
                (
                    OptionSpec("block", int, 10, "frames per block", minimum=1),
                    OptionSpec("block_s", float, 0.0, "compute seconds per block", minimum=0.0),
                    OptionSpec("fail_at", int, -1, "block index that raises"),
                    OptionSpec("stall_at", int, -1, "block index that stalls once"),
                    OptionSpec("stall_s", float, 0.0, "how long it stalls", minimum=0.0),
                ),
                default_renderer="loudness",
            )
        ]

    @hookimpl
    def register_renderers(self):
        return [RendererSpec("loudness", "paints loudness", LoudnessRenderer, (OptionSpec("size", int, 8, "side"),))]

    @hookimpl
    def register_sinks(self):
        return [
            SinkSpec(
                f"timed-{label}",
                "records times",
                lambda fail_at, label=label: TimedSink(label, fail_at),
                (OptionSpec("fail_at", int, -1, "frame that raises once"),),
                accepts_audio=True,
            )
            for label in ("a", "b")
        ]

    @hookimpl
    def register_avatar_audio_sources(self):
        return [
            SourceSpec(
                "flaky-tone",
                "tone that fails once",
                FlakyToneSource,
                (OptionSpec("fail_after", int, 10, "chunks before failing"),),
            ),
            SourceSpec("levels", "a different level every tick", LevelSource),
        ]


@pytest.fixture
def host():
    TimedSink.log.clear()
    TimedSink.opened.clear()
    TimedSink.pairs.clear()
    FlakyToneSource.instances = 0
    return build_plugin_host({}, load_entry_points=False, plugins=[files_plugin, TestPlugin()])


def config(*overrides):
    base = [
        "model.engine=loudness",
        "sources.avatar_audio.use=silence",
        "sources.user_audio.use=silence",
        "sources.user_video.use=",
        "sinks.use=timed-a",
        "session.stats_interval=0",
    ]
    return load_config(overrides=[*base, *overrides], environ={})


def intervals(label):
    times = [t for t, _, _ in TimedSink.log[label]]
    return np.diff(times) * 1000.0


def assert_paced(label):
    """One frame per 40 ms tick: median 40 ± 4 ms, no two frames at once — a single wake-up of
    the pacer or sink thread may come up to three ticks late on this 2-core VM (the OS schedules
    six threads there and the VM itself pauses now and then), once."""
    gaps = intervals(label)
    assert len(gaps) > 20
    assert abs(statistics.median(gaps) - 40.0) < 4.0, statistics.median(gaps)
    assert gaps.min() > 0.0 and gaps.max() < 160.0, (gaps.min(), gaps.max())
    assert int((gaps >= 80.0).sum()) <= 1, sorted(gaps)[-3:]


def live_quality_problems(stats: dict, max_latency_ms: float = 400.0) -> list[str]:
    """What keeps a live session from being watchable: held or dropped frames after start-up
    beyond 2 % of the frames, or an end-to-end latency p50 above `max_latency_ms`."""
    problems = []
    frames = max(1, stats["frames"])
    for counter in ("held", "dropped"):
        if stats[counter] > 0.02 * frames:
            problems.append(f"{stats[counter]} {counter} of {frames} frames")
    latency = stats["latency"]["end_to_end"]["p50_ms"]
    if latency is None or latency > max_latency_ms:
        problems.append(f"end-to-end p50 {latency} ms > {max_latency_ms} ms")
    return problems


# --------------------------------------------------------------------------------------------
def test_pacing_holds_frames_while_a_slow_engine_is_late(host, tmp_path):
    stats_file = tmp_path / "stats.json"
    session = Session(host, config("engines.loudness.block_s=0.7"), duration=4.0, stats_path=stats_file)
    stats = session.run()
    assert stats["error"] is None
    assert_paced("a")
    assert stats["held"] > 10 and stats["rendered"] > 10
    assert live_quality_problems(stats)  # the bounds of the two-minute test reject a too-slow engine
    steps = np.diff([i for _, i, _ in TimedSink.log["a"]])
    # one frame per tick; a pacer that fell behind skips the missed tick (once at most)
    assert set(steps.tolist()) <= {1, 2, 3} and int((steps > 1).sum()) <= 1, steps
    written = json.loads(stats_file.read_text())
    for stage in ("capture_to_features", "extract", "generate", "render", "queue_wait", "end_to_end"):
        assert written["latency"][stage]["count"] > 0, stage
        assert written["latency"][stage]["p95_ms"] >= written["latency"][stage]["p50_ms"]
    assert written["latency"]["generate"]["p50_ms"] >= 650
    assert written["engine"] == "loudness" and written["renderer"] == "loudness"
    assert not [t for t in threading.enumerate() if t.name in ("features", "generator", "renderer", "pacer")]


def test_a_stalled_engine_drops_the_missed_ticks_and_keeps_sound_with_picture(host):
    """The generator stalls once for 1.2 s (a machine that paused): the session drops the input
    ticks it missed before any engine sees them, holds the picture over the gap, and comes back
    to the latency the engine needs — and every frame still carries the audio it was made from
    (the picture's level equals its sound's), before and after the gap."""
    overrides = ("engines.loudness.block=4", "engines.loudness.stall_at=15", "engines.loudness.stall_s=1.2")
    session = Session(host, config(*overrides, "sources.avatar_audio.use=levels"), duration=6.0)
    stats = session.run()
    assert stats["error"] is None
    assert stats["dropped_ticks"] >= 15  # 1.2 s = 30 ticks, less what the queues absorbed
    shown = {i: p for i, p in TimedSink.pairs.items() if "pixel" in p}
    assert len(shown) > 75
    mismatched = [i for i, p in shown.items() if abs(p["pixel"] - int(p["rms"] * 255)) > 1]
    assert not mismatched, [(i, shown[i]) for i in mismatched[:5]]
    # back at the engine's pace: the delay is what a 4-frame block needs, not the stall's 30 ticks
    assert stats["delay_ticks"] <= 10, stats["delay_ticks"]


def test_back_pressure_keeps_the_frame_queue_within_one_block(host):
    session = Session(host, config("engines.loudness.block=10", "session.queue_frames=10"), duration=2.0)
    stats = session.run()
    assert stats["error"] is None
    assert 1 <= stats["max_frame_queue"] <= 10
    assert session.frames_queue.high_water <= 10
    assert_paced("a")


def test_stage_queue_blocks_when_full_and_aborts():
    queue = StageQueue(2)
    queue.put(1), queue.put(2)
    done = threading.Event()
    threading.Thread(target=lambda: (queue.put(3), done.set()), daemon=True).start()
    assert not done.wait(0.2) and len(queue) == 2
    assert queue.get() == 1 and done.wait(2) and len(queue) == 2
    queue.put(END)
    queue.abort()
    with pytest.raises(Aborted):
        queue.get()


def test_end_of_file_inputs_ends_the_session(host, tmp_path):
    wav = tmp_path / "voice.wav"
    t = np.arange(int(1.6 * 16000)) / 16000
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    cfg = config(
        "sources.avatar_audio.use=audio-file",
        f"sources.avatar_audio.path={wav}",
        "sources.avatar_audio.realtime=true",
        "sources.user_audio.use=",
        "session.warm_up=false",
    )
    started = time.monotonic()
    stats = Session(host, cfg).run()
    assert stats["error"] is None and time.monotonic() - started < 15
    assert 20 <= stats["rendered"] <= 45  # 1.6 s of audio (its first moments go before live)
    assert stats["blocks"] >= 3


def test_a_failing_stage_is_reported_with_its_name_and_exit_status(host, tmp_path):
    stats = Session(host, config("engines.loudness.fail_at=1", "engines.loudness.block=5"), duration=5.0).run()
    assert stats["error"] == "generator: RuntimeError: the engine broke"
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(
        [
            "run",
            "--engine",
            "loudness",
            "--sink",
            "timed-b",
            "--duration",
            "5",
            "--set",
            "engines.loudness.fail_at=1",
            "--set",
            "engines.loudness.block=5",
            "--set",
            "sources.avatar_audio.use=silence",
            "--set",
            "sources.user_audio.use=",
            "--set",
            "sources.user_video.use=",
        ],
        host,
        out,
        err,
        environ={},
    )
    assert status == 1 and "generator: RuntimeError: the engine broke" in err.getvalue()


def test_a_failing_source_counts_as_silence_and_is_reopened(host):
    cfg = config(
        "sources.avatar_audio.use=flaky-tone", "sources.avatar_audio.fail_after=20", "session.retry_initial_s=0.3"
    )
    session = Session(host, cfg, duration=3.0)
    stats = session.run()
    assert stats["error"] is None
    assert stats["source_faults"] == {"avatar_audio:flaky-tone": 1}
    assert FlakyToneSource.instances == 2 and session._captures[0].reopened == 1
    assert_paced("a")
    assert stats["rendered"] > 50


def test_a_failing_sink_is_reopened_while_the_others_continue(host):
    cfg = config("sinks.use=timed-a,timed-b", "sinks.timed-a.fail_at=15", "session.retry_initial_s=0.2")
    stats = Session(host, cfg, duration=3.0).run()
    assert stats["error"] is None and stats["sink_faults"] == {"timed-a": 1}
    assert TimedSink.opened["a"] == 2
    assert_paced("b")
    assert len(TimedSink.log["b"]) - len(TimedSink.log["a"]) >= 3  # a missed frames while down
    assert len(TimedSink.log["a"]) > 40


def test_voice_activity_switches_with_attack_and_release():
    vad = VoiceActivityDetector(SpeakListenPolicy(attack_ms=80, release_ms=200))
    loud, quiet = np.full(640, 0.2, np.float32), np.zeros(640, np.float32)
    assert vad.update(loud) == 1.0 and not vad.speaking
    vad.update(loud)
    assert vad.speaking
    for _ in range(4):
        vad.update(quiet)
    assert vad.speaking
    vad.update(quiet)
    assert not vad.speaking
    assert SpeakListenPolicy().scales(True) == (2.0, 1.0) and SpeakListenPolicy().scales(False) == (1.0, 1.5)
    assert SpeakListenPolicy(mode="fixed").scales(False) == (2.0, 1.0)


def test_guidance_follows_the_avatar_voice(host):
    session = Session(
        host, config("sources.avatar_audio.use=flaky-tone", "sources.avatar_audio.fail_after=1000"), duration=2.0
    )
    assert session.run()["error"] is None
    assert (2.0, 1.0) in session.engine.guidance


def test_cli_run_end_to_end_with_stats(host, tmp_path, samples_dir):
    stats_file = tmp_path / "stats.json"
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(
        [
            "run",
            "--preset",
            "demo",
            "--engine",
            "loudness",
            "--sink",
            "timed-a",
            "--avatar-audio",
            str(samples_dir / "avatar.wav"),
            "--duration",
            "6",
            "--stats",
            str(stats_file),
        ],
        host,
        out,
        err,
        environ={},
    )
    assert status == 0, err.getvalue()
    stats = json.loads(stats_file.read_text())
    assert stats["error"] is None and 145 <= stats["frames"] <= 180  # 150 ticks + the last block drained
    assert stats["latency"]["end_to_end"]["count"] > 100
    assert "session ended:" in out.getvalue()
    assert_paced("a")
    status = run_cli(
        ["run", "--engine", "nope", "--duration", "1"], host, io.StringIO(), err := io.StringIO(), environ={}
    )
    assert status != 0 and "no engine named 'nope'" in err.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["default"])
def test_two_minute_session_keeps_25_fps(engine, samples_dir, tmp_path):
    host = build_plugin_host({})
    if engine not in {e.spec.name for e in host.provided("engines")}:
        pytest.skip(f"engine {engine!r} is not registered yet (plugin/builtins/engines/embedded.py)")
    host.register(TestPlugin())
    TimedSink.log.clear(), TimedSink.opened.clear()
    cfg = load_config(
        overrides=[
            f"model.engine={engine}",
            f"session.portrait={samples_dir / 'rumi.jpg'}",
            "render.use=puppet",  # the pacing under test; the portrait renderer has its own tests and benchmarks
            "sinks.use=timed-a",
            "sources.avatar_audio.use=audio-file",
            f"sources.avatar_audio.path={samples_dir / 'avatar.wav'}",
            "sources.avatar_audio.realtime=true",
            "sources.avatar_audio.loop=true",
            "sources.user_video.use=video-file",
            f"sources.user_video.path={samples_dir / 'user.mp4'}",
            "sources.user_video.realtime=true",
            "sources.user_video.loop=true",
            "sources.user_audio.use=silence",
        ],
        environ={},
    )
    stats = Session(host, cfg, duration=120.0, stats_path=tmp_path / "stats.json").run()
    assert stats["error"] is None
    gaps = intervals("a")
    # one frame per tick: a rare wake-up up to one tick late (at most 1 in 1000), never two
    assert abs(statistics.median(gaps) - 40.0) < 2.0 and gaps.min() > 0.0 and gaps.max() < 160.0
    assert int((gaps >= 80.0).sum()) <= len(gaps) // 1000, sorted(gaps)[-5:]
    assert stats["latency"]["generate"]["count"] > 0
    # steady output: held and dropped frames and the latency bounded (a too-slow engine fails here)
    assert not live_quality_problems(stats), (live_quality_problems(stats), stats)
    assert stats["frames"] >= 0.98 * 25 * 120


def test_official_engine_uses_the_null_condition_without_a_face(samples_dir):
    import torch

    from avatarforcing.integrations.face_crop import load_image_rgb
    from avatarforcing.plugin.api.types import InputTick, SessionInfo
    from avatarforcing.plugin.builtins.engines import official as official_engine

    torch.set_num_threads(1)
    host = build_plugin_host({}, load_entry_points=False, plugins=[official_engine])
    cfg = load_config(
        overrides=[
            "model.engine=official",
            "engines.official.model=formula:fixture_small",
            "model.nfe=3",
            "model.device=cpu",
            "model.backend=torch_cpu",  # the backends have their own tests (test_live_backend.py)
        ],
        environ={},
    )
    spec, engine = host.create_engine(cfg)
    assert spec.default_renderer == "motion-autoencoder"
    portrait = load_image_rgb(samples_dir / "rumi.jpg")
    engine.open(SessionInfo("s", cfg, portrait=portrait))
    try:
        assert engine.backend == "torch_cpu"
        silence = np.zeros(640, np.float32)
        blank = np.zeros((120, 160, 3), np.uint8)
        features = engine.extract(InputTick(0, 1, silence, silence, [blank]))
        assert features.faces == 0 and torch.count_nonzero(features.motion) == 0
        face = engine.extract(InputTick(1, 1, silence, silence, [portrait]))
        assert face.faces == 1 and torch.count_nonzero(face.motion) > 0
        assert engine.generate(features) == [] and engine.generate(face) == []
        blocks = engine.finish()
        assert [(b.first_frame, b.num_frames) for b in blocks] == [(0, 2)]
        assert tuple(blocks[0].latents.shape) == (2, 512)
    finally:
        engine.close()


class _NoDeviceSink:
    """A sink whose device does not exist (like a virtual camera without its driver)."""

    def open(self, session):
        raise RuntimeError("no such device: /dev/video99")

    def write_frame(self, frame):
        raise AssertionError("never opened")

    def close(self):
        pass


class _NoDevicePlugin:
    @hookimpl
    def register_sinks(self):
        return [SinkSpec("no-device", "a sink whose device is missing", _NoDeviceSink)]


def test_a_sink_that_cannot_start_gives_one_clear_error():
    host = build_plugin_host({}, load_entry_points=False, plugins=[files_plugin, TestPlugin(), _NoDevicePlugin()])
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(
        [
            "run",
            "--engine",
            "loudness",
            "--sink",
            "no-device",
            "--duration",
            "2",
            "--set",
            "sources.avatar_audio.use=silence",
            "--set",
            "sources.user_audio.use=",
            "--set",
            "sources.user_video.use=",
        ],
        host,
        out,
        err,
        environ={},
    )
    assert status == 1
    assert "sink 'no-device' cannot start: no such device: /dev/video99" in err.getvalue()
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_run_promptly_with_the_shell_status_and_a_complete_recording(
    samples_dir, tmp_path, signal_name, status
):
    """Ctrl-C (SIGINT) or SIGTERM while live: every stage stops (no thread left behind), the
    recording is finalised, and the exit status is 128 + the signal's number."""
    import os
    import signal
    import subprocess
    import sys

    from avatarforcing.integrations.media import video_info

    record = tmp_path / "live.mp4"
    argv = [sys.executable, "-m", "avatarforcing.plugin", "run", "--preset", "demo"]
    argv += ["--avatar-audio", str(samples_dir / "avatar.wav"), "--user-video", str(samples_dir / "user.mp4")]
    argv += ["--record", str(record), "--set", "session.stats_interval=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        for line in proc.stderr:  # wait until the session is live
            if line.startswith("live:"):
                break
        time.sleep(1.0)  # some frames recorded
        proc.send_signal(getattr(signal, signal_name))
        out, err = proc.communicate(timeout=20)  # a guard against a hang, not a speed bound
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err[-3000:]
    assert "threads still running" not in err and "session ended:" in out
    info = video_info(record)
    assert info.frame_count >= 10 and info.has_audio
