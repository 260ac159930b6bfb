"""Built-in CLI subcommands: one module per command, discovered automatically.

A module here that defines ``COMMAND`` (a `CommandSpec`) or ``COMMANDS`` (a list of them)
becomes ``avatarforcing NAME``; modules whose name starts with ``_`` are helpers. See the
docstring of `avatarforcing.plugin.app.cli` for the contract.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.host import PluginHost


def _specs_of(module) -> list[CommandSpec]:
    specs = list(getattr(module, "COMMANDS", ()))
    if getattr(module, "COMMAND", None) is not None:
        specs.append(module.COMMAND)
    for spec in specs:
        if not isinstance(spec, CommandSpec):
            raise TypeError(f"{module.__name__}: {spec!r} is not a CommandSpec")
    return specs


def builtin_commands() -> tuple[list[CommandSpec], dict[str, str]]:
    """``(commands sorted by name, {module: error})`` for the modules of this package; a
    module that fails to import is reported instead of breaking the whole CLI."""
    specs: list[CommandSpec] = []
    errors: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        name = f"{__name__}.{info.name}"
        try:
            specs.extend(_specs_of(importlib.import_module(name)))
        except Exception as error:  # one broken command must not break the others
            errors[name] = f"{type(error).__name__}: {error}"
    return sorted(specs, key=lambda s: s.name), errors


def plugin_commands(host: PluginHost, reserved: Iterable[str]) -> tuple[list[CommandSpec], list[str]]:
    """Commands from the ``register_commands`` hook: ``(accepted, refusal messages)``. A name
    already taken (by a built-in or an earlier plugin) is refused."""
    taken = set(reserved)
    accepted: list[CommandSpec] = []
    refused: list[str] = []
    for entry in host.provided("commands"):
        if entry.spec.name in taken:
            refused.append(f"plugin {entry.plugin!r}: command {entry.spec.name!r} is already taken; ignored")
            continue
        taken.add(entry.spec.name)
        accepted.append(entry.spec)
    return accepted, refused
