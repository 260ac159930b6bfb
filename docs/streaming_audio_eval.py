"""Measure how far streaming audio features deviate from the offline ones (docs/streaming_audio.md).

Usage: python docs/streaming_audio_eval.py [--shared PATH] [--part geometry|normalisation|bound|babble|timing|all]

Uses the full-size wav2vec2-base encoder with the fixture formula weights (seed 0); real
weights are not available in this environment, so the numbers describe the method, not the
released model. Offline reference: `AudioEncoder` on the whole file normalised at once
(whole-utterance normalisation, wav2vec2 over the whole file). Streaming: `StreamingAudioFeatures`, `push(whole file)` then `flush()`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import transformers

from avatarforcing.engine.official.audio_encoder import AudioEncoder, normalize_utterance, pad_to_frames
from avatarforcing.engine.official.formula_weights import apply_formula_weights
from avatarforcing.engine.official.streaming_audio import (
    StreamingAudioConfig,
    StreamingAudioFeatures,
    StreamingWindowEncoder,
)

SR = 16000


def deviation(streamed: np.ndarray, offline: np.ndarray) -> dict[str, float]:
    """Per-frame cosine similarity and relative L2 error ||s - o|| / ||o|| (summaries)."""
    cos = (streamed * offline).sum(1) / np.linalg.norm(streamed, axis=1) / np.linalg.norm(offline, axis=1)
    rel = np.linalg.norm(streamed - offline, axis=1) / np.linalg.norm(offline, axis=1)
    return {
        "cos_mean": float(cos.mean()),
        "cos_p5": float(np.percentile(cos, 5)),
        "cos_min": float(cos.min()),
        "rel_mean": float(rel.mean()),
        "rel_p95": float(np.percentile(rel, 95)),
        "rel_max": float(rel.max()),
    }


def stream(encoder: AudioEncoder, audio: np.ndarray, **config) -> np.ndarray:
    extractor = StreamingAudioFeatures(encoder, StreamingAudioConfig(**config))
    return torch.cat([extractor.push(audio), extractor.flush()]).numpy()


def _extended(audio: np.ndarray, frames: int, config: StreamingAudioConfig, normalised: bool) -> np.ndarray:
    """Silence before the stream, the (normalised) file replicate-padded to whole frames and
    to the lookahead of the last window, like `flush()`."""
    signal = normalize_utterance(audio) if normalised else audio
    padded = pad_to_frames(torch.from_numpy(signal)[None], frames)[0].numpy()
    tail = np.full(config.new_frames * 640, padded[-1], np.float32)
    return np.concatenate([np.zeros(config.context_frames * 640, np.float32), padded, tail])


def windowing_only(encoder: AudioEncoder, audio: np.ndarray, frames: int, config: StreamingAudioConfig) -> np.ndarray:
    """Sliding windows over the *offline* conv features (offline normalisation and GroupNorm
    statistics): isolates the error of the limited attention / positional-conv context."""
    extended = torch.from_numpy(_extended(audio, frames, config, normalised=True))[None]
    c = config.context_frames
    with torch.no_grad():
        conv0 = encoder.wav2vec2.feature_extractor.conv_layers[0].conv
        steps = conv0(extended[:, None, c * 640 : (c + frames) * 640])
        mean, var = steps.mean(-1), steps.var(-1, unbiased=False)
        weight = torch.full((1, 1), 1e12)  # frozen statistics
        window_encoder = StreamingWindowEncoder(encoder, config)
        conv, *_ = window_encoder.frame_conv_features(
            extended[:, c * 640 :], mean * weight, (var + mean.square()) * weight, weight
        )
        conv = torch.cat([window_encoder.silence_context(), conv], dim=1)
        out = []
        for first in range(0, frames, config.hop_frames):
            hidden = encoder.transformer_layers(conv[:, first : first + config.window_frames])
            out.append(encoder.audio_projection(hidden[:, c : c + config.hop_frames])[0].numpy())
    return np.concatenate(out)[:frames]


def per_window_normalised(
    encoder: AudioEncoder, audio: np.ndarray, frames: int, config: StreamingAudioConfig
) -> np.ndarray:
    """Naive streaming: the offline encoder applied to every window on its own (per-window
    normalisation, per-window GroupNorm statistics, silence before the stream)."""
    extended = _extended(audio, frames, config, normalised=False)
    c, hop = config.context_frames, config.hop_frames
    out = []
    with torch.no_grad():
        for first in range(0, frames, hop):
            window = normalize_utterance(extended[first * 640 : (first + config.window_frames) * 640])
            wa = encoder(torch.from_numpy(window)[None], config.window_frames)
            out.append(wa[0, c : c + hop].numpy())
    return np.concatenate(out)[:frames]


def print_row(label: str, values: dict[str, float], extra: str = "") -> None:
    print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values.values()) + f" |{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--part", default="all")
    args = parser.parse_args()
    torch.set_num_threads(2)
    audio, rate = soundfile.read(args.shared / "reference" / "samples" / "avatar.wav", dtype="float32")
    assert rate == SR
    encoder = AudioEncoder(transformers.Wav2Vec2Config())
    apply_formula_weights(encoder, seed=0, prefix="audio_encoder.")
    frames = -(-audio.size // 640)
    with torch.no_grad():
        offline = encoder(torch.from_numpy(normalize_utterance(audio))[None], frames)[0].numpy()
    print(f"avatar.wav: {audio.size} samples, T = {frames} frames")
    header = "| cos mean | cos p5 | cos min | relL2 mean | relL2 p95 | relL2 max |"
    part = args.part

    if part in ("geometry", "all"):
        print("\n## geometry (default normalisation)\n| context / lookahead " + header)
        for context in (20, 40, 60):
            for look in (0, 3, 6):
                print_row(
                    f"{context} / {look}",
                    deviation(stream(encoder, audio, context_frames=context, lookahead_frames=look), offline),
                )
        print_row("100 / 3", deviation(stream(encoder, audio, context_frames=100), offline))

    if part in ("normalisation", "all"):
        print("\n## normalisation variants (context 40, lookahead 3)\n| variant " + header)
        variants = {
            "default": {},
            "min_groupnorm_var_ratio=0.1": {"min_groupnorm_var_ratio": 0.1},
            "min_groupnorm_var_ratio=0.25": {"min_groupnorm_var_ratio": 0.25},
            "min_groupnorm_var_ratio=1.0": {"min_groupnorm_var_ratio": 1.0},
            "min_input_std=0.005": {"min_input_std": 0.005},
            "min_input_std=0.02": {"min_input_std": 0.02},
            "time constants 3 s": {"norm_time_constant_s": 3.0, "groupnorm_time_constant_s": 3.0},
            "time constants 30 s": {"norm_time_constant_s": 30.0, "groupnorm_time_constant_s": 30.0},
        }
        for label, config in variants.items():
            print_row(label, deviation(stream(encoder, audio, **config), offline))
        naive = per_window_normalised(encoder, audio, frames, StreamingAudioConfig())
        print_row("baseline: offline encoder per window", deviation(naive, offline))

    if part in ("bound", "all"):
        print(
            "\n## windowing only (offline normalisation + offline GroupNorm statistics)\n| context / lookahead "
            + header
        )
        for context, look in ((20, 3), (40, 3), (60, 3)):
            config = StreamingAudioConfig(context_frames=context, lookahead_frames=look)
            print_row(f"{context} / {look}", deviation(windowing_only(encoder, audio, frames, config), offline))

    if part in ("babble", "all"):
        print("\n## babbling: mean ||wa(noise) - wa(silence)|| / mean ||wa(speech) - wa(silence)||")
        config = StreamingAudioConfig()
        speech = audio[12 * SR : 15 * SR + 8000]
        length = speech.size
        rng = np.random.default_rng(0)
        signals = {"silence": np.zeros(length, np.float32), "speech": speech}
        for rms in (1e-4, 3e-4, 1e-3, 3e-3):
            signals[f"noise {rms:g}"] = (rms * rng.standard_normal(length)).astype(np.float32)
        methods = {
            "running (default)": lambda x: StreamingAudioFeatures(encoder, config).push(x).numpy(),
            "offline encoder per window": lambda x: per_window_normalised(encoder, x, -(-x.size // 640), config),
        }
        print("| method | " + " | ".join(k for k in signals if k.startswith("noise")) + " |")
        for label, method in methods.items():
            feats = {k: method(v) for k, v in signals.items()}
            ref = np.linalg.norm(feats["speech"] - feats["silence"], axis=1).mean()
            ratios = [
                np.linalg.norm(feats[k] - feats["silence"], axis=1).mean() / ref
                for k in signals
                if k.startswith("noise")
            ]
            print(f"| {label} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |", flush=True)

    if part in ("timing", "all"):
        print("\n## time per 10-frame block (2 threads), 20 runs after 3 warm-ups: median (min)")
        print("| context | window | streaming window call | full-window recompute (no conv cache) |")
        for context in (20, 40, 60):
            config = StreamingAudioConfig(context_frames=context)
            window_encoder = StreamingWindowEncoder(encoder, config)
            samples = torch.from_numpy(normalize_utterance(audio[: config.window_frames * 640]))[None]
            stats = (torch.zeros(1, 512), torch.zeros(1, 512), torch.zeros(1, 1))
            context_features = window_encoder.silence_context()

            def cached():
                return window_encoder(samples[:, -config.new_samples :], context_features, *stats)  # noqa: B023 - called within this iteration

            def recompute():  # what a window costs without the conv cache
                conv, *_ = window_encoder.frame_conv_features(samples, *stats)  # noqa: B023 - called within this iteration
                window = slice(context, context + config.hop_frames)  # noqa: B023 - called within this iteration
                return encoder.audio_projection(encoder.transformer_layers(conv)[:, window])

            cells = []
            for function in (cached, recompute):
                times = []
                with torch.no_grad():
                    for i in range(23):
                        start = time.perf_counter()
                        function()
                        if i >= 3:
                            times.append(time.perf_counter() - start)
                cells.append(f"{1000 * np.median(times):.0f} ms ({1000 * min(times):.0f})")
            print(f"| {context} | {config.window_frames} | " + " | ".join(cells) + " |", flush=True)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
