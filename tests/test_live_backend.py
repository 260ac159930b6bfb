"""The official engine in sessions runs the fastest usable backend: ONNX Runtime on a CPU
(every per-block graph exported on first use, reused after), with the same motion as eager
PyTorch; the stats name the runner of each graph; a requested backend that cannot run is one
clear error. Formula weights (fixture_small); per-stage parity: test_official_live_ort.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatarforcing.engine.export.live_backend import LIVE_GRAPHS
from avatarforcing.plugin import Frame, RendererSpec, hookimpl
from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.app.config import config_from_dict
from avatarforcing.plugin.app.session import Session
from avatarforcing.plugin.host import build_plugin_host

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "samples"
pytest.importorskip("onnxruntime", reason="ONNX Runtime is part of the 'export' extra")


class Recorder:
    """Records every generated block's latents; renders black frames (decoding is not under test)."""

    def __init__(self) -> None:
        self.latents: list[np.ndarray] = []

    @hookimpl
    def block_generated(self, block):
        self.latents.append(np.asarray(block.latents, dtype=np.float32).copy())

    @hookimpl
    def register_renderers(self):
        class Black:
            def open(self, session):
                self.size = session.frame_size

            def render(self, block):
                return [
                    Frame(np.zeros((*self.size, 3), np.uint8), block.first_frame + k, 0.0)
                    for k in range(block.num_frames)
                ]

            def close(self):
                pass

        return [RendererSpec("black", "black frames", Black)]


def run_official(backend: str, cache: Path, seconds: float = 2.4, **engine_options) -> tuple[dict, np.ndarray]:
    """An offline session of the official engine (fixture_small formula weights, nfe 4) on the
    samples; returns (stats, latents [frames, 512])."""
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is absent: these tests need ../shared beside the repo")
    recorder = Recorder()
    host = build_plugin_host({})
    host.pm.register(recorder)
    config = config_from_dict(
        {
            "model": {"engine": "official", "backend": backend, "nfe": 4, "threads": 2},
            "engines": {"official": {"model": "formula:fixture_small", **engine_options}},
            "session": {"portrait": str(SAMPLES / "rumi.jpg")},
            "render": {"use": "black"},
            "sources": {
                "avatar_audio": {"use": "audio-file", "path": str(SAMPLES / "avatar.wav")},
                "user_audio": {"use": "audio-file", "path": str(SAMPLES / "user.mp4")},
                "user_video": {"use": "video-file", "path": str(SAMPLES / "user.mp4")},
            },
            "sinks": {"use": []},
        }
    )
    stats = Session(host, config, offline=True, duration=seconds).run()
    return stats, np.concatenate(recorder.latents) if recorder.latents else np.zeros((0, 512), np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "avatarforcing" / "graphs"


def test_auto_runs_onnx_runtime_on_the_cpu_with_eager_motion(cache):
    eager_stats, eager = run_official("torch_cpu", cache)
    assert eager_stats["error"] is None and eager_stats["backend"] == "torch_cpu"
    assert not cache.exists()  # PyTorch needs no exports
    assert eager_stats["backend_graphs"] == dict.fromkeys(LIVE_GRAPHS, "pytorch")
    stats, latents = run_official("auto", cache)
    assert stats["error"] is None and stats["backend"] == "onnxruntime_cpu"
    assert stats["backend_graphs"] == dict.fromkeys(LIVE_GRAPHS, "onnxruntime")
    exports = [p.parent for p in cache.glob("*/manifest.json")]
    assert len(exports) == 1 and {p.name for p in exports[0].glob("*.onnx")} == {f"{g}.onnx" for g in LIVE_GRAPHS}
    assert latents.shape == eager.shape == (60, 512)
    # the rollout tolerance of docs/acceleration.md
    assert float(np.abs(latents - eager).max()) < 1e-4
    # the next start reuses the exports
    stamp = (exports[0] / "block_step.onnx").stat().st_mtime_ns
    again, _ = run_official("onnxruntime_cpu", cache, seconds=0.4)
    assert again["error"] is None and again["backend"] == "onnxruntime_cpu"
    assert (exports[0] / "block_step.onnx").stat().st_mtime_ns == stamp


def test_a_requested_backend_that_cannot_run_is_an_error(cache):
    with pytest.raises(PluginError, match=r"the requested backend tensorrt cannot run here: no CUDA device"):
        run_official("tensorrt", cache, seconds=0.4)
    # a folder the user named is read, never written: without exports in it, ONNX Runtime cannot run
    (cache / "mine").mkdir(parents=True)
    with pytest.raises(PluginError, match=r"requested backend onnxruntime_cpu cannot run here: no ONNX exports in"):
        run_official("onnxruntime_cpu", cache, seconds=0.4, onnx_dir=str(cache / "mine"))
    assert not list((cache / "mine").iterdir())
