"""Per-user locations: the weights cache and where the official checkpoint files are looked up.

The weights directory is, in order: ``[model] checkpoint_dir`` when set, else
``$AVATARFORCING_WEIGHTS`` when set, else ``<user cache dir>/avatarforcing/weights`` where the
user cache dir is ``$XDG_CACHE_HOME`` or ``~/.cache`` (Linux and others), ``~/Library/Caches``
(macOS), ``%LOCALAPPDATA%`` (Windows).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_ENV = "AVATARFORCING_WEIGHTS"
FLOW_TRANSFORMER_FILE = "flow_transformer.pth"
MOTION_AUTOENCODER_FILE = "motion_autoencoder.pth"
WAV2VEC2_DIR = "wav2vec2-base-960h"


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The platform's per-user cache directory (not created)."""
    env = os.environ if environ is None else environ
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"])
    return Path.home() / ".cache"


def default_weights_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$AVATARFORCING_WEIGHTS`` if set, else ``<user cache dir>/avatarforcing/weights``."""
    env = os.environ if environ is None else environ
    if env.get(WEIGHTS_ENV):
        return Path(env[WEIGHTS_ENV]).expanduser()
    return user_cache_dir(env) / "avatarforcing" / "weights"


@dataclass(frozen=True)
class WeightPaths:
    """Where each official weight is expected (files may not exist)."""

    directory: Path
    flow_transformer: Path
    motion_autoencoder: Path
    wav2vec2: Path

    def items(self) -> list[tuple[str, Path]]:
        return [
            ("flow_transformer", self.flow_transformer),
            ("motion_autoencoder", self.motion_autoencoder),
            ("wav2vec2", self.wav2vec2),
        ]


def weight_paths(model_settings=None, environ: Mapping[str, str] | None = None) -> WeightPaths:
    """Resolve the official weight locations from ``[model]`` settings (a `ModelSettings`, or
    ``None`` for defaults): explicit per-file paths win over the weights directory."""
    checkpoint_dir = getattr(model_settings, "checkpoint_dir", "") or ""
    directory = Path(checkpoint_dir).expanduser() if checkpoint_dir else default_weights_dir(environ)

    def pick(explicit: str, default_name: str) -> Path:
        return Path(explicit).expanduser() if explicit else directory / default_name

    return WeightPaths(
        directory=directory,
        flow_transformer=pick(getattr(model_settings, "flow_transformer", ""), FLOW_TRANSFORMER_FILE),
        motion_autoencoder=pick(getattr(model_settings, "motion_autoencoder", ""), MOTION_AUTOENCODER_FILE),
        wav2vec2=pick(getattr(model_settings, "wav2vec2", ""), WAV2VEC2_DIR),
    )
