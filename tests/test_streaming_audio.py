"""Streaming audio features: determinism, latency, silence handling, agreement with offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from avatarforcing.engine.official.audio_encoder import AudioEncoder, normalize_utterance
from avatarforcing.engine.official.formula_weights import apply_formula_weights
from avatarforcing.engine.official.streaming_audio import (
    StreamingAudioConfig,
    StreamingAudioFeatures,
    StreamingWindowEncoder,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
AVATAR_WAV = SHARED / "reference" / "samples" / "avatar.wav"
SR = 16000


def _small_wav2vec2_config() -> transformers.Wav2Vec2Config:
    """wav2vec2 layout (12 layers, group-norm conv stack, same strides), narrow widths."""
    return transformers.Wav2Vec2Config(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )


@pytest.fixture(scope="module")
def small_encoder() -> AudioEncoder:
    torch.set_num_threads(2)
    encoder = AudioEncoder(_small_wav2vec2_config())
    apply_formula_weights(encoder, seed=0, prefix="audio_encoder.")
    return encoder


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced bursts (harmonics of a gliding pitch, syllable envelope) with pauses and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) * (np.sin(2 * np.pi * 0.3 * t) > -0.3)
    return (0.05 * envelope * voiced + 3e-4 * rng.standard_normal(t.size)).astype(np.float32)


def _stream(extractor: StreamingAudioFeatures, audio: np.ndarray, chunk_sizes) -> torch.Tensor:
    extractor.reset()
    outputs, start = [], 0
    for size in chunk_sizes:
        outputs.append(extractor.push(audio[start : start + size]))
        start += size
    assert start >= audio.size
    outputs.append(extractor.flush())
    return torch.cat(outputs)


def test_chunking_does_not_change_features(small_encoder):
    audio = _speech_like(3.3)
    extractor = StreamingAudioFeatures(small_encoder, StreamingAudioConfig(context_frames=20, lookahead_frames=2))
    rng = np.random.default_rng(1)
    chunkings = {
        "whole": [audio.size],
        "frames": [640] * (audio.size // 640 + 1),
        "random": list(rng.integers(0, 3000, size=audio.size // 100)),
        "tiny_then_rest": [1] * 700 + [0, 3] + [audio.size],
    }
    results = {name: _stream(extractor, audio, sizes) for name, sizes in chunkings.items()}
    expected_frames = -(-audio.size // 640)
    for name, features in results.items():
        assert features.shape == (expected_frames, 512), name
        assert torch.equal(features, results["whole"]), name


def test_frames_are_emitted_as_soon_as_computable(small_encoder):
    config = StreamingAudioConfig(context_frames=8, hop_frames=4, lookahead_frames=3)
    extractor = StreamingAudioFeatures(small_encoder, config)
    audio = _speech_like(1.0)
    first_ready = (config.hop_frames + config.lookahead_frames) * 640
    assert extractor.push(audio[: first_ready - 1]).shape == (0, 512)
    assert extractor.push(audio[first_ready - 1 : first_ready]).shape == (4, 512)
    assert extractor.push(audio[first_ready : first_ready + 4 * 640 - 1]).shape == (0, 512)
    assert extractor.push(audio[first_ready + 4 * 640 - 1 : first_ready + 4 * 640]).shape == (4, 512)
    assert extractor.state.frames_emitted == 8
    assert extractor.latency_frames == 6


@pytest.mark.parametrize("length", [1, 639, 640, 641, 7 * 640 + 17])
def test_flush_completes_the_stream_like_the_offline_encoder(small_encoder, length):
    extractor = StreamingAudioFeatures(
        small_encoder, StreamingAudioConfig(context_frames=4, hop_frames=3, lookahead_frames=1)
    )
    audio = _speech_like(1.0)[:length]
    features = torch.cat([extractor.push(audio), extractor.flush()])
    assert features.shape == (-(-length // 640), 512)
    assert torch.isfinite(features).all()


def test_reset_gives_a_fresh_stream(small_encoder):
    audio = _speech_like(1.5)
    extractor = StreamingAudioFeatures(small_encoder, StreamingAudioConfig(context_frames=10))
    first = torch.cat([extractor.push(audio), extractor.flush()])
    extractor.reset()
    assert extractor.state.frames_received == 0 and extractor.state.input_weight == 0.0
    again = torch.cat([extractor.push(audio), extractor.flush()])
    assert torch.equal(first, again)


def _frozen_statistics(mean: torch.Tensor, var: torch.Tensor):
    """Running GroupNorm sums that a window's own update cannot move (weight 1e12)."""
    weight = torch.full((1, 1), 1e12)
    return mean * weight, (var + mean.square()) * weight, weight


def test_window_with_offline_statistics_equals_offline_encoder(small_encoder):
    """Cached conv context + fresh frames + frozen GroupNorm statistics reproduce the offline
    encoder run on the same window (checks the conv locality and the running GroupNorm)."""
    config = StreamingAudioConfig(context_frames=12, hop_frames=5, lookahead_frames=3, min_groupnorm_var_ratio=1e-9)
    window_encoder = StreamingWindowEncoder(small_encoder, config)
    window = torch.from_numpy(normalize_utterance(_speech_like(2.0)[: config.window_frames * 640]))[None]
    with torch.no_grad():
        offline = small_encoder(window, config.window_frames)
        steps = small_encoder.wav2vec2.feature_extractor.conv_layers[0].conv(window[:, None])
        stats = _frozen_statistics(steps.mean(-1), steps.var(-1, unbiased=False))
        context, *_ = window_encoder.frame_conv_features(window[:, : 12 * 640], *stats)
        wa, next_context, gn_sum, _, gn_weight = window_encoder(window[:, 12 * 640 :], context, *stats)
        fresh, *_ = window_encoder.frame_conv_features(window[:, 12 * 640 :], *stats)
    torch.testing.assert_close(wa, offline[:, 12:17], rtol=0, atol=1e-4)
    assert next_context.shape == context.shape
    torch.testing.assert_close(next_context, torch.cat([context[:, 5:], fresh[:, :5]], dim=1), rtol=0, atol=1e-5)
    torch.testing.assert_close(gn_sum / gn_weight, steps.mean(-1), rtol=1e-4, atol=1e-6)


def test_conv_features_of_a_chunk_equal_the_offline_conv_stack(small_encoder):
    """Decimated conv frame j depends only on samples [640 j, 640 j + 400): chunking is exact."""
    window_encoder = StreamingWindowEncoder(small_encoder, StreamingAudioConfig(min_groupnorm_var_ratio=1e-9))
    audio = torch.from_numpy(normalize_utterance(_speech_like(1.0, seed=7)[: 20 * 640]))[None]
    with torch.no_grad():
        layers = small_encoder.wav2vec2.feature_extractor.conv_layers
        steps = layers[0].conv(audio[:, None])
        stats = _frozen_statistics(steps.mean(-1), steps.var(-1, unbiased=False))
        offline = small_encoder.conv_features(audio)[:, :, ::2].transpose(1, 2)
        chunked = torch.cat(
            [
                window_encoder.frame_conv_features(audio[:, a : a + 5 * 640], *stats)[0]
                for a in range(0, 20 * 640, 5 * 640)
            ],
            dim=1,
        )
    torch.testing.assert_close(chunked, offline, rtol=0, atol=1e-4)


def test_digital_silence_stays_exactly_zero(small_encoder):
    config = StreamingAudioConfig(context_frames=10)
    extractor = StreamingAudioFeatures(small_encoder, config)
    features = extractor.push(np.zeros(3 * SR, dtype=np.float32))
    mean, std = extractor.state.input_mean_std(config.min_input_std)
    assert mean == 0.0
    assert std == pytest.approx(np.sqrt(config.min_input_std**2 + 1e-7))
    assert not np.any(extractor.normalised_new_samples())
    hops = features.reshape(-1, config.hop_frames, 512)
    torch.testing.assert_close(hops, hops[:1].expand_as(hops), rtol=0, atol=1e-5)  # one constant pattern


def _normalised_rms_after(extractor: StreamingAudioFeatures, audio: np.ndarray) -> float:
    extractor.reset()
    extractor.push(audio)
    return float(np.sqrt(np.mean(np.square(extractor.normalised_new_samples()))))


@pytest.mark.parametrize("noise_rms", [1e-4, 1e-3])
def test_low_noise_is_not_amplified(small_encoder, noise_rms):
    extractor = StreamingAudioFeatures(small_encoder, StreamingAudioConfig(context_frames=10))
    noise = (noise_rms * np.random.default_rng(2).standard_normal(4 * SR)).astype(np.float32)
    window = noise[-2 * SR :]
    per_window_rms = float(np.sqrt(np.mean(np.square(normalize_utterance(window)))))
    assert per_window_rms > 0.25  # per-window normalisation blows noise up (to 1 above ~3e-4 RMS)
    running_rms = _normalised_rms_after(extractor, noise)
    assert running_rms < 0.15 and running_rms < per_window_rms / 3  # running norm with floor
    # after speech, a pause is scaled by the speech level, not blown up
    after_speech = np.concatenate([_speech_like(3.0), noise])
    assert _normalised_rms_after(extractor, after_speech) < 0.15


def test_low_noise_features_stay_near_silence_features(small_encoder):
    """Feature-level babbling: noise should move `wa` much less than speech does."""
    config = StreamingAudioConfig(context_frames=10, lookahead_frames=2)
    extractor = StreamingAudioFeatures(small_encoder, config)
    length = 3 * SR
    silence = extractor.push(np.zeros(length, dtype=np.float32))
    extractor.reset()
    speech = extractor.push(_speech_like(3.0)[:length])
    extractor.reset()
    noise = extractor.push((3e-4 * np.random.default_rng(5).standard_normal(length)).astype(np.float32))
    speech_distance = (speech - silence).norm(dim=1).mean()
    noise_distance = (noise - silence).norm(dim=1).mean()
    assert noise_distance < 0.25 * speech_distance


def test_streaming_features_follow_offline_features_on_avatar_wav():
    """Full-size encoder, fixture weights: the default streaming setup tracks the offline features."""
    soundfile = pytest.importorskip("soundfile")
    if not AVATAR_WAV.is_file():
        pytest.skip(f"{AVATAR_WAV} not found (shared/ must sit beside the clone)")
    torch.set_num_threads(2)
    audio, rate = soundfile.read(AVATAR_WAV, dtype="float32")
    assert rate == SR
    audio = audio[10 * SR : 16 * SR]  # speech, a pause, speech (6 s)
    encoder = AudioEncoder(transformers.Wav2Vec2Config())
    apply_formula_weights(encoder, seed=0, prefix="audio_encoder.")
    frames = -(-audio.size // 640)
    with torch.no_grad():
        offline = encoder(torch.from_numpy(normalize_utterance(audio))[None], frames)[0]
    extractor = StreamingAudioFeatures(encoder)
    streamed = torch.cat([extractor.push(audio), extractor.flush()])
    assert streamed.shape == offline.shape
    cosine = torch.nn.functional.cosine_similarity(streamed, offline, dim=1)
    assert cosine.mean() > 0.9
    assert cosine.min() > 0.75


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_window_encoder_exports_to_onnx(small_encoder, tmp_path):
    """The per-window compute has fixed shapes and exports; onnxruntime reproduces it."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    config = StreamingAudioConfig(context_frames=10, lookahead_frames=2)
    window_encoder = StreamingWindowEncoder(small_encoder, config).eval()
    channels = window_encoder.groupnorm_channels
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, config.new_samples, generator=generator),
        torch.randn(1, config.context_frames, window_encoder.conv_channels, generator=generator),
        torch.rand(1, channels, generator=generator),
        torch.rand(1, channels, generator=generator) + 1.0,
        torch.full((1, 1), 3.0),
    )
    names = ["samples", "context", "gn_sum", "gn_sumsq", "gn_weight"]
    path = tmp_path / "streaming_window.onnx"
    with torch.no_grad():
        expected = window_encoder(*inputs)
        torch.onnx.export(window_encoder, inputs, str(path), dynamo=False, input_names=names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})
    assert len(outputs) == 5
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=2e-5)
