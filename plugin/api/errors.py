"""Errors that the CLI reports as one line (no traceback).

`ConfigError` names the option at fault; `PluginError` names the plugin or the named
source/renderer/sink at fault; `CommandError` is any other expected failure of a command.
"""

from __future__ import annotations


class AvatarForcingError(Exception):
    """Base of the errors the CLI prints as a single line; `exit_code` is the process status."""

    exit_code = 1


class ConfigError(AvatarForcingError, ValueError):
    """A bad configuration value or an unknown option.

    `option` is the dotted option name (e.g. ``"model.nfe"``) or ``""`` when the error concerns
    a whole file. The message always starts with that name.
    """

    exit_code = 2

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.reason = message
        super().__init__(f"{option}: {message}" if option else message)


class PluginError(AvatarForcingError):
    """A plugin misbehaved, or a named source/renderer/sink/command cannot be resolved."""


class CommandError(AvatarForcingError):
    """An expected failure of a CLI command (missing file, unavailable feature...)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
