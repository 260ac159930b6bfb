"""Built-in plugin ``overlay``: the avatar with true transparency in a web page.

Sink **``overlay``** serves ``http://HOST:PORT/overlay`` (`avatarforcing.integrations.overlay_server`):
a page with no external assets that draws each frame, alpha included, on a transparent canvas
— OBS's *Browser* source on Windows, macOS and Linux, or any browser. The page reconnects by
itself when the session restarts and shows nothing while none runs. Setup: docs/sinks.md.

Access token: none on a loopback address unless ``token_file`` names one; bound to any other
address, a token is required, read from ``token_file`` or, when that is empty, from
``<user cache dir>/avatarforcing/overlay-token``; a missing token file is created with a new
random token (mode 0600), so the URL stays the same from one session to the next. The URL
with the token is written once to stderr when the sink starts — the one place the token
appears; logs, ``plugin_state``, stats and printed configurations show ``token=***``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import sys
from pathlib import Path

from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import CheckResult, Frame, OptionSpec, SessionInfo, SinkSpec

log = logging.getLogger(__name__)

NAME = "overlay"
DEFAULT_PORT = 8091
TOKEN_FILE_NAME = "overlay-token"
TOKEN_BYTES = 18  # 24 URL-safe characters


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_token_file() -> Path:
    from avatarforcing.plugin.app.paths import user_cache_dir

    return user_cache_dir() / "avatarforcing" / TOKEN_FILE_NAME


def read_or_create_token(path: Path, option: str) -> str:
    """The token in `path` (surrounding whitespace ignored); a missing file is created with a
    new random token, readable by its owner only. Raises `ConfigError` naming `option` when
    the file cannot be read or written, or holds no usable token."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(token + "\n")
        except OSError as error:
            raise ConfigError(option, f"cannot create the token file {path}: {error.strerror or error}") from None
        log.info("overlay: new access token written to %s", path)
        return token
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(option, f"cannot read the token file {path}: {reason}") from None
    if len(text) < 8 or any(c.isspace() for c in text):
        raise ConfigError(
            option, f"{path} must hold one token of at least 8 characters without spaces (delete it to get a new one)"
        )
    return text


class OverlaySink:
    """Frames -> ``http://HOST:PORT/overlay`` (a transparent page; see the module docs)."""

    def __init__(self, host: str, port: int, token_file: str, quality: int) -> None:
        self.host, self.port, self.token_file, self.quality = host, port, token_file, quality
        self.server = None

    def _token(self) -> str:
        if self.token_file:
            return read_or_create_token(Path(self.token_file).expanduser(), f"sinks.{NAME}.token_file")
        if is_loopback(self.host):
            return ""
        return read_or_create_token(default_token_file(), f"sinks.{NAME}.token_file")

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.overlay_server import OverlayServer, OverlayServerError

        token = self._token()
        try:
            self.server = OverlayServer(self.host, self.port, token=token, quality=self.quality).start()
        except OverlayServerError as error:
            cause = error.__cause__
            in_use = isinstance(cause, OSError) and cause.errno in (errno.EADDRINUSE, errno.EACCES)
            if in_use or not isinstance(cause, OSError):
                raise ConfigError(
                    f"sinks.{NAME}.port",
                    f"{error}; choose another port (--set sinks.{NAME}.port=N, 0 = any free port) "
                    "or stop the program using it",
                ) from None
            raise ConfigError(
                f"sinks.{NAME}.host", f"{error}; use an address of this machine (127.0.0.1, 0.0.0.0)"
            ) from None
        masked = self.server.page_url(with_token=False)
        height, width = session.frame_size
        session.plugin_state[NAME] = {"url": masked, "port": self.server.port}
        log.info("overlay: page at %s (a browser source of %dx%d)", masked, width, height)
        # the one line that shows the token, for the user: straight to stderr, never to logging
        print(
            f"overlay: add a Browser source of {width}x{height} with the URL {self.server.page_url()}"
            + (" (it holds the access token: keep it private)" if token else ""),
            file=sys.stderr,
            flush=True,
        )

    def write_frame(self, frame: Frame) -> None:
        self.server.publish(frame.image, frame.index)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


OVERLAY = SinkSpec(
    NAME,
    "a transparent web page (OBS Browser source, any browser): the avatar with its alpha, over a WebSocket",
    OverlaySink,
    options=(
        OptionSpec(
            "host",
            str,
            "127.0.0.1",
            "address to serve on (127.0.0.1: this machine only; 0.0.0.0: the network, with a token)",
        ),
        OptionSpec("port", int, DEFAULT_PORT, "TCP port of the page (0 = any free port)", minimum=0, maximum=65535),
        OptionSpec(
            "token_file",
            str,
            "",
            "file holding the access token, created when missing ('' = none on 127.0.0.1, "
            f"else <user cache dir>/avatarforcing/{TOKEN_FILE_NAME})",
        ),
        OptionSpec("quality", int, 90, "JPEG quality of the colour (the alpha is lossless)", minimum=1, maximum=100),
    ),
)


@hookimpl
def register_sinks() -> list[SinkSpec]:
    return [OVERLAY]


@hookimpl
def doctor_checks(config) -> list[CheckResult]:
    """When ``overlay`` is in ``sinks.use``: is its port free?"""
    if NAME not in config.sinks.use:
        return []
    from avatarforcing.plugin.builtins.sinks.diagnostics import _check_port_free

    options = config.sinks.options_for(NAME)
    return [_check_port_free(NAME, str(options.get("host", "127.0.0.1")), int(options.get("port", DEFAULT_PORT)))]
