"""Live sources against real components: a private PulseAudio server with a null sink (what is
played into it is what the loopback hears) and a private Xvfb with real windows (ffplay)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
import soundfile
from service_pulse import PulseServer
from service_xvfb import XvfbDisplay

from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.app.config import AppConfig, config_from_dict
from avatarforcing.plugin.builtins.sources import live as live_sources

RATE = 48000


# -- helpers -----------------------------------------------------------------------------------------
class Reader:
    """Iterates a source on a thread, keeping every item and any exception."""

    def __init__(self, source) -> None:
        self.source, self.items, self.error = source, [], None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.source:
                self.items.append(item)
        except BaseException as error:  # reported by the test
            self.error = error

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.items):
                return True
            time.sleep(0.02)
        return predicate(self.items)

    def stop(self) -> None:
        self.source.close()
        self.source.close()  # idempotent
        self.thread.join(5)
        assert not self.thread.is_alive(), "the source did not end after close()"
        assert self.error is None, f"the source raised {self.error!r}"


def best_correlation(captured: np.ndarray, reference: np.ndarray, skip: int) -> tuple[float, int]:
    """Pearson r of `reference` against `captured` at the lag of the cross-correlation peak."""
    size = 1 << int(np.ceil(np.log2(len(captured) + len(reference))))
    spectrum = np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size))
    lag = int(np.argmax(np.fft.irfft(spectrum, size)[: len(captured)]))
    segment = captured[lag + skip : lag + len(reference)]
    return float(np.corrcoef(segment, reference[skip : skip + len(segment)])[0, 1]), lag


@pytest.fixture
def pulse(tmp_path, monkeypatch):
    server = PulseServer(tmp_path / "pulse").start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)  # libpulse inside PortAudio reads these when a stream opens
    monkeypatch.delenv("PULSE_SOURCE", raising=False)
    yield server
    server.stop()


@pytest.fixture
def speech(samples_dir, tmp_path) -> tuple[np.ndarray, str]:
    """3 s of the sample speech at 48 kHz mono, as an array and as a WAV file."""
    from avatarforcing.integrations.media import load_audio

    samples = load_audio(str(samples_dir / "avatar.wav"), RATE)[: 3 * RATE].astype(np.float32)
    path = tmp_path / "speech48k.wav"
    soundfile.write(path, samples, RATE, subtype="FLOAT")
    return samples, str(path)


def audio_source(kind: str, name: str, **options):
    spec = {
        s.name: s
        for s in (
            live_sources.register_user_audio_sources()
            if kind == "user_audio"
            else live_sources.register_avatar_audio_sources()
        )
    }[name]
    values = {o.name: o.default for o in spec.options} | options
    return spec.factory(**values)


# -- audio -------------------------------------------------------------------------------------------
def test_loopback_captures_what_is_played_into_the_null_sink(pulse, speech):
    reference, path = speech
    reader = Reader(audio_source("user_audio", "loopback", sample_rate=RATE))
    try:
        assert reader.wait_for(lambda items: len(items) > 0, 15), "no audio from the monitor"
        time.sleep(0.2)
        pulse.play(path)
        time.sleep(0.5)
    finally:
        reader.stop()
    chunks = reader.items
    assert all(c.sample_rate == RATE and c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    stamps = np.array([c.timestamp for c in chunks])
    assert np.all(np.diff(stamps) > 0), "timestamps must increase"
    captured = np.concatenate([c.samples for c in chunks])
    r, lag = best_correlation(captured, reference, skip=RATE // 20)
    assert r >= 0.99, f"captured audio does not match the played file (r={r:.4f}, lag {lag} samples)"


def test_microphone_opens_on_the_pulse_default_source(pulse):
    # the server's default source is the null sink's monitor: the "microphone" hears the keep-alive
    assert pulse.pactl("get-default-source").strip() == "meeting_out.monitor"
    for kind in ("avatar_audio", "user_audio"):
        reader = Reader(audio_source(kind, "microphone", sample_rate=16000, channels=2, block_ms=40))
        try:
            assert reader.wait_for(lambda items: len(items) >= 3, 15), f"{kind} microphone delivered nothing"
        finally:
            reader.stop()
        first = reader.items[0]
        assert first.samples.shape == (640, 2) and first.sample_rate == 16000


def test_microphone_by_server_source_name(pulse):
    source = audio_source("avatar_audio", "microphone", device="meeting_out.monitor")
    reader = Reader(source)
    try:
        assert reader.wait_for(lambda items: len(items) >= 2, 15)
    finally:
        reader.stop()
    assert "sound-server source 'meeting_out.monitor'" in " ".join(source.capture.events)


def test_unknown_device_is_one_clear_config_error(pulse):
    with pytest.raises(ConfigError, match=r"^sources\.avatar_audio\.device: no input device matches 'no-such-mic'"):
        audio_source("avatar_audio", "microphone", device="no-such-mic")


def test_sound_server_killed_mid_capture_then_restarted(pulse):
    source = audio_source("user_audio", "loopback", sample_rate=RATE)
    reader = Reader(source)
    try:
        assert reader.wait_for(lambda items: len(items) >= 5, 15)
        pulse.kill()
        time.sleep(0.5)  # buffered blocks drain, then nothing comes
        count = len(reader.items)
        time.sleep(1.0)
        assert len(reader.items) == count, "chunks while the server is down"
        assert reader.thread.is_alive() and reader.error is None
        down_events = [e for e in source.capture.events if "stopped" in e or "cannot open" in e]
        assert len(down_events) == 1, source.capture.events  # reported once, not per retry
        pulse.start()
        restarted = time.monotonic() - source.capture.origin
        assert reader.wait_for(lambda items: len(items) > count and items[-1].timestamp > restarted, 20), (
            "no audio after the server came back"
        )
    finally:
        reader.stop()
    assert "capturing again" in source.capture.events[-1]
    stamps = [c.timestamp for c in reader.items]
    assert stamps == sorted(stamps)


def test_source_waits_for_a_server_that_is_not_running_yet(tmp_path, monkeypatch):
    server = PulseServer(tmp_path / "pulse")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    if shutil.which("pactl") is None:
        pytest.skip("pactl not installed")
    source = audio_source("user_audio", "loopback", sample_rate=RATE)  # accepted: an outage, not a mistake
    reader = Reader(source)
    try:
        time.sleep(0.7)
        assert reader.items == [] and reader.thread.is_alive()
        server.start()
        assert reader.wait_for(lambda items: len(items) > 0, 20), source.capture.events
    finally:
        reader.stop()
        server.stop()


# -- screen ------------------------------------------------------------------------------------------
@pytest.fixture
def xvfb():
    if shutil.which("ffplay") is None:
        pytest.skip("ffplay (ffmpeg) not installed")
    with XvfbDisplay(width=800, height=600) as display:
        yield display


def pattern_image(path) -> np.ndarray:
    """A 320x240 RGB test card: four flat quadrants."""
    image = np.zeros((240, 320, 3), np.uint8)
    image[:120, :160] = (230, 30, 30)
    image[:120, 160:] = (30, 200, 40)
    image[120:, :160] = (40, 40, 220)
    image[120:, 160:] = (240, 240, 240)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return image


def show_window(xvfb, image_path, title: str) -> subprocess.Popen:
    import os

    return subprocess.Popen(
        [
            "ffplay",
            "-loglevel",
            "error",
            "-window_title",
            title,
            "-loop",
            "0",
            "-left",
            "100",
            "-top",
            "50",
            str(image_path),
        ],
        env={**os.environ, **xvfb.env()},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def close_window(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def quadrant_means(image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]
    pad_h, pad_w = h // 8, w // 8
    return [
        image[y0 + pad_h : y1 - pad_h, x0 + pad_w : x1 - pad_w].reshape(-1, 3).mean(axis=0)
        for y0, y1 in ((0, h // 2), (h // 2, h))
        for x0, x1 in ((0, w // 2), (w // 2, w))
    ]


def shows(image: np.ndarray, card: np.ndarray) -> bool:
    return image.shape == card.shape and all(
        np.abs(got - want).max() < 12 for got, want in zip(quadrant_means(image), quadrant_means(card))
    )


def test_screen_captures_a_window_by_title_and_survives_it_closing(xvfb, tmp_path, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb.display)
    card = pattern_image(tmp_path / "card.png")
    spec = {s.name: s for s in live_sources.register_user_video_sources()}["screen"]
    source = spec.factory(window="remote MEETING", region="", monitor=1, fps=20.0)
    window = show_window(xvfb, tmp_path / "card.png", "Remote Meeting - Test Call")
    reader = Reader(source)
    try:
        # the window may show black until ffplay has drawn its first picture
        assert reader.wait_for(lambda items: items and shows(items[-1].image, card), 20), (
            source.capture.events,
            reader.items and quadrant_means(reader.items[-1].image),
        )
        assert reader.items[-1].image.dtype == np.uint8
        close_window(window)
        time.sleep(1.5)  # a lookup or two: the window is gone
        count = len(reader.items)
        time.sleep(1.0)
        assert len(reader.items) == count, "frames while the window is closed"
        assert reader.thread.is_alive() and reader.error is None
        window = show_window(xvfb, tmp_path / "card.png", "Remote Meeting - Test Call")
        assert reader.wait_for(lambda items: len(items) > count and shows(items[-1].image, card), 20), (
            "the reopened window was not picked up"
        )
    finally:
        close_window(window)
        reader.stop()
    stamps = [f.timestamp for f in reader.items]
    assert stamps == sorted(stamps) and [f.index for f in reader.items] == list(range(len(stamps)))
    assert any("no window titled like" in e for e in source.capture.events)


def test_screen_region_and_monitor(xvfb, tmp_path, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb.display)
    spec = {s.name: s for s in live_sources.register_user_video_sources()}["screen"]
    for options, shape in (
        ({"region": "10,20,64,48", "monitor": 1}, (48, 64, 3)),
        ({"region": "", "monitor": 1}, (600, 800, 3)),
    ):
        reader = Reader(spec.factory(window="", fps=25.0, **options))
        try:
            assert reader.wait_for(lambda items: len(items) >= 5, 15)
        finally:
            reader.stop()
        assert reader.items[0].image.shape == shape
    with pytest.raises(ConfigError, match="monitor 5 does not exist"):
        spec.factory(window="", region="", monitor=5, fps=25.0)


def test_screen_frame_rate_is_paced(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb.display)
    spec = {s.name: s for s in live_sources.register_user_video_sources()}["screen"]
    reader = Reader(spec.factory(window="", region="0,0,160,120", monitor=1, fps=10.0))
    try:
        reader.wait_for(lambda items: len(items) >= 1, 10)
        time.sleep(2.0)
    finally:
        reader.stop()
    stamps = np.array([f.timestamp for f in reader.items])
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 6.0 <= rate <= 11.0, f"{rate:.1f} fps for 10 requested"


def test_bad_region_is_rejected_by_its_option_check():
    from avatarforcing.plugin.api.options import resolve_options

    spec = {s.name: s for s in live_sources.register_user_video_sources()}["screen"]
    with pytest.raises(ConfigError, match=r"sources\.user_video\.region"):
        resolve_options("sources.user_video", spec.options, {"region": "10,20,0"})


def test_webcam_without_camera_is_one_clear_error():
    spec = {s.name: s for s in live_sources.register_user_video_sources()}["webcam"]
    with pytest.raises(ConfigError, match=r"^sources\.user_video\.index: no camera at index 7"):
        spec.factory(index=7, width=0, height=0, fps=0.0)


# -- doctor ------------------------------------------------------------------------------------------
def test_doctor_checks_name_the_opened_sources(pulse, xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb.display)
    checks = {c.name: c for c in live_sources.doctor_checks(AppConfig())}
    assert checks["source user_audio (loopback)"].status == "ok"
    assert "@DEFAULT_MONITOR@" in checks["source user_audio (loopback)"].detail
    assert checks["source avatar_audio (microphone)"].status == "ok"
    assert checks["source user_video (screen)"].status == "ok"
    config = config_from_dict({"sources": {"user_video": {"use": "screen", "window": "nothing like this"}}})
    screen = {c.name: c for c in live_sources.doctor_checks(config)}["source user_video (screen)"]
    assert screen.status == "warn" and screen.fix


def test_doctor_checks_without_display_or_server(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/nothing-here")
    checks = {c.name: c for c in live_sources.doctor_checks(AppConfig())}
    assert checks["source user_video (screen)"].status == "warn"  # headless is not a broken install
    assert "DISPLAY" in checks["source user_video (screen)"].fix
