"""VMC protocol output, received by a real python-osc UDP server."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer

from avatarforcing.integrations.vmc import VmcSender, blendshapes, head_rotation
from avatarforcing.schemas.motion_space import MOTION_SPACE


class Receiver:
    """A real OSC server on a free localhost port recording every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple]] = []
        self.lock = threading.Lock()
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._record)
        self.server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _record(self, address, *args) -> None:
        with self.lock:
            self.messages.append((address, args))

    def wait_for(self, address: str, count: int, timeout: float = 10.0) -> list[tuple]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [args for a, args in self.messages if a == address]
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"received {len(found)} {address} messages, expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def _rotate(q, v):
    x, y, z, w = q
    u = np.array([x, y, z])
    v = np.asarray(v, float)
    return v + 2 * w * np.cross(u, v) + 2 * np.cross(u, np.cross(u, v))


def test_head_rotation_follows_unity_conventions():
    forward, up = (0, 0, 1), (0, 1, 0)  # the avatar faces +z
    assert _rotate(head_rotation(30, 0, 0), forward)[0] < -0.45  # turns to its left (-x)
    assert _rotate(head_rotation(0, 20, 0), forward)[1] < -0.3  # chin down: looks down (-y)
    assert _rotate(head_rotation(0, 0, 20), up)[0] < -0.3  # top of the head to its left (-x)
    q = head_rotation(12, -7, 5)
    assert math.isclose(sum(c * c for c in q), 1.0, rel_tol=1e-9)
    assert head_rotation(0, 0, 0) == (0.0, 0.0, 0.0, 1.0)


def test_blendshape_mapping():
    shapes = blendshapes(MOTION_SPACE.from_dict({"jaw_open": 1.0, "blink_left": 1.0, "smile": 0.4, "brow_raise": -0.5}))
    assert shapes["A"] == pytest.approx(0.8) and shapes["O"] == 0.0 and shapes["U"] == 0.0
    assert shapes["Blink_L"] == 1.0 and shapes["Blink_R"] == 0.0 and shapes["Joy"] == pytest.approx(0.4)
    assert shapes["Angry"] == 0.5 and shapes["browDownLeft"] == 0.5 and shapes["jawOpen"] == 1.0
    pucker = blendshapes(MOTION_SPACE.from_dict({"pucker": 1.0, "gaze_x": 0.5}), arkit=False)
    assert pucker["U"] == 1.0 and pucker["LookLeft"] == 0.5 and pucker["LookRight"] == 0.0
    assert "jawOpen" not in pucker and all(0.0 <= v <= 1.0 for v in pucker.values())


def test_sender_delivers_bones_and_blendshapes_to_a_real_osc_server(receiver):
    params = MOTION_SPACE.from_dict(
        {"yaw": 20.0, "pitch": -10.0, "roll": 5.0, "shift_x": 0.1, "jaw_open": 0.6, "blink_right": 1.0, "smile": 0.5}
    )
    sender = VmcSender("127.0.0.1", receiver.port)
    assert sender.send(params, 1.25) and sender.send(MOTION_SPACE.to_dict(params), 1.29)
    sender.close()
    bones = receiver.wait_for("/VMC/Ext/Bone/Pos", 4)
    head = next(args for args in bones if args[0] == "Head")
    neck = next(args for args in bones if args[0] == "Neck")
    np.testing.assert_allclose(head[4:], head_rotation(12.0, -6.0, 3.0), atol=1e-6)  # 60 % at the head
    np.testing.assert_allclose(neck[4:], head_rotation(8.0, -4.0, 2.0), atol=1e-6)  # 40 % at the neck
    root = receiver.wait_for("/VMC/Ext/Root/Pos", 1)[0]
    assert root[0] == "root" and root[1] == pytest.approx(-0.015)
    values = {args[0]: args[1] for args in receiver.wait_for("/VMC/Ext/Blend/Val", 2 * 24)}
    assert values["Blink_R"] == 1.0 and values["Blink_L"] == 0.0
    assert values["A"] == pytest.approx(0.6 * 0.75, abs=1e-6) and values["Joy"] == pytest.approx(0.5)
    assert values["jawOpen"] == pytest.approx(0.6, abs=1e-6)
    assert len(receiver.wait_for("/VMC/Ext/Blend/Apply", 2)) == 2
    assert receiver.wait_for("/VMC/Ext/OK", 1)[0] == (1,)
    times = [args[0] for args in receiver.wait_for("/VMC/Ext/T", 2)]
    assert sorted(times) == pytest.approx([1.25, 1.29])


def test_sender_never_blocks_without_a_receiver_and_rejects_bad_settings():
    sender = VmcSender("127.0.0.1", 9)  # nothing listens on the discard port
    start = time.perf_counter()
    for k in range(200):
        sender.send(MOTION_SPACE.neutral(), k / 25)
    assert time.perf_counter() - start < 5.0
    assert sender.sent + sender.dropped == 200
    sender.close()
    with pytest.raises(ValueError, match="port must be in 1..65535"):
        VmcSender("127.0.0.1", 70000)
    with pytest.raises(ValueError, match="cannot be resolved"):
        VmcSender("no-such-host.invalid", 39539)
