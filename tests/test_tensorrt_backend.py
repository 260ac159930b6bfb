"""TensorRT backend: the engine cache key logic (pure Python, tested for real everywhere) and,
where `tensorrt` and CUDA exist, building and running engines (skipped here with the reason)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

from avatarforcing.engine.export.graph_specs import ExportSettings, TensorSpec
from avatarforcing.engine.export.onnx_graphs import ExportManifest, GraphRecord
from avatarforcing.engine.export.tensorrt_backend import (
    DeviceIdentity,
    EngineCache,
    EngineKey,
    TensorRTUnavailable,
    engine_build_main,
    import_tensorrt,
    tensorrt_missing,
)

H100 = DeviceIdentity("NVIDIA H100 80GB HBM3", (9, 0))
A100 = DeviceIdentity("NVIDIA A100-SXM4-80GB", (8, 0))


def _manifest(model_hash: str = "ab" * 32, cache_len: int = 38) -> ExportManifest:
    cache = TensorSpec("self_k", (2, 3, 4, cache_len, 32))
    record = GraphRecord(
        "block_step",
        "block_step.onnx",
        "torchscript",
        17,
        [TensorSpec("noise", (1, 10, 512)), cache],
        [TensorSpec("latents", (1, 10, 512)), dataclasses.replace(cache, name="self_k_out")],
        "cd" * 32,
        1.0,
    )
    return ExportManifest(model_hash, {"dim_h": 128}, ExportSettings(), [record])


def _key(device: DeviceIdentity = H100, version: str = "10.13.0.35", precision: str = "fp16", **manifest) -> EngineKey:
    return EngineKey.for_graph(_manifest(**manifest), "block_step", precision, device, version)


def test_key_is_deterministic_and_round_trips():
    key = _key()
    assert key == _key() and key.digest() == _key().digest() and key.file_name() == _key().file_name()
    assert EngineKey.from_dict(key.to_dict()) == key
    assert key.file_name().startswith("block_step.fp16.nvidia-h100-80gb-hbm3-sm90.trt10.13.0.35.")
    assert key.shapes[1] == ("self_k", (2, 3, 4, 38, 32), "float32")


@pytest.mark.parametrize(
    "change",
    [
        dict(device=A100),
        dict(device=DeviceIdentity(H100.name, (8, 9))),
        dict(version="10.14.1.48"),
        dict(model_hash="ef" * 32),
        dict(cache_len=40),
        dict(precision="bf16"),
    ],
)
def test_every_key_field_changes_the_engine_file(change):
    base, other = _key(), _key(**change)
    assert other != base and other.digest() != base.digest() and other.file_name() != base.file_name()


def test_cached_engine_round_trip(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    assert cache.lookup(key) is None
    path = cache.store(key, b"serialized engine bytes")
    assert cache.lookup(key) == path and path.read_bytes() == b"serialized engine bytes"
    assert [k for _, k in cache.cached_keys("block_step")] == [key]
    assert not list(tmp_path.glob("*.tmp"))


def test_engine_of_another_gpu_is_never_loaded_and_is_reported_once(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(_key(device=A100, version="10.3.0.26"), b"engine built on an A100")
    lines: list[str] = []
    assert cache.lookup(_key(), lines.append) is None
    assert len(lines) == 1
    line = lines[0]
    assert "GPU NVIDIA A100-SXM4-80GB (here NVIDIA H100 80GB HBM3)" in line
    assert "compute capability sm_80 (here sm_90)" in line and "TensorRT 10.3.0.26 (here 10.13.0.35)" in line
    assert line.endswith("rebuilding")


def test_a_sidecar_that_does_not_match_its_file_name_is_not_trusted(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    path = cache.store(key, b"engine")
    other = _key(model_hash="ef" * 32)
    path.with_suffix(".json").write_text(json.dumps(other.to_dict()))
    assert cache.lookup(key) is None


def test_timing_cache_is_per_gpu_and_version(tmp_path):
    cache = EngineCache(tmp_path)
    paths = {
        cache.timing_cache_path(H100, "10.13.0.35"),
        cache.timing_cache_path(A100, "10.13.0.35"),
        cache.timing_cache_path(H100, "10.14.1.48"),
    }
    assert len(paths) == 3


def test_tensorrt_absence_is_reported_with_its_reason():
    reason = tensorrt_missing()
    if importlib.util.find_spec("tensorrt") is None:
        assert reason is not None and "tensorrt is not importable" in reason and "No module named" in reason
        with pytest.raises(TensorRTUnavailable):
            import_tensorrt()
    if not torch.cuda.is_available():
        with pytest.raises(TensorRTUnavailable, match="no CUDA device"):
            DeviceIdentity.current()


def test_engine_build_main_explains_why_it_cannot_build(tmp_path):
    reason = tensorrt_missing() or (None if torch.cuda.is_available() else "no CUDA device")
    if reason is None:
        pytest.skip("TensorRT and CUDA are present: engine_build_main would build")
    _manifest().save(tmp_path)
    lines: list[str] = []
    assert engine_build_main(tmp_path, tmp_path / "engines", log=lines.append) == 2
    assert len(lines) == 1 and lines[0].startswith("cannot build TensorRT engines here: ")
    assert reason.split(" (")[0] in lines[0]
    assert not (tmp_path / "engines").exists()


def _require_tensorrt_and_cuda():
    reason = tensorrt_missing()
    if reason:
        pytest.skip(f"TensorRT backend not testable here: {reason}")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT backend not testable here: no CUDA device")


def test_build_cache_and_run_block_step_engine(tmp_path):
    """Builds an fp32 and an fp16 engine of the small block step, runs them against PyTorch,
    and loads the second time from the cache without rebuilding."""
    _require_tensorrt_and_cuda()
    import transformers

    from avatarforcing.engine.config import ModelConfig
    from avatarforcing.engine.export.graph_specs import build_graph_specs
    from avatarforcing.engine.export.onnx_graphs import export_all
    from avatarforcing.engine.export.tensorrt_backend import BuildOptions, load_or_build_engines
    from avatarforcing.engine.official.model import AvatarForcingModel

    w2v = transformers.Wav2Vec2Config(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    model = AvatarForcingModel.with_formula_weights(ModelConfig.fixture_small(), wav2vec2_config=w2v)
    settings = ExportSettings(nfe=4, frames_per_call=2)
    export_all(model, tmp_path / "onnx", settings, graphs=["block_step"])
    (spec,) = build_graph_specs(model, settings, ["block_step"], seed=3)
    for precision, tolerance in (("fp32", 1e-3), ("fp16", 5e-2)):
        lines: list[str] = []
        runners = load_or_build_engines(
            tmp_path / "onnx", tmp_path / "engines", options=BuildOptions(precision), log=lines.append
        )
        got = runners["block_step"]({n: t.cuda() for n, t in spec.example.items()})
        for name, reference in spec.reference.items():
            scale = max(1.0, float(reference.abs().max()))
            assert float((got[name].cpu().float() - reference).abs().max()) < tolerance * scale, (precision, name)
        assert any(line.startswith("building TensorRT") for line in lines)
        again: list[str] = []
        load_or_build_engines(
            tmp_path / "onnx", tmp_path / "engines", options=BuildOptions(precision), log=again.append
        )
        assert not any(line.startswith("building") for line in again), again
