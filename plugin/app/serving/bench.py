"""Serving benchmark: sessions per replica against round-trip latency, on a local Ray.

    python -m avatarforcing.plugin.app.serving.bench [--sessions 1,2,4] [--seconds 6]
        [--audio FILE] [--nfe N] [--num-cpus N] [--no-batch]

Starts ``avatarforcing serve``'s application on a local Ray (one replica holding every
session), then for each count N runs N concurrent ``remote`` engine sessions at real-time pace
(one 40 ms tick at a time, `--seconds` of audio each, no video) and reports per session count
the tick round trip (tick sent -> its reply; p50/p95 ms over every session), the server's
compute per tick that produced blocks, and whether every session got all its blocks. The
local baseline is the same ticks through the default engine in this process (extract +
generate per tick). Prints a Markdown table (docs/serving.md has the measurements).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import numpy as np

from avatarforcing.plugin.api.types import InputTick, SessionInfo
from avatarforcing.plugin.app.config import config_from_dict
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME


def file_ticks(avatar_path: str, user_path: str | None, frames: int) -> list[InputTick]:
    """One-frame ticks (no video) of the first `frames` frames of two audio files (the user's
    may be None: silence), zero-padded to length."""
    from avatarforcing.integrations.media import load_audio

    n = frames * SAMPLES_PER_FRAME
    tracks = [load_audio(p)[:n] if p else np.zeros(n, np.float32) for p in (avatar_path, user_path)]
    avatar, user = (np.pad(t, (0, n - len(t))).astype(np.float32) for t in tracks)
    part = lambda x, f: np.ascontiguousarray(x[f * SAMPLES_PER_FRAME : (f + 1) * SAMPLES_PER_FRAME])
    return [InputTick(f, 1, part(avatar, f), part(user, f), [None]) for f in range(frames)]


def local_run(ticks: list[InputTick], seed: int, nfe: int = 5, face_tracking: bool = False) -> np.ndarray:
    """Latents ``float32 [frames, 13]`` of the default engine run here on `ticks` (warm-up,
    every tick, finish): what a remote session of the same inputs and seed must equal."""
    from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine

    engine = DefaultEngine(nfe=nfe, face_tracking=face_tracking)
    engine.open(SessionInfo(f"local-{seed}", config_from_dict({"model": {"seed": seed}})))
    engine.warm_up()
    blocks = [b for t in ticks for b in engine.generate(engine.extract(t))] + engine.finish()
    engine.close()
    return np.concatenate([b.latents for b in blocks])


def _percentiles(values_s: list[float]) -> str:
    if not values_s:
        return "-"
    ms = np.asarray(values_s) * 1000.0
    return f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 95):.0f}"


def local_baseline(ticks: list[InputTick], nfe: int) -> list[float]:
    """Seconds of extract + generate per tick that produced blocks, in this process (one torch
    thread, as a replica runs)."""
    import torch

    from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine

    torch.set_num_threads(1)
    engine = DefaultEngine(nfe=nfe, face_tracking=False)
    engine.open(SessionInfo("bench", config_from_dict({})))
    engine.warm_up()
    times = []
    for tick in ticks:
        start = time.perf_counter()
        blocks = engine.generate(engine.extract(tick))
        if blocks:
            times.append(time.perf_counter() - start)
        time.sleep(max(0.0, 0.04 - (time.perf_counter() - start)))
    engine.close()
    return times


def remote_sessions(url: str, ticks: list[InputTick], count: int) -> dict:
    """`count` concurrent real-time sessions; round trips, server compute, blocks per session."""
    from avatarforcing.plugin.builtins.engines.remote import RemoteEngine

    rtts: list[float] = []
    block_rtts: list[float] = []
    server_ms: list[float] = []
    blocks_per_session: list[int] = []
    lock = threading.Lock()

    def one(seed: int) -> None:
        engine = RemoteEngine(url=url, video="none", audio="s16")
        engine.open(SessionInfo(f"bench-{seed}", config_from_dict({"model": {"seed": seed}})))
        got = []
        started = time.perf_counter()
        for i, tick in enumerate(ticks):
            got += engine.generate(engine.extract(tick))
            time.sleep(max(0.0, started + (i + 1) * 0.04 - time.perf_counter()))
        got += engine.finish()
        recent, _, _ = engine.stats.round_trip.snapshot()
        block_recent, _, _ = engine.stats.block_round_trip.snapshot()
        engine.close()
        with lock:
            rtts.extend(recent)
            block_rtts.extend(block_recent)
            server_ms.extend(b.metadata.get("server_ms", 0.0) / 1000.0 for b in got)
            blocks_per_session.append(len(got))

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"rtt": rtts, "block_rtt": block_rtts, "server": server_ms, "blocks": blocks_per_session}


def main(argv: list[str] | None = None) -> int:
    from avatarforcing.plugin.app.serving.app import ServeSettings, start, stop
    from avatarforcing.plugin.app.serving.session import EngineSource

    parser = argparse.ArgumentParser(prog="python -m avatarforcing.plugin.app.serving.bench")
    parser.add_argument("--sessions", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--audio", default="../shared/reference/samples/avatar.wav")
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--no-batch", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.sessions.split(",")]
    ticks = file_ticks(args.audio, None, int(args.seconds * 25))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServeSettings(
        source=EngineSource(overrides=(("engines.default.nfe", args.nfe), ("engines.default.face_tracking", False))),
        port=port,
        sessions_per_replica=max(counts),
        cpus_per_replica=1.0,
        threads=1,
        batch=not args.no_batch,
    )
    local = local_baseline(ticks, args.nfe)
    print(f"local default engine, extract + generate of a tick that ends a block, p50 / p95 ms: {_percentiles(local)}")
    start(settings, num_cpus=args.num_cpus)
    try:
        remote_sessions(settings.url, ticks[:30], 1)  # the replica's first session loads the model: not measured
        print(
            "| sessions | tick round trip p50 / p95 ms | round trip of a block's tick p50 / p95 ms "
            "| server compute per block p50 / p95 ms | blocks per session |"
        )
        print("|---|---|---|---|---|")
        for count in counts:
            result = remote_sessions(settings.url, ticks, count)
            print(
                f"| {count} | {_percentiles(result['rtt'])} | {_percentiles(result['block_rtt'])} | "
                f"{_percentiles(result['server'])} | "
                f"{min(result['blocks'])}-{max(result['blocks'])} |"
            )
    finally:
        stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
