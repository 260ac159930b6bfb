"""The ``obs`` sink against a real OBS Studio 29 under Xvfb, over obs-websocket 5: the transport
is chosen from OBS's real input kinds (Debian's OBS has no browser source: the RGBA media
source), the puppet's transparent background stays transparent in OBS (``GetSourceScreenshot``
as PNG keeps alpha), the avatar's item is created once in the current scene, placed by the
options and reused on reconnect, the microphone's sync offset follows the latency, and killing
OBS mid-stream neither blocks the session nor stops the sink from recovering.

``python tests/test_obs.py --latency`` measures how far behind the frames OBS shows are, alpha
path vs MJPEG (the numbers in docs/sinks.md)."""

from __future__ import annotations

import base64
import itertools
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarforcing.integrations import obs_control
from avatarforcing.integrations.mjpeg_server import MjpegServer
from avatarforcing.integrations.obs_control import ObsClient, ObsError, ObsRequestError, ObsUnavailable
from avatarforcing.plugin import Frame, MotionBlock, SessionInfo, resolve_options
from avatarforcing.plugin.app.config import AppConfig, load_config
from avatarforcing.plugin.builtins.renderers.puppet import PUPPET
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


def screenshot(client: ObsClient, source: str, width: int | None = None) -> np.ndarray | None:
    """RGBA ``uint8`` PNG screenshot of `source` as OBS renders it (None when it has no image yet)."""
    size = {"imageWidth": width} if width else {}
    try:
        data = client.request("GetSourceScreenshot", sourceName=source, imageFormat="png", **size)["imageData"]
    except ObsRequestError:
        return None
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[0] < 8:  # a source without a frame yet
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGBA)


def mean_colour(client: ObsClient, source: str) -> np.ndarray | None:
    """Average RGB of a 64 px wide screenshot of `source` (None when OBS has no image yet)."""
    image = screenshot(client, source, 64)
    return None if image is None else image[..., :3].reshape(-1, 3).mean(0)


def wait_for(condition, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if isinstance(value, np.ndarray) or value:  # an image counts as found
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
    with pytest.raises(ObsUnavailable, match="OBS refused the websocket password") as error:
        client_for(obs, password="wrong-password")
    assert "wrong-password" not in str(error.value) and "inconnect" not in str(error.value)
    with pytest.raises(ObsUnavailable, match="OBS asks for a websocket password and none was given"):
        client_for(obs, password="")


def test_connect_times_out_against_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts TCP, never speaks websocket
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(ObsUnavailable, match="did not answer within 1 s"):
            ObsClient("127.0.0.1", silent.getsockname()[1], "pw", connect_timeout=1.0).connect()
        assert time.monotonic() - started < 4


def puppet_frame(size: int) -> np.ndarray:
    """The puppet renderer's neutral face, RGBA ``(size, size, 4)`` on a transparent background."""
    renderer = PUPPET.factory(look="classic", size=size, background="transparent")
    renderer.open(SessionInfo("puppet", AppConfig(), frame_size=(size, size)))
    return renderer.render(MotionBlock(0, 0, 1, np.zeros((1, 13), np.float32)))[0].image


def test_alpha_stream_keeps_alpha_from_the_live_edge_and_ends_on_a_new_size():
    """``/stream.nut`` read by FFmpeg (PyAV), as OBS's media source reads it: exact RGBA, pts one
    frame period apart, every new reader starting at the newest frame, a new frame size ending
    the stream (the reader reconnects to get it)."""
    import av

    face = puppet_frame(64)
    with MjpegServer(port=0, fps=FPS) as server:
        server.publish(np.zeros((64, 64, 3), np.uint8))  # an old frame, replaced before anyone reads
        server.publish(face)
        container = av.open(server.alpha_url, format="nut", options={"probesize": "32", "analyzeduration": "0"})
        frames = []
        try:
            for frame in container.decode(video=0):
                frames.append((frame.time, frame.to_ndarray(format="rgba")))
                if len(frames) == 3:
                    server.publish(face[:32, :48])  # the renderer's size changed
        except av.error.FFmpegError:
            pass  # the server ended the stream
        finally:
            container.close()
    assert len(frames) >= 3 and all(np.array_equal(image, face) for _, image in frames)
    times = [t for t, _ in frames]
    assert times[0] == 0 and all(round((b - a) * FPS) >= 1 for a, b in itertools.pairwise(times))
    assert len(frames) < 10  # ended soon after the size changed


def test_transport_follows_what_this_obs_can_create(obs):
    choose = obs_control.choose_transport
    urls = {"alpha": "http://x/stream.nut", "mjpeg": "http://x/stream.mjpg", "browser": "http://127.0.0.1:8765/overlay"}
    client = client_for(obs)
    try:
        kinds = obs_control.input_kinds(client)
        assert "ffmpeg_source" in kinds and "browser_source" not in kinds  # Debian's OBS: no obs-browser
        assert choose("auto", kinds, urls, obs_is_local=True).name == "alpha"
        assert choose("auto", kinds, urls, obs_is_local=False).name == "mjpeg"  # raw RGBA is for loopback
        assert choose("mjpeg", kinds, urls, obs_is_local=True).name == "mjpeg"
        with pytest.raises(ObsError, match="no browser source.*transport"):
            choose("browser", kinds, urls, obs_is_local=True)
        # This OBS cannot hold a browser source: it refuses an input of a kind it lacks, so the
        # browser branch is checked as a decision and as settings, not inside OBS.
        kind, settings = obs_control.input_for("browser", urls, (320, 240), 25)
        with pytest.raises(ObsRequestError, match="kind"):
            client.request("CreateInput", sceneName="Scene", inputName="page", inputKind=kind, inputSettings=settings)
    finally:
        client.close()
    assert kind == "browser_source" and settings["url"] == urls["browser"]
    assert (settings["width"], settings["height"], settings["fps"]) == (320, 240, 25)
    assert "rgba(0, 0, 0, 0)" in settings["css"]  # the page's own background stays transparent
    with_browser = kinds | {"browser_source"}
    assert choose("auto", with_browser, urls, obs_is_local=True).name == "browser"
    without_page = {name: url for name, url in urls.items() if name != "browser"}
    assert choose("auto", with_browser, without_page, obs_is_local=True).name == "alpha"
    with pytest.raises(ObsError, match="overlay sink"):
        choose("browser", with_browser, without_page, obs_is_local=True)


def test_the_overlay_page_address_comes_from_the_overlay_sink():
    config = load_config(None, [("sinks.use", ("obs", "overlay")), ("sinks.overlay.port", 9123)], environ={})
    session = SessionInfo("overlay", config)
    assert live_sinks.overlay_url(session) == "http://127.0.0.1:9123/overlay"
    session.plugin_state["overlay"] = {"url": "http://127.0.0.1:40001/overlay"}  # what the sink published
    assert live_sinks.overlay_url(session) == "http://127.0.0.1:40001/overlay"
    session.plugin_state["overlay"] = {"url": "http://127.0.0.1:40001/overlay?token=***"}
    assert live_sinks.overlay_url(session) == ""  # OBS could not open a page whose token is hidden
    assert live_sinks.overlay_url(SessionInfo("none", load_config(None, [], environ={}))) == ""


def opaque_screenshot(client: ObsClient, source: str) -> np.ndarray | None:
    """The screenshot of `source` once its middle is opaque (the first frame has arrived)."""
    image = screenshot(client, source)
    return image if image is not None and image[image.shape[0] // 2, image.shape[1] // 2, 3] == 255 else None


def test_transparent_puppet_reaches_obs_with_alpha_placed_once_in_the_current_scene(obs):
    face = puppet_frame(256)
    options = resolve_options(
        "sinks.obs",
        live_sinks.OBS.options,
        {"port": obs.port, "password": obs.password, "source": "alpha-avatar", "connect_timeout": 2.0},
    )
    session = SessionInfo("obs-alpha", AppConfig(), fps=FPS, frame_size=(256, 256))
    control = client_for(obs)
    sinks = []
    try:
        for run in range(2):  # a second run (a reconnect) finds the source and its item in place
            sink = live_sinks.OBS.factory(**options)
            sinks.append(sink)
            sink.open(session)
            pacer = Pacer(sink, face)
            try:
                assert sink.supervisor.connected.wait(10), sink.supervisor.status.last_error
                setup = sink.supervisor.status.setup
                assert (setup.transport, setup.scene) == ("alpha", "Scene")  # no browser source: alpha
                assert setup.created_input == setup.created_item == (run == 0) and not setup.created_scene
                shot = wait_for(lambda: opaque_screenshot(control, "alpha-avatar"), 15)
            finally:
                pacer.stop()
                sink.close()
            assert shot is not None and shot.shape == (256, 256, 4)
            assert shot[2, 2, 3] == 0 and shot[2, -3, 3] == 0  # transparent corners
            assert shot[128, 128, 3] == 255  # opaque face
            assert np.abs(shot[128, 128, :3].astype(int) - face[128, 128, :3]).max() <= 3  # exact colours
            assert np.abs(shot[..., 3].astype(int) - face[..., 3]).mean() < 2  # the whole matte
        items = control.request("GetSceneItemList", sceneName="Scene")["sceneItems"]
        assert [item["sourceName"] for item in items].count("alpha-avatar") == 1
        item = next(item for item in items if item["sourceName"] == "alpha-avatar")
        transform = control.request("GetSceneItemTransform", sceneName="Scene", sceneItemId=item["sceneItemId"])
        transform = transform["sceneItemTransform"]
        # bottom-right, 0.4 of the 640x360 canvas high, square like the frames
        assert (transform["positionX"], transform["positionY"], transform["alignment"]) == (640, 360, 10)
        assert (transform["boundsWidth"], transform["boundsHeight"]) == (144, 144)
    finally:
        control.close()


def test_setup_updates_in_place_and_keeps_a_moved_item(obs):
    client = client_for(obs)
    try:
        with MjpegServer(port=0) as server:
            urls = {"alpha": server.alpha_url, "mjpeg": server.url}

            def setup(transport: str) -> obs_control.SetupResult:
                kind, settings = obs_control.input_for(transport, urls, (128, 128), FPS)
                placement = obs_control.Placement("top-left", 0.5, (128, 128))
                return obs_control.ensure_source(
                    client, obs_control.SourceSetup("Reuse", "reused", kind, settings, placement)
                )

            first = setup("mjpeg")
            assert first.created_scene and first.created_input and first.created_item
            assert client.request("GetCurrentProgramScene")["currentProgramSceneName"] == "Reuse"
            item = client.request("GetSceneItemId", sceneName="Reuse", sourceName="reused")["sceneItemId"]
            client.request(  # the streamer moves it
                "SetSceneItemTransform",
                sceneName="Reuse",
                sceneItemId=item,
                sceneItemTransform={"positionX": 100.0, "positionY": 50.0},
            )
            second = setup("alpha")  # a later run that chose another transport
            assert not (second.created_scene or second.created_input or second.created_item)
            items = client.request("GetSceneItemList", sceneName="Reuse")["sceneItems"]
            assert [i["sceneItemId"] for i in items if i["sourceName"] == "reused"] == [item]
            settings = client.request("GetInputSettings", inputName="reused")["inputSettings"]
            assert settings["input"] == server.alpha_url and settings["input_format"] == "nut"
            transform = client.request("GetSceneItemTransform", sceneName="Reuse", sceneItemId=item)
            assert (transform["sceneItemTransform"]["positionX"], transform["sceneItemTransform"]["positionY"]) == (
                100,
                50,
            )
            names = [i["inputName"] for i in client.request("GetInputList")["inputs"]]
            assert names.count("reused") == 1
    finally:
        client.close()


@pytest.mark.parametrize(
    ("overrides", "given", "expected"),
    [
        ([], set(), [("render.background", "transparent")]),  # puppet
        ([("session.portrait", "me.jpg")], set(), [("render.background", "transparent")]),  # portrait
        ([("model.engine", "official")], set(), []),  # motion-autoencoder: RGB, no such option
        ([], {"render.background"}, []),  # --set render.background wins
    ],
)
def test_preset_stream_makes_the_chosen_renderer_transparent_where_it_can(overrides, given, expected):
    from types import SimpleNamespace

    from avatarforcing.plugin.app.commands.run import preset_render_overrides
    from avatarforcing.plugin.host import build_plugin_host

    context = SimpleNamespace(host=build_plugin_host())
    config = load_config(None, overrides, environ={})
    assert preset_render_overrides("stream", context, config, given) == expected
    assert preset_render_overrides("meeting", context, config, given) == []


def test_preset_stream_puts_a_transparent_portrait_into_the_current_scene(obs, samples_dir, tmp_path):
    """``run --preset stream`` end to end: the portrait renderer (whose own default background is
    the photo's) draws on a transparent background, and OBS shows it with its alpha in the
    current scene, bottom-right, once."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARFORCING_")}
    env[live_sinks.OBS_PASSWORD_ENV] = obs.password
    argv = [sys.executable, "-m", "avatarforcing.plugin.app.cli", "run", "--preset", "stream"]
    argv += ["--portrait", str(samples_dir / "rumi.jpg"), "--avatar-audio", str(samples_dir / "avatar.wav")]
    argv += ["--user-audio", str(samples_dir / "user.mp4"), "--user-video", str(samples_dir / "user.mp4")]
    argv += ["--duration", "6", "--set", f"sinks.obs.port={obs.port}", "--set", "sinks.overlay.port=0"]
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        run = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    client = client_for(obs)
    try:
        shot = wait_for(lambda: opaque_screenshot(client, "avatarforcing") if run.poll() is None else False, 90, 0.5)
        current = client.request("GetCurrentProgramScene")["currentProgramSceneName"]
        items = client.request("GetSceneItemList", sceneName=current)["sceneItems"]
    finally:
        client.close()
        status = run.wait(60)
    output = log_path.read_text(errors="replace")
    assert status == 0, output[-3000:]
    assert "renderer portrait" in output and obs.password not in output
    assert shot is not None and shot.shape == (512, 512, 4), output[-3000:]
    assert shot[2, 2, 3] == 0 and shot[2, -3, 3] == 0 and shot[256, 256, 3] == 255
    assert [item["sourceName"] for item in items].count("avatarforcing") == 1


def wait_for_colour(client: ObsClient, source: str, target, timeout: float) -> np.ndarray | None:
    """The screenshot colour of `source` once it is within 45 of `target` (or the last one seen)."""
    deadline = time.monotonic() + timeout
    while True:
        colour = mean_colour(client, source)
        if (colour is not None and np.abs(colour - target).max() < 45) or time.monotonic() > deadline:
            return colour
        time.sleep(0.2)


class Pacer:
    """Writes `image` (or else frames of `colour`) to a sink at 25 fps on its own thread (like
    the session does) and keeps the longest write_frame time."""

    def __init__(self, sink, image: np.ndarray | None = None) -> None:
        self.sink, self.colour, self.image = sink, RED, image
        self.longest = 0.0
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            image = self.image
            if image is None:
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


# --------------------------------------------------------------------------------------------
# Measurements for docs/sinks.md: python tests/test_obs.py --latency [--screenshot PNG]
# --------------------------------------------------------------------------------------------
CELL = 64  # a frame number as 8 black/white cells along the bottom of a 512x512 frame


def numbered_frame(face: np.ndarray, number: int) -> np.ndarray:
    """`face` (RGBA 512x512) with ``number % 256`` written in opaque black/white cells."""
    image = face.copy()
    for bit in range(8):
        value = 255 if (number >> bit) & 1 else 0
        image[-CELL:, bit * CELL : (bit + 1) * CELL] = (value, value, value, 255)
    return image


def read_number(image: np.ndarray) -> int:
    row = image[-CELL // 2, :, :3].astype(int).mean(-1)
    return sum(1 << bit for bit in range(8) if row[bit * CELL + CELL // 2] > 128)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_lag(client: ObsClient, transport: str, ffmpeg_options: str | None, seconds: float) -> list[float]:
    """Milliseconds between publishing a frame and OBS showing it (``GetSourceScreenshot``,
    taken at the midpoint of the request), sampled every 50-100 ms for `seconds`."""
    face = puppet_frame(512)
    published: dict[int, list[float]] = {}
    stop = threading.Event()
    with MjpegServer(port=0) as server:

        def pace() -> None:
            start, number = time.monotonic(), 0
            while not stop.is_set():
                server.publish(numbered_frame(face, number))
                published.setdefault(number % 256, []).append(time.monotonic())
                number += 1
                stop.wait(max(0.0, start + number / FPS - time.monotonic()))

        thread = threading.Thread(target=pace, daemon=True)
        thread.start()
        urls = {"alpha": server.alpha_url, "mjpeg": server.url}
        kind, settings = obs_control.input_for(transport, urls, (512, 512), FPS)
        if ffmpeg_options is not None:
            settings["ffmpeg_options"] = ffmpeg_options
        name = f"lag-{transport}-{time.monotonic_ns()}"
        obs_control.ensure_source(client, obs_control.SourceSetup("", name, kind, settings))
        wait_for(lambda: screenshot(client, name), 15)
        time.sleep(1.0)
        lags, rng, end = [], np.random.default_rng(0), time.monotonic() + seconds
        while time.monotonic() < end:
            asked = time.monotonic()
            image = screenshot(client, name)
            answered = time.monotonic()
            shown = [t for t in published.get(read_number(image), []) if t <= answered] if image is not None else []
            if shown:
                lags.append(((asked + answered) / 2 - max(shown)) * 1000)
            time.sleep(0.05 + 0.05 * rng.random())
        stop.set()
        thread.join()
        client.request("RemoveInput", inputName=name)
    return lags


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[-1])
    parser.add_argument("--latency", action="store_true", help="alpha vs MJPEG lag into a real OBS under Xvfb")
    parser.add_argument("--rounds", type=int, default=5, help="connections per variant (each anchors OBS's clock)")
    parser.add_argument("--seconds", type=float, default=4.0, help="sampling time per connection")
    parser.add_argument("--screenshot", metavar="PNG", help="also save OBS's program scene with the avatar in it")
    args = parser.parse_args()
    variants = [
        ("alpha", None, "alpha (NUT rawvideo RGBA, low-latency FFmpeg options)"),
        ("mjpeg", None, "mjpeg (as shipped, no FFmpeg options)"),
        ("mjpeg", obs_control.LOW_LATENCY_OPTIONS, "mjpeg + the low-latency FFmpeg options"),
    ]
    with XvfbDisplay(1024, 768) as xvfb, ObsService(Path(tempfile.mkdtemp()), xvfb.display) as obs:
        client = client_for(obs)
        if args.latency:
            lags: dict[str, list[float]] = {label: [] for _, _, label in variants}
            cpu = {label: [0.0, 0.0, 0.0] for _, _, label in variants}  # OBS s, this process s, wall s
            for _ in range(args.rounds):
                for transport, options, label in variants:
                    before = (cpu_seconds(obs.process.pid), time.process_time(), time.monotonic())
                    lags[label] += measure_lag(client, transport, options, args.seconds)
                    after = (cpu_seconds(obs.process.pid), time.process_time(), time.monotonic())
                    cpu[label] = [total + b - a for total, a, b in zip(cpu[label], before, after)]
            for label, values in lags.items():
                p10, p50, p90 = np.percentile(values, [10, 50, 90])
                obs_cpu, own_cpu, wall = cpu[label]
                print(
                    f"{label}: median {p50:.0f} ms, p10 {p10:.0f}, p90 {p90:.0f}, max {max(values):.0f} "
                    f"({len(values)} samples); CPU: OBS {100 * obs_cpu / wall:.0f}%, "
                    f"server + screenshots {100 * own_cpu / wall:.0f}% of one core"
                )
        if args.screenshot:
            save_scene_screenshot(client, obs, args.screenshot)
        client.close()


def save_scene_screenshot(client: ObsClient, obs: ObsService, path: str) -> None:
    """OBS's program scene: a striped backdrop behind the obs sink's transparent puppet."""
    y, x = np.mgrid[0:360, 0:640]
    backdrop = np.stack([40 + x * 150 // 640, 60 + 80 * ((x + y) // 40 % 2), 200 - y * 120 // 360], -1)
    background = Path(tempfile.mkdtemp()) / "background.png"
    cv2.imwrite(str(background), backdrop.astype(np.uint8)[..., ::-1])
    client.request(
        "CreateInput",
        sceneName="Scene",
        inputName="background",
        inputKind="image_source",
        inputSettings={"file": str(background)},
    )
    options = resolve_options("sinks.obs", live_sinks.OBS.options, {"port": obs.port, "password": obs.password})
    sink = live_sinks.OBS.factory(**options)
    sink.open(SessionInfo("screenshot", AppConfig(), fps=FPS, frame_size=(512, 512)))
    pacer = Pacer(sink, puppet_frame(512))
    try:
        wait_for(lambda: opaque_screenshot(client, options["source"]), 15)
        time.sleep(0.5)
        image = screenshot(client, "Scene")
    finally:
        pacer.stop()
        sink.close()
    cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGBA2BGR))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
