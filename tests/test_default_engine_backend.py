"""The `default` engine's generator on the fastest backend: with ``auto`` ONNX Runtime on the
CPU (its first clip and block step exported on first use into the per-model cache folder,
reused on the next open), with the same motion as eager PyTorch within the rollout tolerance
of docs/acceleration.md; the open log line and the session stats name the backend; a requested
backend that cannot run is one clear error. Packaged weights, a few seconds of the sample
avatar audio."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from avatarforcing.engine.export.graph_specs import GENERATOR_GRAPHS, ExportSettings
from avatarforcing.engine.export.live_backend import graph_cache_dir
from avatarforcing.engine.export.onnx_runtime import DEFAULT_TOLERANCES
from avatarforcing.engine.sampler import FlowMatchingEulerSampler
from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.types import InputTick, SessionInfo
from avatarforcing.plugin.app.config import config_from_dict
from avatarforcing.plugin.app.session import Session
from avatarforcing.plugin.builtins.engines import embedded
from avatarforcing.plugin.host import build_plugin_host
from avatarforcing.schemas.media_rates import SAMPLE_RATE, SAMPLES_PER_FRAME

pytest.importorskip("onnxruntime", reason="ONNX Runtime is part of the 'export' extra")
SECONDS = 4
NFE = 5


def _config(backend: str) -> dict:
    return {
        "model": {"engine": "default", "backend": backend, "threads": 1, "seed": 3},
        # smoothing off: the generator's motion itself is compared
        "engines": {"default": {"nfe": NFE, "face_tracking": False, "smoothing": False}},
    }


def _open(backend: str) -> tuple[embedded.DefaultEngine, list[str]]:
    """A `DefaultEngine` opened on `backend`; (engine, the log lines of its open)."""
    engine = embedded.DefaultEngine(nfe=NFE, face_tracking=False, smoothing=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(embedded.__name__)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        engine.open(SessionInfo("test", config_from_dict(_config(backend))))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    return engine, [r.getMessage() for r in records]


def _stream(engine: embedded.DefaultEngine, audio: np.ndarray) -> np.ndarray:
    """Warm up, then one tick per frame of `audio` (the user silent, no video) and the end:
    denormalized motion [frames, 13]."""
    engine.warm_up()
    silence = np.zeros(SAMPLES_PER_FRAME, np.float32)
    blocks = []
    for f in range(len(audio) // SAMPLES_PER_FRAME):
        tick = InputTick(f, 1, audio[f * SAMPLES_PER_FRAME : (f + 1) * SAMPLES_PER_FRAME], silence, [None])
        blocks += engine.generate(engine.extract(tick))
    blocks += engine.finish()
    engine.close()
    return np.concatenate([b.latents for b in blocks])


@pytest.fixture(scope="module")
def runs(samples_dir, tmp_path_factory):
    """Eager PyTorch, then ``auto`` on an empty cache (exports), then ``onnxruntime_cpu`` on the
    same cache (reuses). Returns a dict of the motions, engines, open logs, cache folder and the
    export files' mtimes after the first ORT open."""
    import soundfile as sf

    samples, rate = sf.read(str(samples_dir / "avatar.wav"), dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE
    audio = samples.mean(axis=1)[: SECONDS * SAMPLE_RATE]
    cache = tmp_path_factory.mktemp("cache")
    out: dict = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        for key, backend in (("eager", "torch_cpu"), ("auto", "auto"), ("again", "onnxruntime_cpu")):
            engine, lines = _open(backend)
            if key == "auto":
                out["model"] = engine._model.transformer
                out["folder"], _ = graph_cache_dir(
                    cache / "avatarforcing" / "graphs", out["model"], ExportSettings(NFE)
                )
                out["stamps"] = {g: (out["folder"] / f"{g}.onnx").stat().st_mtime_ns for g in GENERATOR_GRAPHS}
            out[key] = {"engine": engine, "lines": lines, "motion": _stream(engine, audio)}
    torch.set_num_threads(2)  # conftest's setting; the engine set 1
    return out


def _opened(lines: list[str]) -> str:
    (line,) = [line for line in lines if line.startswith("engine default:")]
    return line


def test_auto_runs_the_generator_on_onnx_runtime_and_says_so(runs):
    eager, auto = runs["eager"], runs["auto"]
    assert eager["engine"].backend == "torch_cpu"
    assert eager["engine"].backend_graphs == dict.fromkeys(GENERATOR_GRAPHS, "pytorch")
    assert auto["engine"].backend == "onnxruntime_cpu"
    assert auto["engine"].backend_graphs == dict.fromkeys(GENERATOR_GRAPHS, "onnxruntime")
    line = _opened(auto["lines"])
    assert "backend: onnxruntime_cpu (no CUDA device" in line
    assert "graphs: first_clip, block_step on onnxruntime" in line
    assert "graphs: first_clip, block_step on pytorch" in _opened(eager["lines"])


def test_onnx_runtime_gives_the_eager_motion(runs):
    """Within the rollout tolerance (relative to max(1, max |eager|)), and not bit-equal: ONNX
    Runtime, not PyTorch, computed it."""
    eager = runs["eager"]["motion"]
    assert eager.shape == (SECONDS * 25, 13)
    for key in ("auto", "again"):
        got = runs[key]["motion"]
        assert got.shape == eager.shape
        diff = float(np.abs(got.astype(np.float64) - eager).max()) / max(1.0, float(np.abs(eager).max()))
        assert 0.0 < diff <= DEFAULT_TOLERANCES["rollout"], (key, diff)
    np.testing.assert_array_equal(runs["auto"]["motion"], runs["again"]["motion"])


def test_the_first_open_exports_once_and_the_next_reuses_it(runs):
    folder = runs["folder"]
    assert {p.name for p in folder.glob("*.onnx")} == {f"{g}.onnx" for g in GENERATOR_GRAPHS}
    assert any(
        f"exporting the graphs first_clip, block_step to ONNX once, into {folder}" in line
        for line in runs["auto"]["lines"]
    )
    assert not any("exporting the graphs" in line for line in runs["again"]["lines"])
    assert runs["stamps"] == {g: (folder / f"{g}.onnx").stat().st_mtime_ns for g in GENERATOR_GRAPHS}
    assert not any("exporting the graphs" in line for line in runs["eager"]["lines"])


def test_a_requested_backend_that_cannot_run_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine = embedded.DefaultEngine(face_tracking=False)
    with pytest.raises(
        PluginError, match=r"engine 'default': the requested backend tensorrt cannot run here: no CUDA device"
    ):
        engine.open(SessionInfo("test", config_from_dict(_config("tensorrt"))))
    torch.set_num_threads(2)
    assert not (tmp_path / "avatarforcing").exists()  # nothing exported for a backend that cannot run


def test_the_session_stats_name_the_backend(samples_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = config_from_dict(
        {
            **_config("auto"),
            "sources": {
                "avatar_audio": {"use": "audio-file", "path": str(samples_dir / "avatar.wav")},
                "user_audio": {"use": "audio-file", "path": str(samples_dir / "user.mp4")},
                "user_video": {"use": "video-file", "path": str(samples_dir / "user.mp4")},
            },
            "sinks": {"use": []},
        }
    )
    stats = Session(build_plugin_host({}), config, offline=True, duration=1.2).run()
    torch.set_num_threads(2)
    assert stats["error"] is None
    assert stats["backend"] == "onnxruntime_cpu"
    assert stats["backend_graphs"] == dict.fromkeys(GENERATOR_GRAPHS, "onnxruntime")


def test_motion_units_stay_outside_the_graphs(tmp_path):
    """A model whose `motion_scale` is not 1 (the stream converts at push and pull): its stream
    on ONNX Runtime gives eager PyTorch's latents. Random weights, random conditions with a
    nonzero user motion (the converted input)."""
    import dataclasses

    from avatarforcing.engine.embedded.model import DEFAULT_MODEL_CONFIG
    from avatarforcing.engine.export.live_backend import accelerate_stream, choose_live_backend
    from avatarforcing.engine.flow_transformer import FlowTransformer
    from avatarforcing.engine.stream import MotionStream, generate

    torch.manual_seed(0)
    cfg = dataclasses.replace(
        DEFAULT_MODEL_CONFIG, motion_scale=tuple(np.linspace(0.05, 0.3, DEFAULT_MODEL_CONFIG.dim_w))
    )
    transformer = FlowTransformer(cfg).eval()
    settings = ExportSettings(nfe=NFE)
    backend = choose_live_backend(transformer, settings, "onnxruntime_cpu", tmp_path)
    assert backend.graphs == dict.fromkeys(GENERATOR_GRAPHS, "onnxruntime")
    gen = torch.Generator().manual_seed(1)
    frames = cfg.clip_frames + 3 * cfg.block_frames
    conditions = [torch.randn(1, frames, cfg.dim_a, generator=gen) for _ in range(2)]
    conditions.append(0.2 * torch.randn(1, frames, cfg.dim_w, generator=gen))
    r_s = 0.1 * torch.randn(1, cfg.dim_w, generator=gen)
    outputs = []
    for accelerated in (False, True):
        stream = MotionStream(transformer, r_s, sampler=FlowMatchingEulerSampler(NFE), seed=2)
        if accelerated:
            accelerate_stream(stream, transformer, backend, settings, threads=1)
        outputs.append(generate(stream, *conditions))
    eager, ort = outputs
    diff = float((ort - eager).abs().max()) / max(1.0, float(eager.abs().max()))
    assert 0.0 < diff <= DEFAULT_TOLERANCES["rollout"], diff
