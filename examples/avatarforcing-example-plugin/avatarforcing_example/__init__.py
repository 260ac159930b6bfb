"""Example avatarforcing plugin (entry point ``example`` in group ``avatarforcing``).

Every hook here is a plain function marked with ``@hookimpl``; it takes only the parameters it
uses. Per-session state lives in ``session.plugin_state["example"]``, not in module globals, so
several sessions in one process don't mix.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from avatarforcing.plugin import (
    CheckResult,
    OptionSpec,
    SinkSpec,
    hookimpl,
    resolve_options,
)

PLUGIN = "example"
log = logging.getLogger(__name__)

# [plugins.example] settings, each with a default.
SETTINGS = (
    OptionSpec("overlay", bool, False, "draw a one-second heartbeat bar on every frame"),
    OptionSpec("bar_height", int, 6, "height of the bar in pixels", minimum=1, maximum=64),
)


def settings_of(config) -> dict:
    """The validated ``[plugins.example]`` settings of an `AppConfig`."""
    return resolve_options(f"plugins.{PLUGIN}", SETTINGS, config.plugins.get(PLUGIN, {}))


# -- a PNG writer with no dependency beyond zlib -----------------------------------------------
def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` RGB ``(h, w, 3)`` or RGBA ``(h, w, 4)`` image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected uint8 (h, w, 3|4), got {image.dtype} {image.shape}")
    height, width, channels = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    color_type = 2 if channels == 3 else 6
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


class PngDirSink:
    """Writes ``{prefix}_{index:06d}.png`` for every `every`-th frame into `dir`."""

    def __init__(self, dir: str, every: int, prefix: str) -> None:
        self.directory = Path(dir).expanduser()
        self.every = every
        self.prefix = prefix
        self.written = 0

    def open(self, session) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def write_frame(self, frame) -> None:
        if frame.index % self.every:
            return
        path = self.directory / f"{self.prefix}_{frame.index:06d}.png"
        path.write_bytes(encode_png(frame.image))
        self.written += 1

    def close(self) -> None:
        log.info("png-dir: wrote %d frames to %s", self.written, self.directory)


PNG_DIR = SinkSpec(
    name="png-dir",
    description="write frames as numbered PNG files into a directory",
    factory=PngDirSink,
    options=(
        OptionSpec("dir", str, "frames", "output directory (created if missing)"),
        OptionSpec("every", int, 1, "keep one frame in this many", minimum=1),
        OptionSpec("prefix", str, "frame", "file name prefix"),
    ),
)


# -- hooks -------------------------------------------------------------------------------------
@hookimpl
def register_sinks():
    return [PNG_DIR]


@hookimpl
def configure(config):
    settings_of(config)  # raises ConfigError naming plugins.example.KEY on a bad value


@hookimpl
def doctor_checks(config):
    if "png-dir" not in config.sinks.use:
        return []
    target = Path(str(config.sinks.options_for("png-dir").get("dir", "frames"))).expanduser()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK):
        return [CheckResult("png-dir sink", "ok", f"{target} is writable")]
    return [
        CheckResult(
            "png-dir sink",
            "fail",
            f"cannot write into {target}",
            "choose another directory with --set sinks.png-dir.dir=PATH",
        )
    ]


@hookimpl
def session_started(session):
    session.plugin_state[PLUGIN] = {
        "settings": settings_of(session.config),
        "blocks": 0,
        "frames": 0,
        "last_timestamp": None,
        "max_gap": 0.0,
    }


@hookimpl
def block_generated(session, block):
    session.plugin_state[PLUGIN]["blocks"] += 1


@hookimpl
def filter_frame(session, frame):
    settings = session.plugin_state[PLUGIN]["settings"]
    if not settings["overlay"]:
        return
    height, width = frame.image.shape[:2]
    bar = min(settings["bar_height"], height)
    phase = (frame.index % session.fps + 1) / session.fps  # fills once per second
    filled = max(1, int(round(phase * width)))
    frame.image[height - bar :, :filled, :3] = (255, 200, 0)
    frame.metadata["example.heartbeat"] = round(phase, 4)


@hookimpl
def frame_rendered(session, frame):
    state = session.plugin_state[PLUGIN]
    state["frames"] += 1
    if state["last_timestamp"] is not None:
        state["max_gap"] = max(state["max_gap"], frame.timestamp - state["last_timestamp"])
    state["last_timestamp"] = frame.timestamp


@hookimpl
def session_stopped(session, stats):
    state = session.plugin_state.get(PLUGIN)
    if state is None:  # the session failed before it started
        return
    log.info(
        "example telemetry: %d blocks, %d frames, largest frame gap %.3f s (session: %s)",
        state["blocks"],
        state["frames"],
        state["max_gap"],
        stats.get("error") or "ok",
    )
