"""Live sinks with real components: pyvirtualcam (custom backend), the MJPEG server over HTTP,
the mp4 recorder (PyAV), the preview window (Xvfb) and the delayed microphone (PulseAudio)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import av
import cv2
import numpy as np
import pytest

from avatarforcing.integrations import virtual_camera
from avatarforcing.integrations.mjpeg_server import BOUNDARY, MjpegServer
from avatarforcing.plugin import AudioChunk, ConfigError, Frame, SessionInfo, resolve_options
from avatarforcing.plugin.app.config import AppConfig
from avatarforcing.plugin.builtins.sinks import live as live_sinks

sys.path.insert(0, str(Path(__file__).parent))
from service_pulse import PulseServer
from service_xvfb import XvfbDisplay

FPS = 25
SIZE = (96, 128)  # (height, width)
RED = (230, 20, 20)


def make_session(frame_size=SIZE) -> SessionInfo:
    return SessionInfo("test-live-sinks", AppConfig(), fps=FPS, frame_size=frame_size)


def solid(color, size=SIZE) -> np.ndarray:
    image = np.zeros((*size, 3), np.uint8)
    image[:] = color
    return image


def pace(sink, images, fps=FPS) -> list[float]:
    """Call write_frame like the session's pacer (one frame per 1/fps); returns each call's duration."""
    durations = []
    start = time.monotonic()
    for index, image in enumerate(images):
        delay = start + index / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.monotonic()
        sink.write_frame(Frame(image, index, index / fps))
        durations.append(time.monotonic() - t0)
    return durations


def sink_from_spec(spec, **options):
    return spec.factory(**resolve_options(f"sinks.{spec.name}", spec.options, options))


# --------------------------------------------------------------------------------------------
# virtual camera: a custom pyvirtualcam backend, always passed explicitly
# --------------------------------------------------------------------------------------------
class RecordingBackend:
    """A pyvirtualcam backend that keeps what it is sent (with arrival times)."""

    instances: ClassVar[list[RecordingBackend]] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.name = device or "recording-cam"
        self.frames: list[tuple[float, bytes]] = []
        self.closed = False
        RecordingBackend.instances.append(self)

    def send(self, frame):
        self.frames.append((time.monotonic(), bytes(frame)))

    def device(self):
        return self.name

    def native_fourcc(self):
        return self.fourcc

    def close(self):
        self.closed = True


@pytest.fixture
def recording_backend():
    pyvirtualcam = pytest.importorskip("pyvirtualcam")
    RecordingBackend.instances.clear()
    pyvirtualcam.register_backend("af-test-recorder", RecordingBackend)
    yield RecordingBackend
    pyvirtualcam.camera.BACKENDS.pop("af-test-recorder", None)


def test_virtual_camera_frames_arrive_at_rate_and_in_format(recording_backend):
    sink = sink_from_spec(live_sinks.VIRTUAL_CAMERA, backend="af-test-recorder", fmt="bgr", width=64, height=48)
    sink.open(make_session())
    try:
        durations = pace(sink, [solid(RED)] * 50)
    finally:
        sink.close()
    camera = recording_backend.instances[-1]
    assert camera.closed and (camera.width, camera.height, camera.fps) == (64, 48, FPS)
    from pyvirtualcam.util import decode_fourcc

    assert decode_fourcc(camera.fourcc) == "24BG"  # BGR
    times = np.array([t for t, _ in camera.frames])
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 45 <= len(times) <= 56 and abs(rate - FPS) < 3, (len(times), rate)
    image = np.frombuffer(camera.frames[-1][1], np.uint8).reshape(48, 64, 3)
    assert tuple(image[10, 10]) == RED[::-1]
    assert max(durations) < 0.02  # the pacer is never held up


def test_virtual_camera_repeats_the_last_frame_when_none_come(recording_backend):
    sink = sink_from_spec(live_sinks.VIRTUAL_CAMERA, backend="af-test-recorder", fmt="rgba")
    sink.open(make_session())
    try:
        sink.write_frame(Frame(solid(RED), 0, 0.0))
        time.sleep(0.6)
    finally:
        sink.close()
    frames = recording_backend.instances[-1].frames
    assert 10 <= len(frames) <= 18
    image = np.frombuffer(frames[-1][1], np.uint8).reshape(*SIZE, 4)
    assert tuple(image[0, 0]) == (*RED, 255)


def test_virtual_camera_without_backend_never_picks_a_registered_test_backend(recording_backend):
    settings = virtual_camera.CameraSettings(64, 48, FPS, "rgb", backend="", device="")
    if sys.platform.startswith("linux") and not Path("/sys/devices/virtual/video4linux").is_dir():
        with pytest.raises(virtual_camera.VirtualCameraError) as error:
            virtual_camera.open_camera(settings)
        assert "v4l2loopback" in str(error.value) and "modprobe" in str(error.value)
    else:  # a real device exists here: it must be the OS backend, not ours
        camera = virtual_camera.open_camera(settings)
        assert camera.backend == virtual_camera.default_backend()
        camera.close()
    assert recording_backend.instances == []


def test_virtual_camera_bad_settings_are_one_clear_error(recording_backend):
    with pytest.raises(
        virtual_camera.VirtualCameraError, match="unknown virtual-camera backend 'nope'.*af-test-recorder"
    ):
        virtual_camera.open_camera(virtual_camera.CameraSettings(64, 48, backend="nope"))
    with pytest.raises(ConfigError, match="sinks.virtual-camera.fmt"):
        sink_from_spec(live_sinks.VIRTUAL_CAMERA, fmt="yuv")
    with pytest.raises(ConfigError, match="sinks.virtual-camera.backend"):
        sink_from_spec(live_sinks.VIRTUAL_CAMERA, backend="nope")
    assert virtual_camera.default_backend("win32") == "obs" and virtual_camera.default_backend("darwin") == "obs"


# --------------------------------------------------------------------------------------------
# MJPEG
# --------------------------------------------------------------------------------------------
def read_parts(url: str, count: int, timeout: float = 10.0) -> list[tuple[float, np.ndarray]]:
    """The first `count` JPEG parts of a multipart stream, decoded (RGB), with arrival times."""
    parts = []
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        while len(parts) < count:
            line = response.readline()
            if not line.lower().startswith(b"content-length:"):
                continue
            length = int(line.split(b":")[1])
            response.readline()  # blank line after the part headers
            data = np.frombuffer(response.read(length), np.uint8)
            parts.append((time.monotonic(), cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)))
    return parts


def test_mjpeg_clients_get_frames_of_the_right_size_content_and_rate():
    sink = sink_from_spec(live_sinks.MJPEG, port=0)
    session = make_session()
    sink.open(session)
    url = session.plugin_state["mjpeg"]["url"]
    stop = threading.Event()

    def produce():
        index = 0
        while not stop.is_set():
            sink.write_frame(Frame(solid(RED), index, index / FPS))
            index += 1
            time.sleep(1 / FPS)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        results = {}
        readers = [threading.Thread(target=lambda k=k: results.__setitem__(k, read_parts(url, 30))) for k in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(20)
        with urllib.request.urlopen(session.plugin_state["mjpeg"]["snapshot_url"], timeout=5) as response:
            snapshot = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    finally:
        stop.set()
        producer.join()
        sink.close()
    assert sorted(results) == [0, 1]
    for parts in results.values():
        images = [image for _, image in parts]
        assert all(image.shape == (*SIZE, 3) for image in images)
        assert np.abs(images[-1].reshape(-1, 3).mean(0) - RED).max() < 12
        times = [t for t, _ in parts]
        rate = (len(times) - 1) / (times[-1] - times[0])
        assert 18 < rate < 32, rate  # paced at the session fps (FFmpeg's mpjpeg demuxer assumes 25)
    assert snapshot.shape == (*SIZE, 3)


def test_mjpeg_snapshot_before_any_frame_and_busy_port():
    with MjpegServer(port=0) as server:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.snapshot_url, timeout=5)
        assert error.value.code == 503
        with pytest.raises(Exception, match="choose another port"):
            MjpegServer(port=server.port).start()


# --------------------------------------------------------------------------------------------
# recorder
# --------------------------------------------------------------------------------------------
def test_recorder_writes_mp4_with_video_and_audio_of_the_right_duration(tmp_path):
    path = tmp_path / "out" / "avatar.mp4"
    sink = sink_from_spec(live_sinks.RECORDER, path=str(path), preset="ultrafast")
    assert live_sinks.RECORDER.accepts_audio
    session = make_session()
    sink.open(session)
    rate = 48000  # the sink resamples to the session's 16 kHz
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    for index in range(50):
        sink.write_frame(Frame(solid((index * 5, 100, 200)), index, index / FPS))
        if index % 5 == 0:  # 0.2 s audio chunks, stereo
            chunk = tone[index * rate // FPS : (index + 5) * rate // FPS]
            sink.write_audio(AudioChunk(np.stack([chunk, chunk], 1), rate, index / FPS, index // 5))
    sink.close()
    assert sink.error == ""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert len(container.streams.audio) == 1
        assert (video.codec_context.width, video.codec_context.height) == (SIZE[1], SIZE[0])
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
        video_seconds = float(video.duration * video.time_base)
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(frames) == 50 and abs(video_seconds - 2.0) < 0.05
    assert abs(len(samples) / session.sample_rate - 2.0) < 0.1
    assert 0.25 < np.sqrt(np.mean(samples[4000:28000] ** 2)) < 0.45  # the 0.5-amplitude tone
    assert np.abs(frames[-1][40, 60].astype(int) - (245, 100, 200)).max() < 12


def test_recorder_fills_frames_dropped_upstream(tmp_path):
    path = tmp_path / "gaps.mp4"
    sink = sink_from_spec(live_sinks.RECORDER, path=str(path), preset="ultrafast")
    sink.open(make_session())
    for index in (0, 1, 2, 10, 11):  # frames 3-9 never came
        sink.write_frame(Frame(solid(RED), index, index / FPS))
    sink.close()
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12
    with pytest.raises(ConfigError, match="sinks.recorder.path"):
        sink_from_spec(live_sinks.RECORDER, path=str(tmp_path / "x.avi"))


# --------------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------------
def test_preview_shows_frames_in_a_window(monkeypatch):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed")
    with XvfbDisplay(640, 480) as xvfb:
        monkeypatch.setenv("DISPLAY", xvfb.display)
        monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
        sink = sink_from_spec(live_sinks.PREVIEW, title="af-preview-test")
        sink.open(make_session())
        try:
            pace(sink, [solid(RED)] * 25)
            found = subprocess.run(
                ["xdotool", "search", "--sync", "--name", "af-preview-test"],
                env={**os.environ},
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert found.returncode == 0 and found.stdout.strip()
            import mss

            # the window exists before its first paint (seconds later on a busy machine): look
            # until the frames show, for at most 10 s while they keep coming
            red_pixels = 0
            with mss.MSS() as grabber:
                for _ in range(20):
                    screen = np.asarray(grabber.grab(grabber.monitors[1]))[..., :3][..., ::-1]  # BGRA -> RGB
                    red_pixels = int((np.abs(screen.astype(int) - RED).max(axis=2) < 8).sum())
                    if red_pixels > 0.5 * SIZE[0] * SIZE[1]:
                        break
                    pace(sink, [solid(RED)] * 12)
            assert red_pixels > 0.5 * SIZE[0] * SIZE[1], red_pixels
            assert sink.window.shown > 0
            sink.window._process.kill()  # the user closes the window: the session goes on
            sink.window._process.wait()
            assert max(pace(sink, [solid(RED)] * 5)) < 0.02 and not sink.window.open
        finally:
            sink.close()


def test_preview_without_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(RuntimeError, match="preview: no display"):
        sink_from_spec(live_sinks.PREVIEW).open(make_session())


# --------------------------------------------------------------------------------------------
# mic-delay with a real PulseAudio server
# --------------------------------------------------------------------------------------------
def onsets(blocks, rate, threshold=0.25, gap=0.3) -> list[float]:
    """Times (PortAudio stream clock) where a tone starts, from (adc_time, samples) blocks."""
    found, previous = [], -1e9
    for start, samples in blocks:
        loud = np.nonzero(np.abs(samples) > threshold)[0]
        if len(loud):
            t = start + loud[0] / rate
            if t - previous > gap:
                found.append(t)
            previous = start + loud[-1] / rate
    return found


def test_mic_delay_delays_the_microphone_into_the_virtual_mic(tmp_path, monkeypatch):
    pulse = PulseServer(tmp_path).start()
    keepalive = None
    streams = []
    sink = None
    try:
        for key, value in pulse.env().items():
            monkeypatch.setenv(key, value)
        import sounddevice as sd

        sd._terminate()  # PortAudio lists the ALSA 'pulse' device only if a server ran at init
        sd._initialize()
        rate = 48000
        pulse.pactl("load-module", "module-null-sink", "sink_name=fake_mic", f"rate={rate}", "channels=1")
        keepalive = subprocess.Popen(  # a live microphone never goes idle
            [
                "pacat",
                "--playback",
                "--raw",
                "--format=s16le",
                f"--rate={rate}",
                "--channels=1",
                "--latency-msec=20",
                "--device=fake_mic",
                "/dev/zero",
            ],
            env={**os.environ},
        )
        session = make_session()
        session.latency_s = 0.2
        sink = sink_from_spec(live_sinks.MIC_DELAY, input="fake_mic.monitor", output="avatar_mic", extra_delay_ms=100.0)
        sink.open(session)
        assert "avatar_mic_source" in pulse.pactl("list", "short", "sources")

        def record(source):
            blocks = []
            monkeypatch.setenv("PULSE_SOURCE", source)
            stream = sd.InputStream(
                device="pulse",
                samplerate=rate,
                channels=1,
                blocksize=480,
                latency="low",
                callback=lambda data, n, t, s: blocks.append((t.inputBufferAdcTime, data[:, 0].copy())),
            )
            monkeypatch.delenv("PULSE_SOURCE")
            stream.start()
            streams.append(stream)
            return blocks

        mic, delayed = record("fake_mic.monitor"), record("avatar_mic_source")
        deadline = time.monotonic() + 15
        while (len(mic) < 50 or len(delayed) < 50) and time.monotonic() < deadline:
            time.sleep(0.05)
        tone_path = tmp_path / "tone.wav"
        t = np.arange(int(0.2 * rate)) / rate
        tone = np.zeros(int(0.5 * rate), np.float32)
        tone[int(0.1 * rate) : int(0.1 * rate) + len(t)] = 0.5 * np.sin(2 * np.pi * 1000 * t)
        import soundfile

        soundfile.write(tone_path, tone, rate)
        for _ in range(3):
            subprocess.run(["paplay", "--device=fake_mic", str(tone_path)], env={**os.environ}, check=True, timeout=20)
            time.sleep(0.5)
        time.sleep(0.6)
    finally:
        for stream in streams:
            stream.stop()
            stream.close()
        if sink is not None:
            sink.close()
        if keepalive is not None:
            keepalive.kill()
            keepalive.wait()
        modules = pulse.pactl("list", "short", "modules") if pulse.ready() else ""
        pulse.stop()
    assert "avatar_mic" not in modules  # the modules we loaded are unloaded at close
    sent, heard = onsets(mic, rate), onsets(delayed, rate)
    assert len(sent) == 3 and len(heard) >= 2, (sent, heard)
    delays = [min((h - s for h in heard if h > s), default=99) for s in sent[1:]]  # the first may meet start-up
    assert all(abs(d - 0.3) < 0.03 for d in delays), delays


# --------------------------------------------------------------------------------------------
# doctor checks of the sinks in use
# --------------------------------------------------------------------------------------------
def test_doctor_checks_cover_the_sinks_in_use(monkeypatch):
    from avatarforcing.plugin.app.config import SinksSettings

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = AppConfig(
            sinks=SinksSettings(
                use=["mjpeg", "preview", "obs"],
                options={"mjpeg": {"port": port}, "obs": {"port": port, "password": "s3cret-pw"}},
            )
        )
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        monkeypatch.setattr(sys, "platform", "linux")
        started = time.monotonic()
        results = {r.name: r for r in live_sinks.doctor_checks(config)}
        elapsed = time.monotonic() - started
    assert set(results) == {"virtual camera", "display", "obs", "sink mjpeg", "sink preview", "sink obs"}
    assert results["display"].status == "warn"  # what the machine offers: warnings only
    assert results["sink mjpeg"].status == "fail" and "another port" in results["sink mjpeg"].fix
    assert results["sink preview"].status == "fail"
    assert results["sink obs"].status == "warn" and "s3cret-pw" not in results["sink obs"].detail
    assert elapsed < 5  # a port that accepts but never answers websocket must not hang the doctor
    # no sink in use: only what the machine offers the sinks
    assert [r.name for r in live_sinks.doctor_checks(AppConfig())] == ["virtual camera", "display", "obs"]
