"""polygraphy lint and inspection of exported graphs (ONNX-only features; no TensorRT needed).

Runs the polygraphy CLI in a subprocess (`polygraphy check lint` / `polygraphy inspect model`)
with the current interpreter, so the same environment's polygraphy is used. Never sets
POLYGRAPHY_AUTOINSTALL_DEPS (it would try to fetch TensorRT).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_RUN_POLYGRAPHY = "import sys; from polygraphy.tools import main; sys.exit(main())"


def polygraphy_missing() -> str | None:
    """None when polygraphy (and onnx-graphsurgeon, which `check lint` needs) can be imported;
    else the reason, suitable for a skip message."""
    for module, package in (("polygraphy", "polygraphy"), ("onnx_graphsurgeon", "onnx-graphsurgeon")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install polygraphy onnx-graphsurgeon)"
    return None


def _polygraphy(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "POLYGRAPHY_AUTOINSTALL_DEPS"}
    return subprocess.run(
        [sys.executable, "-c", _RUN_POLYGRAPHY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@dataclass
class LintResult:
    """`polygraphy check lint` of one graph: exit status, node counts and the lint entries."""

    path: Path
    returncode: int
    passing_nodes: int
    failing_nodes: list[str]
    entries: list[dict] = field(default_factory=list)
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.failing_nodes and not self.errors

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.entries if str(e.get("level", "")).lower() in ("exception", "error")]


def lint_graph(path: str | Path, timeout: float = 600.0) -> LintResult:
    """`polygraphy check lint PATH -o report.json` (runs the graph in ONNX Runtime with
    generated inputs and checks every node)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "lint.json"
        done = _polygraphy(["check", "lint", str(path), "-o", str(report_path)], timeout)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    summary = report.get("summary", {})
    return LintResult(
        path,
        done.returncode,
        len(summary.get("passing", [])),
        list(summary.get("failing", [])),
        list(report.get("lint_entries", [])),
        done.stdout + done.stderr,
    )


def inspect_graph(path: str | Path, timeout: float = 300.0) -> str:
    """`polygraphy inspect model PATH`: opset, inputs and outputs with shapes/dtypes, as text."""
    done = _polygraphy(["inspect", "model", str(path)], timeout)
    if done.returncode:
        raise RuntimeError(f"polygraphy inspect model {path} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout + done.stderr


__all__ = ["LintResult", "inspect_graph", "lint_graph", "polygraphy_missing"]
