"""The ``obs`` sink against a real OBS Studio 29 under Xvfb, over obs-websocket 5: the avatar's
frames show up in ``GetSourceScreenshot``, the microphone's sync offset follows the latency,
and killing OBS mid-stream neither blocks the session nor stops the sink from recovering."""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarforcing.integrations.obs_control import ObsClient, ObsRequestError, ObsUnavailable
from avatarforcing.plugin import Frame, SessionInfo, resolve_options
from avatarforcing.plugin.app.config import AppConfig
from avatarforcing.plugin.builtins.sinks import live as live_sinks

sys.path.insert(0, str(Path(__file__).parent))
from service_obs import ObsService
from service_xvfb import XvfbDisplay

FPS = 25
RED, BLUE = (230, 30, 30), (30, 40, 220)


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    with XvfbDisplay(1024, 768) as xvfb:
        service = ObsService(tmp_path_factory.mktemp("obs"), xvfb.display)
        service.start()
        try:
            yield service
        finally:
            service.kill()


def client_for(obs, password=None, timeout=3.0) -> ObsClient:
    return ObsClient("127.0.0.1", obs.port, obs.password if password is None else password, timeout, timeout).connect()


def mean_colour(client: ObsClient, source: str) -> np.ndarray | None:
    """Average RGB of a 64 px wide screenshot of `source` (None when OBS has no image yet)."""
    try:
        data = client.request("GetSourceScreenshot", sourceName=source, imageFormat="png", imageWidth=64)["imageData"]
    except ObsRequestError:
        return None
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    return image[..., ::-1].reshape(-1, 3).mean(0)


def wait_for(condition, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def test_request_errors_carry_obs_comment_and_bad_password_is_refused(obs):
    client = client_for(obs)
    try:
        assert client.request("GetVersion")["obsWebSocketVersion"].startswith("5.")
        with pytest.raises(ObsRequestError) as error:
            client.request("CreateInput", sceneName="Scene", inputName="x", inputKind="no_such_kind", inputSettings={})
        assert error.value.code and "kind" in error.value.comment.lower()
    finally:
        client.close()
    with pytest.raises(ObsUnavailable, match="password") as error:
        client_for(obs, password="wrong-password")
    assert "wrong-password" not in str(error.value)


def test_connect_times_out_against_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts TCP, never speaks websocket
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(ObsUnavailable, match="did not answer within 1 s"):
            ObsClient("127.0.0.1", silent.getsockname()[1], "pw", connect_timeout=1.0).connect()
        assert time.monotonic() - started < 4


def wait_for_colour(client: ObsClient, source: str, target, timeout: float) -> np.ndarray | None:
    """The screenshot colour of `source` once it is within 45 of `target` (or the last one seen)."""
    deadline = time.monotonic() + timeout
    while True:
        colour = mean_colour(client, source)
        if (colour is not None and np.abs(colour - target).max() < 45) or time.monotonic() > deadline:
            return colour
        time.sleep(0.2)


class Pacer:
    """Writes frames of `colour` to a sink at 25 fps on its own thread (like the session does)
    and keeps the longest write_frame time."""

    def __init__(self, sink) -> None:
        self.sink, self.colour = sink, RED
        self.longest = 0.0
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            image = np.empty((128, 128, 3), np.uint8)
            image[:] = self.colour
            t0 = time.monotonic()
            self.sink.write_frame(Frame(image, self.frames, self.frames / FPS))
            self.longest = max(self.longest, time.monotonic() - t0)
            self.frames += 1
            self._stop.wait(max(0.0, start + self.frames / FPS - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_obs_sink_streams_frames_syncs_the_mic_and_survives_an_obs_restart(obs, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(live_sinks.OBS_PASSWORD_ENV, obs.password)  # the password comes from the env
    options = resolve_options(
        "sinks.obs",
        live_sinks.OBS.options,
        {"port": obs.port, "scene": "AvatarTest", "source": "Avatar", "mic_input": "Mic", "connect_timeout": 2.0},
    )
    sink = live_sinks.OBS.factory(**options)
    session = SessionInfo("obs-test", AppConfig(), fps=FPS, frame_size=(128, 128))
    session.latency_s = 0.3
    control = client_for(obs)
    control.request(
        "CreateInput", sceneName="Scene", inputName="Mic", inputKind="pulse_input_capture", inputSettings={}
    )
    sink.open(session)
    pacer = Pacer(sink)
    try:
        assert sink.supervisor.connected.wait(10), sink.supervisor.status.last_error
        colour = wait_for_colour(control, "Avatar", RED, 15)
        assert colour is not None and np.abs(colour - RED).max() < 45, colour
        assert control.request("GetCurrentProgramScene")["currentProgramSceneName"] == "AvatarTest"
        offset = lambda: control.request("GetInputAudioSyncOffset", inputName="Mic")["inputAudioSyncOffset"]
        assert wait_for(lambda: offset() == 300, 5), offset()
        session.latency_s = 0.45  # the session measured a new latency
        assert wait_for(lambda: offset() == 450, 5), offset()
        control.close()

        obs.kill()  # a crash mid-stream
        pacer.longest = 0.0
        frames_before = pacer.frames
        assert wait_for(lambda: not sink.supervisor.status.connected, 10)
        time.sleep(1.0)
        assert pacer.frames - frames_before >= 20 and pacer.longest < 0.05, (pacer.frames, pacer.longest)

        obs.start()  # OBS comes back (with a fresh configuration: scene and input are re-created)
        pacer.colour = BLUE
        assert wait_for(lambda: sink.supervisor.status.connections >= 2, 25), sink.supervisor.status
        control = client_for(obs)
        colour = wait_for_colour(control, "Avatar", BLUE, 15)
        assert colour is not None and np.abs(colour - BLUE).max() < 45, colour
        assert pacer.longest < 0.05
    finally:
        pacer.stop()
        control.close()
        started = time.monotonic()
        sink.close()
        closing = time.monotonic() - started
    assert closing < 5
    assert obs.password not in caplog.text and obs.password not in repr(sink)
