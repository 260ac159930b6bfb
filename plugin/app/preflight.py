"""Checks a command runs before any model loads, so that every bad input gets one clear line
(exit status 2, usage) instead of a failure minutes later or a live session that retries
forever: the files a session reads, the portrait, the files it writes.

Each check raises `CommandError` (exit 2) or `ConfigError` naming the flag or option and the
file; see docs/troubleshooting.md for what each message means.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avatarforcing.plugin.api.errors import CommandError, ConfigError
from avatarforcing.plugin.api.options import resolve_options
from avatarforcing.plugin.api.types import SOURCE_KINDS


def check_output(flag: str, path: str | Path, *, suffix: str = "", overwrite: bool = False) -> Path:
    """`path` (user-expanded) as an output file, checked before any work: not a directory,
    ending in `suffix` (when given, case-insensitive), in a folder that exists and that this
    process can create files in, and not an existing file unless `overwrite` (a previous
    recording is the user's data). Raises `CommandError` (exit 2) naming `flag` and the path."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise CommandError(f"{flag}: {out} is a directory", exit_code=2)
    if suffix and out.suffix.lower() != suffix:
        raise CommandError(f"{flag}: {out} must end in {suffix}", exit_code=2)
    folder = out.parent
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"{flag}: {folder} is not a folder", exit_code=2)
    if not folder.is_dir():
        raise CommandError(f"{flag}: folder does not exist: {folder}", exit_code=2)
    problem = _not_writable(folder)
    if problem:
        raise CommandError(f"{flag}: folder is not writable: {folder} ({problem})", exit_code=2)
    if out.exists() and not overwrite:
        raise CommandError(f"{flag}: {out} already exists; give --overwrite to replace it", exit_code=2)
    return out


def _not_writable(folder: Path) -> str | None:
    """Why no file can be created in `folder` (None when one can). A real file is created and
    removed: `os.access` answers yes for root even on an immutable folder or a read-only
    mount."""
    try:
        handle, name = tempfile.mkstemp(prefix=".avatarforcing-check-", dir=folder)
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.unlink(name)
    return None


def check_portrait(flag: str, path: str) -> None:
    """`path` is an image file OpenCV can decode; else `CommandError` (exit 2) naming `flag`
    and the file."""
    from avatarforcing.integrations.face_crop import load_image_rgb

    image = Path(path).expanduser()
    if not image.is_file():
        raise CommandError(f"{flag}: file not found: {image}", exit_code=2)
    try:
        load_image_rgb(image)
    except (ValueError, OSError) as error:
        raise CommandError(f"{flag}: {error}", exit_code=2) from None


def check_sources(host: Any, config: Any, flags: Mapping[str, str] | None = None) -> None:
    """Resolve the options of every configured source without opening it: an unknown source,
    a bad option or a file source whose file is missing, unreadable or without the stream its
    kind needs (the file sources' ``path`` checks open the file) fails here. `flags` maps a
    source kind to the command-line flag that set its file (``{"user_audio": "--user-audio"}``):
    the message then names the flag instead of the option. Raises `ConfigError`/`CommandError`
    (exit 2) or `PluginError` (unknown name)."""
    flags = flags or {}
    for kind in SOURCE_KINDS:
        slot = config.sources.slot(kind)
        if not slot.use:
            continue
        spec = host.lookup(kind, slot.use).spec
        try:
            resolve_options(f"sources.{kind}", spec.options, slot.options)
        except ConfigError as error:
            if kind in flags and error.option == f"sources.{kind}.path":
                raise CommandError(f"{flags[kind]}: {error.reason}", exit_code=2) from None
            raise


def check_sinks(host: Any, config: Any) -> None:
    """Resolve the options of every sink in ``sinks.use`` without opening it (a bad option
    fails here, with its name). Raises `ConfigError` or `PluginError`."""
    for name in config.sinks.use:
        spec = host.lookup("sinks", name).spec
        resolve_options(f"sinks.{name}", spec.options, config.sinks.options_for(name))
