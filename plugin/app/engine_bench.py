"""Benchmark of a registered motion engine (``[model] engine``) and its renderer, through the
plugin system exactly as a live session drives them: `PluginHost.create_engine`, then per tick
`extract` (features thread) and `generate` (generator thread, here the same thread), and per
block the renderer's `render`.

Inputs are synthetic: noise at speech level for both parties' audio, a flat grey portrait and
no user video (``None`` frames). Stages are timed per block: ``features`` (every `extract` of
the block's ticks), ``generate`` (the `generate` calls that produced it) and ``render``. The
real-time factor is video seconds per compute second (``>= 1``: faster than real time).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from avatarforcing.engine.benchmarking import BenchResult, realtime_factor, summarize
from avatarforcing.plugin.api.errors import AvatarForcingError
from avatarforcing.plugin.api.types import InputTick, SessionInfo
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME


def engine_registered(host: Any, name: str) -> str | None:
    """None when `name` is a registered engine, else why not (one line)."""
    try:
        names = [provided.spec.name for provided in host.provided("engines")]
    except Exception as error:
        return f"this build has no engine registry ({type(error).__name__}: {error})"
    if name not in names:
        return (
            f"the engine {name!r} is not registered (registered: {', '.join(names) or 'none'}); "
            "see `avatarforcing plugins`"
        )
    return None


def run_engine_benchmark(
    host: Any, config: Any, name: str, blocks: int = 5, warmup: int = 1, seed: int = 0
) -> BenchResult:
    """Run engine `name` until `warmup + blocks` blocks came out; time the last `blocks`. An
    unregistered engine, or one that fails, gives ``available=False`` with the reason."""
    why_not = engine_registered(host, name)
    if why_not is not None:
        return BenchResult(available=False, engine=name, reason=f"not available: {why_not}")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, engine=name))
    try:
        return _time_engine(host, config, name, blocks, warmup, seed)
    except AvatarForcingError:
        raise  # configuration errors: one line from the CLI
    except Exception as error:
        return BenchResult(
            available=False, engine=name, reason=f"not available: the engine failed: {type(error).__name__}: {error}"
        )


def _portrait(path: str) -> np.ndarray:
    """The configured portrait (RGB uint8), or a flat grey picture when none is configured."""
    if not path:
        return np.full((512, 512, 3), 128, dtype=np.uint8)
    from avatarforcing.integrations.face_crop import load_image_rgb

    return load_image_rgb(path)


def _time_engine(host: Any, config: Any, name: str, blocks: int, warmup: int, seed: int) -> BenchResult:
    from avatarforcing.plugin.app.session.runner import choose_renderer

    spec, engine = host.create_engine(config)
    registered = {entry.spec.name for entry in host.provided("renderers")}
    renderer_name = choose_renderer(config, spec, registered).name  # as a live session chooses
    if renderer_name != config.render.use:
        config = dataclasses.replace(config, render=dataclasses.replace(config.render, use=renderer_name, options={}))
    renderer = host.create_renderer(config)
    portrait = _portrait(config.session.portrait)
    session = SessionInfo(
        session_id="bench",
        config=config,
        portrait_path=config.session.portrait,
        portrait=portrait,
        renderer=renderer_name,
        engine=engine,
    )
    rng = np.random.default_rng(seed)
    engine.open(session)
    renderer.open(session)
    try:
        engine.warm_up()
        timings: dict[str, list[float]] = {"features": [], "generate": [], "render": []}
        pending = {"features": 0.0, "generate": 0.0}
        produced = frames = 0
        first_block_frames = block_frames = 0
        frame_index = 0
        limit = (warmup + blocks) * 10_000  # ticks: an engine that never emits a block is an error
        while produced < warmup + blocks:
            if frame_index > limit:
                raise RuntimeError(f"engine {name!r} produced {produced} blocks in {frame_index} frames")
            tick = InputTick(
                first_frame=frame_index,
                num_frames=1,
                avatar_audio=(rng.standard_normal(SAMPLES_PER_FRAME) * 0.1).astype(np.float32),
                user_audio=(rng.standard_normal(SAMPLES_PER_FRAME) * 0.1).astype(np.float32),
                user_frames=[None],
                avatar_voice=1.0,
            )
            frame_index += 1
            start = time.perf_counter()
            features = engine.extract(tick)
            pending["features"] += time.perf_counter() - start
            start = time.perf_counter()
            new_blocks = engine.generate(features)
            pending["generate"] += time.perf_counter() - start
            for block in new_blocks:
                start = time.perf_counter()
                rendered = renderer.render(block)
                render_s = time.perf_counter() - start
                if produced == 0:
                    first_block_frames = block.num_frames
                else:
                    block_frames = block.num_frames
                if produced >= warmup:
                    timings["features"].append(pending["features"])
                    timings["generate"].append(pending["generate"])
                    timings["render"].append(render_s)
                    frames += len(rendered)
                pending = {"features": 0.0, "generate": 0.0}
                produced += 1
    finally:
        renderer.close()
        engine.close()
    totals = [sum(values) for values in zip(*timings.values())]
    total = summarize(totals)
    video_s = frames / session.fps
    return BenchResult(
        engine=name,
        reason=f"{spec.description} (renderer {renderer_name!r})",
        renderer=renderer_name,
        blocks=blocks,
        frames=frames,
        stages={stage: summarize(values) for stage, values in timings.items()},
        total=total,
        realtime_factor_p50=realtime_factor(video_s / blocks, total),
        realtime_factor_p95=realtime_factor(video_s / blocks, total, "p95"),
        first_block_frames=first_block_frames,
        block_frames=block_frames,
    )


__all__ = ["engine_registered", "run_engine_benchmark"]
