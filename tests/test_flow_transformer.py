"""Flow transformer and streaming sampler against the official fixture, stage by stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.official.fixture_runner import stored_noise
from avatarforcing.engine.official.formula_weights import apply_formula_weights
from avatarforcing.engine.rope import apply_rope, rope_tables
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream

ATOL = 1e-4


@pytest.fixture(scope="module")
def transformer():
    tf = FlowTransformer(ModelConfig.fixture_small()).eval()
    apply_formula_weights(tf, 0, prefix="flow_transformer.")
    return tf


@pytest.fixture(scope="module")
def conditions(fixture_intermediates):
    t = {k: torch.from_numpy(fixture_intermediates[k]) for k in ("avatar_wa", "user_wa", "user_r_d", "r_s")}
    return t


@pytest.fixture(scope="module")
def recorded_run(transformer, conditions, fixture_inputs):
    stream = MotionStream(
        transformer,
        conditions["r_s"],
        FlowMatchingEulerSampler(10),
        GuidanceScales(2.0, 1.0),
        noise=stored_noise(fixture_inputs),
    )
    stream.first_clip.recorder, stream.block.recorder = [], []
    caches = []
    stream.push(conditions["avatar_wa"], conditions["user_wa"], conditions["user_r_d"])
    stream.end()
    blocks = []
    while (block := stream._try_step()) is not None:
        blocks.append(block)
        st = stream.state
        caches.append((st.self_k.clone(), st.self_v.clone(), st.cross_k.clone(), st.cross_v.clone()))
    return stream, blocks, caches


def _close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(np.asarray(expected))
    assert actual.shape == expected.shape
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


def test_condition_fusion_matches_fixture(transformer, conditions, fixture_intermediates):
    a, u, r = conditions["avatar_wa"], conditions["user_wa"], conditions["user_r_d"]
    with torch.no_grad():
        _close(
            transformer.guidance_conditions(a[:, :50], u[:, :50], r[:, :50]), fixture_intermediates["cond_c_first_clip"]
        )
        _close(
            transformer.guidance_conditions(a[:, 48:60], u[:, 48:60], r[:, 48:60]),
            fixture_intermediates["cond_c_block1"],
        )


def test_first_evaluation_velocities_match_fixture(recorded_run, fixture_intermediates):
    stream, _, _ = recorded_run
    _close(stream.first_clip.recorder[0][0], fixture_intermediates["v3_first_clip_step0"])
    _close(stream.block.recorder[0][0], fixture_intermediates["v3_block1_step0"])


def test_denoising_trajectories_match_fixture(recorded_run, fixture_intermediates):
    stream, _, _ = recorded_run
    evals = 8  # nfe 10: 9 official evaluations, the last (t = 0) is a no-op and skipped
    first = fixture_intermediates["traj_first_clip"]
    for i in range(evals):
        _close(stream.first_clip.recorder[i][1], first[i])
    np.testing.assert_array_equal(first[-1], first[-2])  # the official t = 0 evaluation changes nothing
    blocks = fixture_intermediates["traj_stream_blocks"]
    for b in range(blocks.shape[0]):
        for i in range(evals):
            _close(stream.block.recorder[b * evals + i][1], blocks[b, i])


def _rotate_absolute(keys: torch.Tensor, first_position: int) -> torch.Tensor:
    cos, sin = rope_tables(torch.arange(keys.shape[-2]) + first_position, keys.shape[-1])
    return apply_rope(keys, cos, sin)


@pytest.mark.parametrize("update, first_position", [(0, 10), (1, 20)])
def test_kv_caches_match_fixture(recorded_run, fixture_intermediates, update, first_position):
    _, _, caches = recorded_run
    self_k, self_v, cross_k, cross_v = caches[update]
    for layer in range(self_k.shape[0]):
        key = f"cache_after_update{update}_layer{layer}"
        # our cache holds unrotated keys; the official one holds keys rotated at absolute positions
        _close(_rotate_absolute(self_k[layer], first_position), fixture_intermediates[f"{key}_self_k"])
        _close(self_v[layer], fixture_intermediates[f"{key}_self_v"])
        _close(cross_k[layer], fixture_intermediates[f"{key}_cross_k"])
        _close(cross_v[layer], fixture_intermediates[f"{key}_cross_v"])


def test_streaming_latents_match_fixture(recorded_run, fixture_outputs):
    _, blocks, _ = recorded_run
    assert [b.start for b in blocks] == [0, 50, 60, 70, 80, 90]
    assert blocks[-1].latents.shape[1] == 1  # T = 91: the last block keeps one frame
    latents = torch.cat([b.latents for b in blocks], dim=1)
    _close(latents, fixture_outputs["latents_kv"])
    np.testing.assert_array_equal(fixture_outputs["latents_noncache_first_clip"], fixture_outputs["latents_kv"][:, :50])


def test_context_frames_stay_bit_identical_inside_blocks(recorded_run):
    stream, blocks, _ = recorded_run
    for b, block in enumerate(blocks[1:]):
        context = torch.cat([x.latents for x in blocks[: b + 1]], dim=1)[:, block.start - 2 : block.start]
        for i in range(8):
            assert torch.equal(stream.block.recorder[b * 8 + i][1][:, :2], context)
