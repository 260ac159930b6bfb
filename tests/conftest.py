"""Shared fixtures: paths to ../shared (skip cleanly where it is absent) and fixture arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
FIXTURE_SMALL = REFERENCE / "fixture_small"
SAMPLES = REFERENCE / "samples"

torch.set_num_threads(2)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: tests that compare with the official reference need ../shared beside the repo")
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return require(FIXTURE_SMALL)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return require(SAMPLES)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def fixture_inputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    return _load(fixture_dir / "inputs.npz")


@pytest.fixture(scope="session")
def fixture_intermediates(fixture_dir: Path) -> dict[str, np.ndarray]:
    return _load(fixture_dir / "intermediates.npz")


@pytest.fixture(scope="session")
def fixture_outputs(fixture_dir: Path) -> dict[str, np.ndarray]:
    return _load(fixture_dir / "outputs.npz")
