"""The repository's own rules, checked: lint and format (ruff), and the layers of the design.

Layers (docs/architecture.md): data flows sources → features → engine → renderer → sinks;
``engine/`` is compute and imports nothing from ``plugin/`` or ``integrations/``;
``integrations/`` are adapters that know nothing of models and import nothing from ``engine/``.
"""

from __future__ import annotations

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
