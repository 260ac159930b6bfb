"""Fire the session hooks: what a session (live or offline render) calls, in order.

events = SessionEvents(host.pm)
events.started(session)
for block in blocks:
    events.block(session, block)
    for frame in renderer.render(block):
        frame = events.frame(session, frame)   # filters, then frame_rendered
        ...send to sinks...
events.stopped(session, stats)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pluggy

from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.types import Frame, MotionBlock, SessionInfo
from avatarforcing.plugin.host import callers_per_plugin

log = logging.getLogger(__name__)


class SessionEvents:
    """Calls the lifecycle hooks of `pm` with the documented guarantees."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def started(self, session: SessionInfo) -> None:
        """``session_started``; exceptions propagate (the session does not start)."""
        self.pm.hook.session_started(session=session)

    def block(self, session: SessionInfo, block: MotionBlock) -> None:
        """``block_generated``."""
        self.pm.hook.block_generated(session=session, block=block)

    def frame(self, session: SessionInfo, frame: Frame) -> Frame:
        """``filter_frame`` then ``frame_rendered``; returns `frame` (modified in place).

        Raises `PluginError` if a filter left ``frame.image`` with another height/width, a
        dtype other than uint8, or a channel count other than 3 or 4.
        """
        shape = frame.image.shape
        self.pm.hook.filter_frame(session=session, frame=frame)
        image = frame.image
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[:2] != shape[:2]
            or image.shape[2] not in (3, 4)
        ):
            got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            raise PluginError(
                f"a filter_frame hook left frame {frame.index} as {got}; expected uint8 {shape[0]}x{shape[1]}x3 or x4"
            )
        self.pm.hook.frame_rendered(session=session, frame=frame)
        return frame

    def stopped(self, session: SessionInfo, stats: dict[str, Any]) -> list[str]:
        """``session_stopped`` for every plugin, even if some raise; returns the errors as
        ``"plugin: message"`` lines (also logged)."""
        errors = []
        for name, caller in callers_per_plugin(self.pm, "session_stopped"):
            try:
                caller(session=session, stats=stats)
            except Exception as error:  # every plugin must see the stop
                line = f"{name}: {type(error).__name__}: {error}"
                log.error("session_stopped failed in plugin %s", line)
                errors.append(line)
        return errors
