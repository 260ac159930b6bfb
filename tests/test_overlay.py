"""The ``overlay`` sink: its wire format, its server (tokens, busy port, clients that come,
go or stall) and its page in a real headless Chromium: transparency over a coloured page,
the frame rate measured in the page, and recovery after a real session restarts."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES
from service_browser import HeadlessChromium
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from avatarforcing.engine.embedded.drawing import draw_face
from avatarforcing.integrations.alpha import flatten_rgba
from avatarforcing.integrations.overlay_server import HEADER, MAGIC, SOCKET_PATH, OverlayServer, encode_frame
from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.api.types import Frame, SessionInfo
from avatarforcing.plugin.app.config import load_config
from avatarforcing.plugin.builtins.sinks import overlay as overlay_plugin
from avatarforcing.plugin.host import build_plugin_host
from avatarforcing.schemas.motion_space import MOTION_SPACE

MAGENTA = (255, 0, 255)
SIDE = 320  # frames smaller than the browser's viewport: drawn 1:1 at its top left


def puppet_frames(count: int, side: int = SIDE) -> list[np.ndarray]:
    """RGBA frames of the real puppet drawing (transparent around the figure), jaw moving."""
    frames = []
    for k in range(count):
        params = MOTION_SPACE.neutral()
        params[MOTION_SPACE.index(MOTION_SPACE.names[0])] = 0.3 * np.sin(k / 3)
        frames.append(draw_face(params, (side, side)))
    return frames


def decode(message: bytes) -> tuple[dict, np.ndarray]:
    """A wire message -> (header fields, RGBA image) with OpenCV's decoders."""
    magic, index, published_ms, width, height, colour_bytes = HEADER.unpack_from(message)
    assert magic == MAGIC
    body = np.frombuffer(message, np.uint8, offset=HEADER.size)
    colour = cv2.cvtColor(cv2.imdecode(body[:colour_bytes], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    alpha_data = body[colour_bytes:]
    alpha = (
        cv2.imdecode(alpha_data, cv2.IMREAD_UNCHANGED)[..., 3]
        if alpha_data.size
        else np.full(colour.shape[:2], 255, np.uint8)
    )
    fields = {"index": index, "published_ms": published_ms, "width": width, "height": height}
    return fields, np.dstack([colour, alpha])


class Feeder:
    """Publishes `frames` (cycling) to `server` at `fps` from a thread of its own, like the
    session's sink thread."""

    def __init__(self, server: OverlayServer, frames: list[np.ndarray], fps: float = 25.0) -> None:
        self.server, self.frames, self.period = server, frames, 1.0 / fps
        self.stop = threading.Event()
        self.index = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = time.monotonic()
        while not self.stop.is_set():
            self.server.publish(self.frames[self.index % len(self.frames)], self.index)
            self.index += 1
            tick += self.period
            self.stop.wait(max(0.0, tick - time.monotonic()))

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def page_stats(browser: HeadlessChromium) -> dict:
    return browser.driver.execute_script(
        "const s = window.avatarOverlay; return {connected: s.connected, connections: s.connections,"
        " drawn: s.drawn, errors: s.errors, width: s.width, height: s.height, now: Date.now(),"
        " drawLatencies: s.drawLatencies.slice(), receiveLatencies: s.receiveLatencies.slice()};"
    )


def wait_for(condition, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what}")


def open_page(browser: HeadlessChromium, url: str) -> None:
    """Load the page and paint the document's own background magenta: what the page leaves
    transparent shows that colour in the screenshot (OBS composites the same way)."""
    browser.driver.get(url)
    browser.driver.execute_script(f"document.documentElement.style.background = 'rgb{MAGENTA}';")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------- wire format
def test_message_carries_the_frame_colour_and_exact_alpha():
    image = puppet_frames(1, 256)[0]
    assert 0 < (image[..., 3] == 0).mean() < 1 and np.unique(image[..., 3]).size > 2  # soft edges too
    before = time.time() * 1000
    fields, decoded = decode(encode_frame(image, 7, before, quality=90))
    assert fields == {"index": 7, "published_ms": before, "width": 256, "height": 256}
    np.testing.assert_array_equal(decoded[..., 3], image[..., 3])  # alpha: lossless
    opaque = image[..., 3] == 255
    error = np.abs(decoded[..., :3].astype(int) - image[..., :3])[opaque]
    assert error.mean() < 3, error.mean()  # colour: JPEG q90, 4:4:4

    rgb = image[..., :3].copy()
    fields, decoded = decode(encode_frame(rgb, 8, before))
    assert (decoded[..., 3] == 255).all() and fields["index"] == 8
    with pytest.raises(ValueError, match="RGB/RGBA uint8"):
        encode_frame(image.astype(np.float32), 0, before)


# ----------------------------------------------------------------------------- the server
def test_clients_come_go_and_stall_without_holding_the_publisher_up():
    frames = [np.random.default_rng(k).integers(0, 256, (384, 384, 4), np.uint8) for k in range(4)]
    with OverlayServer(port=0) as server:
        url = f"ws://127.0.0.1:{server.port}{SOCKET_PATH}"
        server.publish(frames[0], 0)
        assert server.published == 0  # nobody watches: nothing encoded
        for _ in range(3):  # pages that come and go, one abruptly
            with connect(url) as client:
                wait_for(lambda: server.clients == 1, 5, "the client is counted")
                server.publish(frames[1], 1)
                fields, _ = decode(client.recv(timeout=5))
                assert fields["index"] == 1
        wait_for(lambda: server.clients == 0, 5, "closed clients are forgotten")

        with connect(url) as stalled:  # never reads while 120 large frames are published
            wait_for(lambda: server.clients == 1, 5, "the stalled client is counted")
            published = server.published
            for index in range(120):
                server.publish(frames[index % 4], index)
            assert server.published - published == 120
            indexes = []
            while not indexes or indexes[-1] != 119:
                fields, _ = decode(stalled.recv(timeout=10))
                indexes.append(fields["index"])
        # it gets the newest frame at the end, having skipped most: no backlog of 120
        assert indexes == sorted(indexes) and len(indexes) < 60, indexes


def test_busy_port_is_one_error_naming_the_option():
    host = build_plugin_host({}, load_entry_points=False, plugins=[overlay_plugin])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(overrides=["sinks.use=overlay", f"sinks.overlay.port={port}"])
        [(_spec, sink)] = host.create_sinks(config)
        with pytest.raises(ConfigError) as caught:
            sink.open(SessionInfo("s", config))
        [check] = overlay_plugin.doctor_checks(config)  # `avatarforcing doctor` says so too
        assert check.status == "fail" and "sinks.overlay.port" in check.fix
    message = str(caught.value)
    assert message.startswith("sinks.overlay.port: cannot listen on 127.0.0.1:") and "another port" in message
    assert "\n" not in message


def test_beyond_localhost_a_token_is_required_and_kept_out_of_logs(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host = build_plugin_host({}, load_entry_points=False, plugins=[overlay_plugin])
    config = load_config(overrides=["sinks.use=overlay", "sinks.overlay.host=0.0.0.0", "sinks.overlay.port=0"])
    session = SessionInfo("s", config, frame_size=(64, 64))
    caplog.set_level(logging.DEBUG, logger="avatarforcing")
    [(_spec, sink)] = host.create_sinks(config)
    sink.open(session)
    try:
        token_file = tmp_path / "cache" / "avatarforcing" / "overlay-token"
        token = token_file.read_text().strip()
        assert len(token) >= 16 and token_file.stat().st_mode & 0o077 == 0
        port = sink.server.port
        page = f"http://127.0.0.1:{port}/overlay"
        for bad in (page, page + "?token=wrong"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bad, timeout=5)
            assert refused.value.code == 403
            refused.value.close()
        with urllib.request.urlopen(f"{page}?token={token}", timeout=5) as response:
            html = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<canvas" in html and not any(link in html for link in ("src=", "href=", "url(", "@import"))
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{port}{SOCKET_PATH}", open_timeout=5)
        with connect(f"ws://127.0.0.1:{port}{SOCKET_PATH}?token={token}", open_timeout=5) as client:
            wait_for(lambda: sink.server.clients == 1, 5, "the client is counted")
            sink.write_frame(Frame(puppet_frames(1, 64)[0], 0, 0.0))
            assert decode(client.recv(timeout=5))[0]["width"] == 64
    finally:
        sink.close()
    printed = capsys.readouterr().err
    assert printed.count(token) == 1 and f"?token={token}" in printed  # the one URL line for the user
    assert token not in caplog.text and "token=***" in caplog.text
    assert token not in repr(sink.server) + str(session.plugin_state)

    # the same file next time (the page's URL survives restarts); a bad file is one clear error
    sink.open(session)
    sink.close()
    assert token_file.read_text().strip() == token
    token_file.write_text("short\n")
    with pytest.raises(ConfigError, match=r"^sinks\.overlay\.token_file: .*at least 8 characters"):
        sink.open(session)


# ----------------------------------------------------------------------------- the page in a browser
def test_page_is_transparent_where_the_avatar_is_and_keeps_the_frame_rate():
    still = puppet_frames(1)[0]
    with OverlayServer(port=0) as server, Feeder(server, [still]) as feeder, HeadlessChromium(800, 600) as browser:
        open_page(browser, server.page_url())
        wait_for(lambda: page_stats(browser)["drawn"] >= 10, 20, "the page draws frames")
        first = page_stats(browser)
        time.sleep(3.0)
        last = page_stats(browser)
        shot = browser.screenshot_rgb()
        published = feeder.index
    fps = (last["drawn"] - first["drawn"]) * 1000.0 / (last["now"] - first["now"])
    assert fps >= 20.0, f"{fps:.1f} fps drawn in the page (published {published} frames at 25 fps)"
    assert last["errors"] == 0 and (last["width"], last["height"]) == (SIDE, SIDE)
    assert 0 < np.median(last["drawLatencies"]) < 1000  # same clock: a positive, bounded delay

    drawn = shot[:SIDE, :SIDE].astype(int)
    expected = flatten_rgba(still, MAGENTA).astype(int)
    clear, opaque = still[..., 3] == 0, still[..., 3] == 255
    # the page's background shows where the avatar is transparent...
    assert np.abs(drawn[clear] - MAGENTA).max() <= 2
    # ...and the avatar where it is not (JPEG colour error only; no magenta left there)
    assert np.abs(drawn[opaque] - expected[opaque]).mean() < 4
    assert (np.abs(drawn[opaque] - MAGENTA).sum(axis=1) < 60).mean() < 0.001
    assert np.abs(drawn - expected).mean() < 3  # soft edges blend as the alpha says
    assert (np.abs(shot[:, SIDE + 10 :].astype(int) - MAGENTA) <= 2).all()  # nothing beside the canvas


def test_page_follows_a_real_session_and_recovers_when_it_restarts(tmp_path):
    """Two real `avatarforcing run` sessions one after the other on the same port: the page
    draws the first at the session's rate, shows nothing between them, and draws the second
    without being reloaded."""
    avatar_audio = SAMPLES / "avatar.wav"
    if not avatar_audio.is_file():
        pytest.skip(f"{avatar_audio} is absent: this test plays the sample conversation in ../shared")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("avatarforcing")),
        "run",
        "--preset",
        "demo",
        "--avatar-audio",
        str(avatar_audio),
        "--sink",
        "overlay",
        "--set",
        f"sinks.overlay.port={port}",
        "--set",
        "render.use=puppet",
        "--duration",
    ]

    def start(duration: float) -> subprocess.Popen:
        return subprocess.Popen([*command, str(duration)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    with HeadlessChromium(800, 600) as browser:
        first = start(6)
        try:
            url = f"http://127.0.0.1:{port}/overlay"

            def loaded() -> bool:
                assert first.poll() is None, first.stdout.read()
                try:
                    open_page(browser, url)
                except Exception:
                    return False
                return browser.driver.title == "avatarforcing overlay"

            wait_for(loaded, 90, "the first session serves the page", step=0.3)
            wait_for(lambda: page_stats(browser)["drawn"] >= 10, 30, "the page draws the first session")
            begin = page_stats(browser)
            time.sleep(3.0)
            end = page_stats(browser)
            assert first.wait(60) == 0, first.stdout.read()
        finally:
            first.kill()
        output = first.stdout.read()
        assert f"overlay: add a Browser source of 512x512 with the URL {url}" in output, output
        fps = (end["drawn"] - begin["drawn"]) * 1000.0 / (end["now"] - begin["now"])
        assert fps >= 20.0, f"{fps:.1f} fps drawn in the page during a real session"

        # no session: nothing on the page, and no error either
        wait_for(lambda: not page_stats(browser)["connected"], 10, "the page notices the session ended")
        blank = browser.screenshot_rgb()
        assert (np.abs(blank.astype(int) - MAGENTA) <= 2).all()
        assert browser.driver.title == "avatarforcing overlay"

        second = start(4)
        try:
            drawn_before = page_stats(browser)["drawn"]
            wait_for(
                lambda: page_stats(browser)["drawn"] >= drawn_before + 25, 90, "the page draws the restarted session"
            )
            stats = page_stats(browser)
            assert stats["connections"] == 2 and stats["errors"] == 0
            shot = browser.screenshot_rgb()
            avatar = np.abs(shot[:512, :512].astype(int) - MAGENTA).sum(axis=2) > 60
            assert 0.1 < avatar.mean() < 0.9  # the avatar is back, on a transparent page
            assert second.wait(60) == 0, second.stdout.read()
        finally:
            second.kill()
