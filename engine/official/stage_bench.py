"""Benchmark of the official model's streaming block per stage: audio features, user motion,
generator, decoder (PyTorch, eager).

Weights are the fixtures' formula weights (speed does not depend on the values). A block is
10 frames = 400 ms of video; the real-time factor is 400 ms / block time (video seconds per
compute second: >= 1 is real time). `avatarforcing.engine.export.backend_bench` times the same stages
per backend (TensorRT, CUDA graphs, eager, ONNX Runtime) on the exported fixed-shape graphs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from avatarforcing.engine.benchmarking import BenchResult, StageClock, machine_description, realtime_factor, summarize
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.streaming_audio import StreamingAudioFeatures
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream

CONFIGS: dict[str, Callable[[], ModelConfig]] = {
    "fixture_small": ModelConfig.fixture_small,
    "official": ModelConfig.official,
}
STAGES = ("audio_features", "user_motion", "generator", "decoder")


def _sync(device: torch.device) -> Callable[[], None] | None:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


@torch.no_grad()
def run_benchmark(
    config_name: str = "fixture_small",
    blocks: int = 5,
    threads: int | None = None,
    device: str = "cpu",
    nfe: int = 10,
    warmup: int = 1,
) -> BenchResult:
    """Time `blocks` streaming blocks (after `warmup` untimed ones) of the given config."""
    if config_name not in CONFIGS:
        raise ValueError(f"unknown config {config_name!r}; choose from {', '.join(CONFIGS)}")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = CONFIGS[config_name]()
    model = AvatarForcingModel.with_formula_weights(cfg).to(dev)
    mae = model.motion_autoencoder
    rng = torch.Generator().manual_seed(0)
    size = cfg.input_size
    identity = mae.encode_reference((torch.rand(1, 3, size, size, generator=rng) * 2 - 1).to(dev))

    stream = MotionStream(model.flow_transformer, identity.r_s, FlowMatchingEulerSampler(nfe), GuidanceScales())
    avatar_audio = StreamingAudioFeatures(model.audio_encoder)
    user_audio = StreamingAudioFeatures(model.audio_encoder)
    samples_per_block = cfg.block_frames * cfg.samples_per_frame
    noise = np.random.default_rng(0)

    # the first clip (50 frames of conditions) is not part of the per-block budget
    prime = lambda n: torch.randn(n, cfg.dim_w, generator=rng).to(dev)
    stream.push(prime(cfg.clip_frames), prime(cfg.clip_frames), prime(cfg.clip_frames))
    stream.pull()

    clock = StageClock(_sync(dev))
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals: list[float] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for index in range(warmup + blocks):

        def features():
            a = avatar_audio.push(noise.standard_normal(samples_per_block).astype(np.float32) * 0.1)
            u = user_audio.push(noise.standard_normal(samples_per_block).astype(np.float32) * 0.1)
            return a, u

        (a_feats, u_feats), t_audio = clock.timed(features)
        user_frames = (torch.rand(cfg.block_frames, 3, size, size, generator=rng) * 2 - 1).to(dev)
        motion, t_motion = clock.timed(lambda: mae.encode_motion(user_frames))  # noqa: B023 - called within this iteration
        a_block = a_feats.to(dev) if a_feats.shape[0] == cfg.block_frames else prime(cfg.block_frames)
        u_block = u_feats.to(dev) if u_feats.shape[0] == cfg.block_frames else prime(cfg.block_frames)
        stream.push(a_block, u_block, motion)
        (block,), t_gen = clock.timed(stream.pull)
        _, t_dec = clock.timed(lambda: mae.decode(block.latents[0], identity))  # noqa: B023 - called within this iteration
        if index >= warmup:
            for stage, seconds in zip(STAGES, (t_audio, t_motion, t_gen, t_dec)):
                timings[stage].append(seconds)
            totals.append(t_audio + t_motion + t_gen + t_dec)

    block_seconds = cfg.block_frames / cfg.fps
    total = summarize(totals)
    return BenchResult(
        reason="PyTorch eager, formula weights",
        config=config_name,
        device=str(dev),
        threads=torch.get_num_threads(),
        nfe=nfe,
        blocks=blocks,
        block_seconds=block_seconds,
        stages={stage: summarize(values) for stage, values in timings.items()},
        total=total,
        realtime_factor_p50=realtime_factor(block_seconds, total),
        realtime_factor_p95=realtime_factor(block_seconds, total, "p95"),
        peak_gpu_memory_gb=(torch.cuda.max_memory_allocated(dev) / 2**30) if dev.type == "cuda" else None,
        machine=machine_description(dev),
    )
