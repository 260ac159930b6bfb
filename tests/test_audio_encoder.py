"""AudioEncoder against the official fixture `fixture_small`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from torch.nn import functional as F

from avatarforcing.engine.official.audio_encoder import (
    AudioEncoder,
    decimate_conv_frames,
    normalize_utterance,
    pad_to_frames,
)
from avatarforcing.engine.official.formula_weights import (
    apply_formula_weights,
    fixture_values,
    init_rule,
    iter_canonical_parameters,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = SHARED / "reference" / "fixture_small"
ATOL = 1e-4


def _require_fixture() -> Path:
    if not (FIXTURE / "intermediates.npz").is_file():
        pytest.skip(f"fixture_small not found at {FIXTURE} (shared/ must sit beside the clone)")
    return FIXTURE


@pytest.fixture(scope="module")
def encoder() -> AudioEncoder:
    torch.set_num_threads(2)
    enc = AudioEncoder(transformers.Wav2Vec2Config())
    apply_formula_weights(enc, seed=0, prefix="audio_encoder.")
    return enc


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(_require_fixture() / "inputs.npz"))


@pytest.fixture(scope="module")
def intermediates() -> dict[str, np.ndarray]:
    return dict(np.load(_require_fixture() / "intermediates.npz"))


@pytest.mark.parametrize("stream", ["avatar", "user"])
def test_normalize_utterance_matches_fixture(inputs, stream):
    normalised = normalize_utterance(inputs[f"{stream}_audio_raw"])
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, inputs[f"{stream}_audio"][0], rtol=0, atol=1e-6)


def test_normalize_utterance_equals_hf_feature_extractor():
    rng = np.random.default_rng(3)
    audio = (0.05 * rng.standard_normal(12345) + 0.01).astype(np.float32)
    extractor = transformers.Wav2Vec2FeatureExtractor()
    expected = extractor(audio, sampling_rate=16000, return_tensors="np")["input_values"][0]
    np.testing.assert_array_equal(normalize_utterance(audio), expected)


def test_hidden_states_match_fixture(encoder, inputs, intermediates):
    with torch.no_grad():
        hidden = encoder.hidden_states(torch.from_numpy(inputs["avatar_audio"]), num_frames=91)
    expected = intermediates["avatar_w2v_hidden"]
    assert hidden.shape == expected.shape == (1, 91, 9216)
    np.testing.assert_allclose(hidden.numpy(), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("stream", ["avatar", "user"])
def test_audio_features_match_fixture(encoder, inputs, intermediates, stream):
    with torch.no_grad():
        wa = encoder(torch.from_numpy(inputs[f"{stream}_audio"]), num_frames=91)
    expected = intermediates[f"{stream}_wa"]
    assert wa.shape == expected.shape == (1, 91, 512)
    np.testing.assert_allclose(wa.numpy(), expected, rtol=0, atol=ATOL)


def test_parameter_names_and_init_rules_match_fixture_meta(encoder):
    meta = json.loads((_require_fixture() / "fixture_meta.json").read_text())
    official = {name: rule for name, rule in meta["init_rules"].items() if name.startswith("audio_encoder.")}
    ours = {"audio_encoder." + name: param for name, param in encoder.named_parameters()}
    assert set(ours) == set(official)
    canonical = dict(iter_canonical_parameters(encoder, "audio_encoder."))
    assert "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv.weight_g" in canonical
    assert "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv.weight_v" in canonical
    for torch_name, canonical_name in zip(ours, canonical):
        assert init_rule(canonical_name, tuple(ours[torch_name].shape))[0] == official[torch_name], torch_name


def test_legacy_weight_norm_names_get_the_same_fixture_weights():
    """Legacy `weight_norm` exposes weight_g/weight_v directly; both forms hash to the same name."""
    prefix = "audio_encoder.wav2vec2.encoder.pos_conv_embed.conv."
    modern = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(8, 8, 4, groups=2), dim=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = torch.nn.utils.weight_norm(torch.nn.Conv1d(8, 8, 4, groups=2), dim=2)
    assert {"weight_g", "weight_v"} <= {name for name, _ in legacy.named_parameters()}
    apply_formula_weights(modern, seed=0, prefix=prefix)
    apply_formula_weights(legacy, seed=0, prefix=prefix)
    g = fixture_values(prefix + "weight_g", (1, 1, 4), seed=0)
    np.testing.assert_array_equal(modern.parametrizations.weight.original0.detach().numpy(), g)
    np.testing.assert_array_equal(legacy.weight_g.detach().numpy(), g)
    legacy(torch.zeros(1, 8, 4))  # the legacy hook recomputes `weight` on forward
    torch.testing.assert_close(modern.weight, legacy.weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_frames", [1, 2, 7, 91, 750])
def test_decimation_is_exactly_the_official_linear_interpolation(num_frames):
    features = torch.randn(2, 5, 2 * num_frames - 1, generator=torch.Generator().manual_seed(num_frames))
    official = F.interpolate(features, size=num_frames, mode="linear", align_corners=True)
    torch.testing.assert_close(decimate_conv_frames(features, num_frames), official, rtol=0, atol=0)


def test_decimation_rejects_unexpected_step_count():
    with pytest.raises(ValueError):
        decimate_conv_frames(torch.zeros(1, 3, 10), 5)


def test_pad_to_frames_replicates_last_sample():
    audio = torch.arange(1, 1001, dtype=torch.float32).reshape(1, -1)
    padded = pad_to_frames(audio, num_frames=2)
    assert padded.shape == (1, 1280)
    assert torch.equal(padded[:, :1000], audio)
    assert torch.all(padded[:, 1000:] == 1000.0)
    assert pad_to_frames(padded, 2) is padded
    with pytest.raises(ValueError):
        pad_to_frames(audio, num_frames=1)


def test_conv_stack_gives_two_steps_per_frame_minus_one(encoder):
    with torch.no_grad():
        for num_frames in (1, 3, 10):
            steps = encoder.conv_features(torch.zeros(1, num_frames * 640))
            assert steps.shape == (1, 512, 2 * num_frames - 1)


def test_wav2vec2_stays_in_eval_mode(encoder):
    encoder.train()
    try:
        assert encoder.audio_projection.training
        assert not any(module.training for module in encoder.wav2vec2.modules())
    finally:
        encoder.eval()
