"""Typed option values: conversion from TOML values or ``--set`` strings, with one clear error.

`coerce(option, value, type_, ...)` is shared by the application config (`config.py`) and the
options that sources, renderers and sinks declare (`types.OptionSpec`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.api.types import OptionSpec

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def type_label(type_: type, choices: Sequence[Any] = (), minimum=None, maximum=None) -> str:
    """Human description of what an option expects, e.g. ``"an integer in [1, 1000]"``."""
    if choices:
        return "one of " + ", ".join(repr(c) for c in choices)
    label = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean (true/false)",
        tuple: "a list of strings",
    }[type_]
    if minimum is not None and maximum is not None:
        label += f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        label += f" >= {minimum}"
    elif maximum is not None:
        label += f" <= {maximum}"
    return label


def coerce(
    option: str,
    value: Any,
    type_: type,
    *,
    choices: Sequence[Any] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """Return `value` converted to `type_` (``str``, ``int``, ``float``, ``bool`` or ``tuple`` of
    strings) or raise `ConfigError` naming `option` and what it expects.

    Strings (from ``--set`` or the environment) are parsed; native TOML values must already
    have the right type (an integer is accepted for a number).
    """
    expected = type_label(type_, choices, minimum, maximum)
    bad = ConfigError(option, f"expected {expected}, got {value!r}")
    if type_ is str:
        if not isinstance(value, str):
            raise bad
        result: Any = value
    elif type_ is bool:
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            result = value.strip().lower() in _TRUE
        else:
            raise bad
    elif type_ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            result = value
        elif isinstance(value, str):
            try:
                result = int(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
    elif type_ is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if result != result or result in (float("inf"), float("-inf")):
            raise bad
    elif type_ is tuple:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                raise ConfigError(option, f"expected {expected} as NAME,NAME..., got {value!r}")
            result = tuple(part.strip() for part in text.split(",") if part.strip())
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            result = tuple(value)
        else:
            raise bad
    else:  # pragma: no cover - programming error
        raise TypeError(f"unsupported option type {type_!r}")
    if choices and result not in choices:
        raise bad
    if minimum is not None and result < minimum:
        raise bad
    if maximum is not None and result > maximum:
        raise bad
    return result


def unknown_option(option: str, known: Iterable[str], what: str = "option") -> ConfigError:
    """A `ConfigError` for an unknown key, with a close match and the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(option.rsplit(".", 1)[-1], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(known) if known else "none"
    return ConfigError(option, f"unknown {what}{hint} (known: {listing})")


SECRET_MASK = "***"


def masked(specs: Sequence[OptionSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `values` (a plugin's options) with the value of every `secret` option that is
    set replaced by `SECRET_MASK`: what every printed configuration shows. An empty secret stays
    ``""`` (it tells the user that none is set)."""
    secret = {spec.name for spec in specs if spec.secret}
    return {key: SECRET_MASK if key in secret and value not in ("", None) else value for key, value in values.items()}


def resolve_options(where: str, specs: Sequence[OptionSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `given` against `specs`: every declared option gets its default when absent,
    strings are converted, unknown keys and bad values raise `ConfigError` named
    ``f"{where}.{key}"``."""
    by_name = {spec.name: spec for spec in specs}
    for key in given:
        if key not in by_name:
            raise unknown_option(f"{where}.{key}", by_name)
    result = {}
    for spec in specs:
        option = f"{where}.{spec.name}"
        if spec.required and spec.name not in given:
            raise ConfigError(option, f"required ({spec.help}); set it in the config or with --set")
        value = given.get(spec.name, spec.default)
        shown = SECRET_MASK if spec.secret else repr(value)  # a secret never reaches a message
        try:
            result[spec.name] = coerce(
                option,
                value,
                spec.type,
                choices=spec.choices,
                minimum=spec.minimum,
                maximum=spec.maximum,
            )
        except ConfigError:
            if not spec.secret:
                raise
            expected = type_label(spec.type, spec.choices, spec.minimum, spec.maximum)
            raise ConfigError(option, f"expected {expected}, got {shown}") from None
        if spec.required and result[spec.name] == spec.default:
            raise ConfigError(option, f"required ({spec.help}), got {shown}")
        problem = spec.check(result[spec.name]) if spec.check else None
        if problem:
            raise ConfigError(option, f"{problem}: {shown}")
    return result
