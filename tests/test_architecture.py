"""The repository's own rules, checked: lint and format (ruff), and the layers of the design.

Layers (docs/architecture.md): data flows sources → features → engine → renderer → sinks;
``engine/`` is compute and imports nothing from ``plugin/`` or ``integrations/``;
``integrations/`` are adapters that know nothing of models and import nothing from ``engine/``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    """The ruff of this environment (the `test` extra pins it), as a command prefix."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed: install the 'test' extra (bash installer/install.sh does)")


def test_ruff_lint_passes():
    result = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_ruff_format_is_applied():
    result = subprocess.run(
        [*_ruff(), "format", "--no-cache", "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout[-6000:] + result.stderr[-2000:]


# ------------------------------------------------------------------------------------ layers
# folder -> import-name prefixes its modules must not import (anywhere in the module)
FORBIDDEN = {
    "engine": ("avatarforcing.plugin", "avatarforcing.integrations"),
    "integrations": ("avatarforcing.engine",),
    "schemas": ("avatarforcing.engine", "avatarforcing.plugin", "avatarforcing.integrations"),
    # the plugin API is what plugin authors import: none of the application (but the type of the
    # configuration that hooks receive, named in annotations), no built-in, no model
    "plugin/api": (
        "avatarforcing.plugin.app",
        "avatarforcing.plugin.builtins",
        "avatarforcing.plugin.host",
        "avatarforcing.engine",
        "avatarforcing.integrations",
    ),
}
ALLOWED = {"plugin/api": ("avatarforcing.plugin.app.config",)}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, nested ones included;
    relative imports are resolved against `module` (the importing module's own name)."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def layer_violations(folder: str, relative_path: str, source: str) -> list[str]:
    """What `source` (the file `folder/relative_path`) imports across the layer rules."""
    module = ".".join(["avatarforcing", *Path(folder).parts, *Path(relative_path).with_suffix("").parts])
    forbidden, allowed = FORBIDDEN.get(folder, ()), ALLOWED.get(folder, ())
    return sorted(
        {
            f"{folder}/{relative_path}:{line} imports {name}"
            for line, name in imported_modules(source, module)
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
            and not any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)
        }
    )


def test_layer_check_catches_a_forbidden_import():
    """The checker itself: absolute, relative and function-local imports across a layer."""
    source = (
        "import numpy\nfrom ...plugin.api.types import Frame\n\ndef f():\n    import avatarforcing.integrations.media\n"
    )
    assert layer_violations("engine", "official/model.py", source) == [
        "engine/official/model.py:2 imports avatarforcing.plugin.api.types",
        "engine/official/model.py:2 imports avatarforcing.plugin.api.types.Frame",
        "engine/official/model.py:5 imports avatarforcing.integrations.media",
    ]
    assert layer_violations("integrations", "x.py", "from avatarforcing.engine.stream import MotionStream\n")
    assert not layer_violations("integrations", "x.py", "from avatarforcing.schemas.motion_space import MOTION_SPACE\n")
    assert not layer_violations("plugin", "x.py", "from avatarforcing.engine.stream import MotionStream\n")
    assert layer_violations("plugin/api", "types.py", "from ..app.session import Session\n") == [
        "plugin/api/types.py:1 imports avatarforcing.plugin.app.session",
        "plugin/api/types.py:1 imports avatarforcing.plugin.app.session.Session",
    ]
    assert not layer_violations("plugin/api", "types.py", "from ..app.config import AppConfig\n")


def test_layers_are_kept():
    """engine/ imports nothing from plugin/ or integrations/; integrations/ nothing from engine/;
    schemas/ nothing from any of them; plugin/api/ nothing of the application or the models."""
    violations = []
    for folder in FORBIDDEN:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO / folder).as_posix()
            violations += layer_violations(folder, relative, path.read_text(encoding="utf-8"))
    assert not violations, "\n".join(violations)


def test_import_package_mirrors_the_top_level_folders():
    """Every code folder at the top level is linked from avatarforcing/, so its files import
    as avatarforcing.<folder>.<module>."""
    package = REPO / "avatarforcing"
    for folder in ("engine", "plugin", "integrations", "schemas"):
        assert (package / folder).resolve() == (REPO / folder).resolve(), folder
        assert (REPO / folder / "__init__.py").is_file()
