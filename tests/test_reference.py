"""Reference runner (`avatarforcing reference run`) against fixture_small, stage by stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatarforcing.engine.official.fixture_runner import run_reference
from avatarforcing.plugin.app.cli import main

ATOL = 1e-4  # fixture README: features and latents


@pytest.fixture(scope="module")
def cli_outputs(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out.npz"
    assert main(["reference", "run", str(fixture_dir), "--out", str(out)]) == 0
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max())


@pytest.mark.parametrize("name", ["avatar_wa", "user_wa", "user_r_d", "s_r", "r_s"])
def test_features_match_fixture(cli_outputs, fixture_intermediates, name):
    assert _max_diff(cli_outputs[name], fixture_intermediates[name]) <= ATOL


def test_latents_match_fixture(cli_outputs, fixture_outputs):
    assert _max_diff(cli_outputs["latents_kv"], fixture_outputs["latents_kv"]) <= ATOL


def test_frames_match_fixture(cli_outputs, fixture_outputs):
    diff = np.abs(cli_outputs["frames_kv"].astype(np.float64) - fixture_outputs["frames_kv"])
    assert cli_outputs["frames_kv"].shape == (91, 3, 64, 64)
    assert diff.mean() < 1e-4 and diff.max() < 5e-2, (diff.mean(), diff.max())


def _variant(fixture_dir, tmp_path, *, seed, nfe, a_cfg, u_cfg, avatar_samples, user_samples, user_frames):
    """A fixture directory with other run settings and a user track shorter than the avatar's."""
    meta = json.loads((fixture_dir / "fixture_meta.json").read_text())
    meta["run"] = {"init_seed": seed, "nfe": nfe, "a_cfg_scale": a_cfg, "u_cfg_scale": u_cfg}
    with np.load(fixture_dir / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    frames = int(np.ceil(max(avatar_samples, user_samples) * 25 / 16000))
    blocks = max(0, -(-(frames - 50) // 10))
    rng = np.random.default_rng(seed)
    inputs["avatar_audio"] = inputs["avatar_audio"][:, :avatar_samples]
    inputs["user_audio"] = inputs["user_audio"][:, :user_samples]
    inputs["user_frames_uint8"] = inputs["user_frames_uint8"][:user_frames]
    inputs["noise_first_clip"] = rng.standard_normal((1, 50, 512)).astype(np.float32)
    inputs["noise_blocks"] = rng.standard_normal((blocks, 1, 10, 512)).astype(np.float32)
    out = tmp_path / "variant"
    out.mkdir()
    (out / "fixture_meta.json").write_text(json.dumps(meta))
    np.savez(out / "inputs.npz", **inputs)
    return out, frames


def test_other_settings_and_a_short_user_track(fixture_dir, tmp_path):
    variant, frames = _variant(
        fixture_dir,
        tmp_path,
        seed=7,
        nfe=6,
        a_cfg=1.5,
        u_cfg=0.5,
        avatar_samples=48000,
        user_samples=20000,
        user_frames=20,
    )
    result = run_reference(variant, tmp_path / "variant.npz")
    assert frames == 75
    assert result["avatar_wa"].shape == result["user_wa"].shape == (1, 75, 512)
    assert result["user_r_d"].shape == (1, 20, 512)
    assert result["latents_kv"].shape == (1, 75, 512)
    assert result["frames_kv"].shape == (75, 3, 64, 64)
    assert all(np.isfinite(v).all() for v in result.values())
    with np.load(tmp_path / "variant.npz") as saved:
        assert sorted(saved.files) == sorted(result)
        np.testing.assert_array_equal(saved["latents_kv"], result["latents_kv"])


def test_missing_inputs_is_one_clear_error(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fixture_meta.json").write_text("{}")
    assert main(["reference", "run", str(broken), "--out", str(tmp_path / "x.npz")]) == 2
    assert "inputs.npz" in capsys.readouterr().err
