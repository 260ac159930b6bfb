"""Small rendering helpers shared by the built-in commands."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``("a.b.c", leaf)`` pairs of nested mappings (lists stay leaves)."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from flatten(child, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array {tuple(value.shape)} {value.dtype}"
    text = str(value)
    return text if len(text) <= 100 else text[:97] + "..."


def key_value_table(title: str, value: Mapping[str, Any]) -> Table:
    table = Table(title=escape(title), show_header=True, header_style="bold")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, leaf in flatten(value):
        table.add_row(escape(key), escape(format_value(leaf)))
    return table
