"""VMC protocol (OSC over UDP) output: drive VTuber apps (VSeeFace, Warudo, VNyan...) with
default-motion-space parameters.

One call to `VmcSender.send(params, time)` sends one OSC bundle, in this order:

- ``/VMC/Ext/OK 1`` (model loaded) and ``/VMC/Ext/T time`` (seconds);
- ``/VMC/Ext/Root/Pos "root" px py pz qx qy qz qw``: the head's shift as a root translation
  (1 face width = `face_width_m` metres, 0.15 by default), no rotation;
- ``/VMC/Ext/Bone/Pos "Neck" ...`` and ``"Head" ...``: the head rotation split 40 % / 60 %
  between the two bones, as Unity quaternions (see `head_rotation`), with typical humanoid
  local positions;
- ``/VMC/Ext/Blend/Val NAME value`` for each blendshape of `blendshapes` (VRM 0.x presets, and
  ARKit names unless `arkit=False`), then ``/VMC/Ext/Blend/Apply``.

Coordinates follow Unity (left-handed, y up) with the avatar facing +z, towards the viewer:
yaw + (the avatar turns to its left) is a rotation of -yaw about y, pitch + (chin down) is
+pitch about x, roll + (top of the head towards the avatar's left shoulder) is +roll about z;
Unity's Euler order (z, then x, then y) combines them.

The socket is non-blocking: a full send buffer or an unreachable receiver drops the bundle and
is counted in `VmcSender.dropped`, never raised or waited on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from avatarforcing.schemas.motion_space import MOTION_SPACE

DEFAULT_PORT = 39539  # the VMC protocol's usual receiver port (VSeeFace, Warudo, VNyan)
NECK_SHARE = 0.4
BONE_POSITIONS = {"Neck": (0.0, 0.1, 0.0), "Head": (0.0, 0.08, 0.0)}  # local offsets, metres
Quaternion = tuple[float, float, float, float]


def _axis_quaternion(axis: int, degrees: float) -> np.ndarray:
    half = math.radians(degrees) / 2.0
    q = np.zeros(4)
    q[axis] = math.sin(half)
    q[3] = math.cos(half)
    return q


def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def head_rotation(yaw: float, pitch: float, roll: float) -> Quaternion:
    """Motion-space angles (degrees) -> Unity quaternion ``(x, y, z, w)`` (see module docs):
    ``q = q_y(-yaw) * q_x(pitch) * q_z(roll)``."""
    q = _multiply(_multiply(_axis_quaternion(1, -yaw), _axis_quaternion(0, pitch)), _axis_quaternion(2, roll))
    return tuple(float(v) for v in q)  # type: ignore[return-value]


def blendshapes(params: np.ndarray, arkit: bool = True) -> dict[str, float]:
    """Blendshape values in [0, 1] for one denormalized vector ``[P]``.

    VRM 0.x presets: ``A = jaw (1 - pucker) (1 - smile / 2)``, ``E = jaw smile / 2``,
    ``I = smile (1 - jaw) / 2``, ``O = jaw pucker``, ``U = pucker (1 - jaw)``,
    ``Blink_L``/``Blink_R`` = the blinks, ``Joy`` = smile, ``Angry`` = frown (-brow_raise),
    ``LookLeft``/``LookRight``/``LookUp``/``LookDown`` from gaze (the avatar's left is the image
    right). ARKit names: ``jawOpen``, ``mouthSmileLeft/Right``, ``mouthPucker``,
    ``eyeBlinkLeft/Right``, ``browInnerUp``, ``browOuterUpLeft/Right`` (raise),
    ``browDownLeft/Right`` (frown).
    """
    p = MOTION_SPACE.to_dict(MOTION_SPACE.clip(params))
    jaw, smile, pucker = p["jaw_open"], p["smile"], p["pucker"]
    raise_, frown = max(0.0, p["brow_raise"]), max(0.0, -p["brow_raise"])
    gx, gy = p["gaze_x"], p["gaze_y"]
    values = {
        "A": jaw * (1.0 - pucker) * (1.0 - 0.5 * smile),
        "I": 0.5 * smile * (1.0 - jaw),
        "U": pucker * (1.0 - jaw),
        "E": 0.5 * jaw * smile,
        "O": jaw * pucker,
        "Blink_L": p["blink_left"],
        "Blink_R": p["blink_right"],
        "Joy": smile,
        "Angry": frown,
        "LookLeft": max(0.0, gx),
        "LookRight": max(0.0, -gx),
        "LookUp": max(0.0, -gy),
        "LookDown": max(0.0, gy),
    }
    if arkit:
        values.update(
            {
                "jawOpen": jaw,
                "mouthSmileLeft": smile,
                "mouthSmileRight": smile,
                "mouthPucker": pucker,
                "eyeBlinkLeft": p["blink_left"],
                "eyeBlinkRight": p["blink_right"],
                "browInnerUp": raise_,
                "browOuterUpLeft": raise_,
                "browOuterUpRight": raise_,
                "browDownLeft": frown,
                "browDownRight": frown,
            }
        )
    return {name: float(np.clip(v, 0.0, 1.0)) for name, v in values.items()}


def _message(address: str, *args) -> object:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build()


def build_bundle(params: np.ndarray, time: float, *, arkit: bool = True, face_width_m: float = 0.15):
    """The OSC bundle (``pythonosc.osc_bundle.OscBundle``) for one denormalized vector ``[P]``
    at `time` seconds."""
    p = MOTION_SPACE.to_dict(MOTION_SPACE.clip(params))
    bundle = OscBundleBuilder(IMMEDIATELY)
    bundle.add_content(_message("/VMC/Ext/OK", 1))
    bundle.add_content(_message("/VMC/Ext/T", float(time)))
    root = (-p["shift_x"] * face_width_m, -p["shift_y"] * face_width_m, 0.0)
    bundle.add_content(_message("/VMC/Ext/Root/Pos", "root", *root, 0.0, 0.0, 0.0, 1.0))
    for bone, share in (("Neck", NECK_SHARE), ("Head", 1.0 - NECK_SHARE)):
        q = head_rotation(p["yaw"] * share, p["pitch"] * share, p["roll"] * share)
        bundle.add_content(_message("/VMC/Ext/Bone/Pos", bone, *BONE_POSITIONS[bone], *q))
    for name, value in blendshapes(params, arkit).items():
        bundle.add_content(_message("/VMC/Ext/Blend/Val", name, value))
    bundle.add_content(_message("/VMC/Ext/Blend/Apply"))
    return bundle.build()


class VmcSender:
    """Sends VMC bundles to ``host:port`` over UDP without ever blocking (python-osc's
    `SimpleUDPClient` socket is non-blocking).

    `arkit`: also send ARKit blendshape names; `face_width_m`: metres per face width for the
    root translation. `sent`/`dropped` count bundles.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, arkit: bool = True, face_width_m: float = 0.15
    ) -> None:
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"VMC port must be in 1..65535, got {port}")
        try:
            self._client = SimpleUDPClient(host, int(port))
        except (OSError, ValueError) as exc:
            raise ValueError(f"VMC host {host!r} cannot be resolved ({exc})") from exc
        self.host, self.port = host, int(port)
        self.arkit = arkit
        self.face_width_m = face_width_m
        self.sent = 0
        self.dropped = 0

    def send(self, params: np.ndarray | Mapping[str, float], time: float) -> bool:
        """Send one frame (a denormalized vector ``[P]`` or ``{name: value}``); ``False`` when
        it was dropped."""
        vector = MOTION_SPACE.from_dict(params) if isinstance(params, Mapping) else np.asarray(params, np.float32)
        bundle = build_bundle(vector, time, arkit=self.arkit, face_width_m=self.face_width_m)
        try:
            self._client.send(bundle)
        except (BlockingIOError, InterruptedError, ConnectionError, OSError):
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._client.close()


__all__ = ["DEFAULT_PORT", "VmcSender", "blendshapes", "build_bundle", "head_rotation"]
