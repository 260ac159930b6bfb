"""``avatarforcing bench --backend ...``: per-backend timings on this CPU, unavailable backends
reported (never replaced), JSON written to a file; ``--engine`` through the plugin system."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from avatarforcing.engine.export.backend_bench import BENCH_BACKENDS, resolve_backends, run_backend_benchmark
from avatarforcing.engine.export.backend_select import probe_capabilities
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.host import build_plugin_host

STAGES = {"audio_features", "user_motion", "generator", "decoder"}
STAGE_FIELDS = {"p50_ms", "p95_ms", "mean_ms", "min_ms", "max_ms", "samples"}


def _cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process with the installed plugins; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(args), build_plugin_host(environ={}), out, err)
    return status, out.getvalue(), err.getvalue()


def _check_measured(result: dict, backend: str, blocks: int) -> None:
    assert result["backend"] == backend and result["available"] is True, result
    assert set(result["stages"]) == STAGES
    for stage, timing in result["stages"].items():
        assert set(timing) == STAGE_FIELDS, stage
        assert timing["samples"] == blocks
        assert 0 < timing["p50_ms"] <= timing["p95_ms"], (stage, timing)
    stage_p50_sum = sum(t["p50_ms"] for t in result["stages"].values())
    assert result["total"]["p50_ms"] == pytest.approx(stage_p50_sum, rel=0.5)
    target = sum(result["stages"][s]["mean_ms"] for s in ("audio_features", "generator", "decoder"))
    assert result["target_total"]["mean_ms"] == pytest.approx(target, rel=1e-6)
    assert result["realtime_factor_p50"] == pytest.approx(0.4 / (result["total"]["p50_ms"] / 1000.0))
    assert result["block_seconds"] == pytest.approx(0.4)
    assert result["nfe"] == 10 and result["config"] == "fixture_small"


def test_eager_on_cpu_writes_per_stage_json_and_reports_gpu_backends_unavailable(tmp_path: Path):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    status, stdout, err = _cli(
        "bench", "--backend", "all", "--config", "fixture_small", "--blocks", "1", "--threads", "1", "--json", str(out)
    )
    assert status == 0, err
    assert f"wrote {out}" in stdout
    results = {r["backend"]: r for r in json.loads(out.read_text())["backends"]}
    assert list(results) == list(BENCH_BACKENDS)  # every backend reported, in the selector's order
    _check_measured(results["eager"], "eager", 1)
    if not torch.cuda.is_available():
        assert results["eager"]["device"] == "cpu" and results["eager"]["peak_gpu_memory_gb"] is None
        for name in ("tensorrt", "cuda-graphs"):
            assert results[name]["available"] is False
            assert results[name]["reason"].startswith("not available: no CUDA device"), results[name]
            assert results[name]["stages"] == {}  # nothing measured, nothing substituted
    # no export directory given: ONNX Runtime is unavailable, with the command that fixes it
    assert results["onnxruntime"]["available"] is False
    assert "avatarforcing graphs export --out" in results["onnxruntime"]["reason"]


@pytest.fixture(scope="module")
def fixture_small_exports(tmp_path_factory) -> Path:
    """The four per-block graphs of fixture_small (formula weights, NFE 10) exported to ONNX."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from avatarforcing.engine.config import ModelConfig
    from avatarforcing.engine.export.graph_specs import ExportSettings
    from avatarforcing.engine.export.onnx_graphs import export_all
    from avatarforcing.engine.official.model import AvatarForcingModel

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("onnx")
    model = AvatarForcingModel.with_formula_weights(ModelConfig.fixture_small()).eval()
    export_all(model, out, ExportSettings(nfe=10), graphs=("audio_window", "motion_encoder", "block_step", "decoder"))
    return out


@pytest.mark.slow
def test_onnxruntime_backend_runs_the_exported_graphs(fixture_small_exports: Path, tmp_path: Path):
    out = tmp_path / "ort.json"
    status, _, err = _cli(
        "bench",
        "--backend",
        "onnxruntime",
        "--config",
        "fixture_small",
        "--blocks",
        "1",
        "--threads",
        "1",
        "--onnx-dir",
        str(fixture_small_exports),
        "--json",
        str(out),
    )
    assert status == 0, err
    (result,) = json.loads(out.read_text())["backends"]
    _check_measured(result, "onnxruntime", 1)
    assert result["device"] == "cpu"


@pytest.mark.slow
def test_auto_names_the_selected_backend_and_its_reason(fixture_small_exports: Path):
    caps = probe_capabilities(fixture_small_exports)  # no model hash: reason text only
    (choice,) = resolve_backends("auto", caps)
    assert choice[1].startswith("backend: ")
    if not torch.cuda.is_available():
        assert choice[0] == "onnxruntime"  # the measured CPU order puts ONNX Runtime first
        assert "no CUDA device" in choice[1]


def test_exports_of_another_nfe_are_refused_not_reused(tmp_path: Path):
    """A manifest whose model hash differs (here: none at all) makes onnxruntime unavailable."""
    (tmp_path / "manifest.json").write_text("{}")
    (result,) = run_backend_benchmark("onnxruntime", "fixture_small", blocks=1, onnx_dir=tmp_path)
    assert result.available is False
    assert result.reason.startswith("not available: ") and str(tmp_path) in result.reason
    assert result.total is None


def test_bad_backend_name_is_one_clear_error():
    status, _, err = _cli("bench", "--backend", "warp-drive")
    assert status != 0
    assert "--backend must be one of tensorrt, cuda-graphs, eager, onnxruntime, auto, all" in err
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backends("warp-drive", probe_capabilities())


def test_engine_bench_reports_an_unregistered_engine_and_times_a_registered_one(tmp_path: Path):
    from avatarforcing.plugin.app.config import load_config
    from avatarforcing.plugin.app.engine_bench import engine_registered, run_engine_benchmark

    host = build_plugin_host(environ={})
    result = run_engine_benchmark(host, load_config(environ={}), "no-such-engine", blocks=1)
    assert result.available is False and "not registered" in result.reason
    status, stdout, _ = _cli("bench", "--engine", "no-such-engine", "--json")
    assert status == 1 and json.loads(stdout)["available"] is False

    why_not = engine_registered(host, "default")
    if why_not is not None:
        pytest.skip(f"the embedded default engine is not registered yet: {why_not}")
    from avatarforcing.plugin.app.doctor import default_avatar_weights

    folder, weights = default_avatar_weights()
    if not weights:
        pytest.skip(f"the embedded default avatar's weights are not in {folder} yet")
    torch.set_num_threads(1)
    out = tmp_path / "engine.json"
    status, _, err = _cli("bench", "--engine", "default", "--blocks", "2", "--json", str(out))
    assert status == 0, err
    result = json.loads(out.read_text())
    assert result["available"] is True and result["blocks"] == 2
    assert set(result["stages"]) == {"features", "generate", "render"}
    assert result["frames"] == 2 * result["block_frames"] > 0
    assert result["realtime_factor_p50"] > 0
    assert result["renderer"] == "puppet"  # no portrait: the engine's own renderer


def test_engine_bench_times_the_renderer_a_session_would_choose(tmp_path):
    """With a portrait the embedded engine is drawn by the portrait renderer, as in a session;
    --renderer names another one."""
    samples = Path(__file__).resolve().parents[2] / "shared" / "reference" / "samples"
    if not (samples / "rumi.jpg").is_file():
        pytest.skip(f"{samples} is absent: this test needs ../shared beside the repo")
    pytest.importorskip("mediapipe", reason="the portrait renderer needs mediapipe (avatarforcing[face])")
    for extra, renderer in (([], "portrait"), (["--renderer", "puppet"], "puppet")):
        out = tmp_path / f"{renderer}.json"
        argv = ["bench", "--engine", "default", "--portrait", str(samples / "rumi.jpg"), "--blocks", "2"]
        status, _, err = _cli(*argv, *extra, "--json", str(out))
        assert status == 0, err
        result = json.loads(out.read_text())
        assert result["available"] is True and result["renderer"] == renderer
        assert result["stages"]["render"]["samples"] == 2
