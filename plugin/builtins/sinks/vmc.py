"""Built-in plugin ``vmc``: the VMC (OSC) sink of the default avatar.

Sink **``vmc``**: sends each frame's ``metadata["motion"]`` (the motion-space parameters that the
``puppet`` renderer attaches, ``{name: value}``) as one VMC-protocol bundle over UDP
(`avatarforcing.integrations.vmc`), to VSeeFace, Warudo, VNyan... Never blocks.
"""

from __future__ import annotations

import logging
from typing import Any

from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import Frame, OptionSpec, SessionInfo, SinkSpec

log = logging.getLogger(__name__)


class VmcSink:
    """`Sink` sending ``frame.metadata["motion"]`` as VMC bundles; frames closer than
    ``1 / rate`` seconds to the last sent one are skipped (``rate = 0``: send every frame)."""

    def __init__(self, host: str, port: int, rate: float, arkit: bool) -> None:
        self.host, self.port, self.rate, self.arkit = host, port, rate, arkit
        self._sender: Any = None
        self._last_sent: float | None = None
        self.skipped_without_motion = 0

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.vmc import VmcSender

        try:
            self._sender = VmcSender(self.host, self.port, arkit=self.arkit)
        except ValueError as exc:
            raise PluginError(f"sink 'vmc': {exc}; set sinks.vmc.host") from exc

    @property
    def sender(self) -> Any:
        """The `VmcSender` (``sent``/``dropped`` counters), after `open`."""
        return self._sender

    def write_frame(self, frame: Frame) -> None:
        if self._sender is None:
            raise PluginError("sink 'vmc': write_frame() before open()")
        motion = frame.metadata.get("motion")
        if not isinstance(motion, dict):
            if self.skipped_without_motion == 0:
                log.warning("sink 'vmc': frames carry no metadata['motion']; use the 'puppet' renderer")
            self.skipped_without_motion += 1
            return
        if self.rate > 0 and self._last_sent is not None and frame.timestamp - self._last_sent < 1.0 / self.rate - 1e-6:
            return
        self._sender.send(motion, frame.timestamp)
        self._last_sent = frame.timestamp

    def write_audio(self, chunk) -> None:  # pragma: no cover - accepts_audio is False
        pass

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


VMC = SinkSpec(
    name="vmc",
    description="VMC protocol over OSC/UDP: head pose and blendshapes for VSeeFace, Warudo, VNyan...",
    factory=VmcSink,
    options=(
        OptionSpec("host", str, "127.0.0.1", "receiver's host name or IP address"),
        OptionSpec("port", int, 39539, "receiver's UDP port", minimum=1, maximum=65535),
        OptionSpec("rate", float, 0.0, "most bundles per second; 0 = one per frame", minimum=0.0, maximum=1000.0),
        OptionSpec("arkit", bool, True, "also send ARKit blendshape names (jawOpen, eyeBlinkLeft...)"),
    ),
)


@hookimpl
def register_sinks() -> list[SinkSpec]:
    return [VMC]
