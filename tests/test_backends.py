"""Static-buffer / CUDA-graph runners and the backend choice.

The static-buffer logic runs eagerly on the CPU here (the CUDA-graph capture/replay test
skips without CUDA). The backend choice is tested on this machine as it is (probed for real)
and, for the GPU branches, on described machines (`Capabilities` values).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.export.backend_select import (
    BACKENDS,
    Capabilities,
    probe_capabilities,
    select_backend,
)
from avatarforcing.engine.export.cuda_graphs import CACHE_CARRY, StaticGraphRunner
from avatarforcing.engine.export.graph_specs import ExportSettings, build_graph_specs, model_hash
from avatarforcing.engine.export.onnx_graphs import export_all
from avatarforcing.engine.export.rollout import EagerRunner, rollout_latents, rollout_noise
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream, StoredNoise, generate

SETTINGS = ExportSettings(nfe=4, frames_per_call=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> AvatarForcingModel:
    w2v = transformers.Wav2Vec2Config(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return AvatarForcingModel.with_formula_weights(ModelConfig.fixture_small(), wav2vec2_config=w2v)


@pytest.fixture(scope="module")
def specs(model):
    return {s.name: s for s in build_graph_specs(model, SETTINGS, ["first_clip", "block_step", "decoder"])}


# -- static buffers ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["block_step", "decoder"])
def test_static_runner_equals_eager_on_cpu(specs, name):
    spec = specs[name]
    runner = StaticGraphRunner.from_spec(spec, "cpu")
    assert not runner.use_cuda_graph
    out = runner(spec.example)
    for key, value in spec.reference.items():
        assert torch.equal(out[key], value), key
    assert all(out[k].dtype == torch.float32 for k in out)


def test_static_inputs_persist_and_outputs_are_static_buffers(specs):
    spec = specs["block_step"]
    runner = StaticGraphRunner.from_spec(spec, "cpu", copy_outputs=False)
    runner.set_inputs({n: spec.example[n] for n in ("r_s", "guidance")})  # constant per session
    varying = {n: t for n, t in spec.example.items() if n not in ("r_s", "guidance")}
    first = runner(varying)
    first_latents = first["latents"].clone()
    assert torch.equal(first_latents, spec.reference["latents"])
    second = runner({**varying, "noise": torch.zeros_like(varying["noise"])})
    assert second["latents"].data_ptr() == first["latents"].data_ptr() == runner.outputs["latents"].data_ptr()
    assert not torch.equal(first["latents"], first_latents)  # the static buffer was overwritten
    copying = StaticGraphRunner.from_spec(spec, "cpu")
    a = copying(spec.example)["latents"]
    copying({"noise": torch.zeros_like(varying["noise"])})
    assert torch.equal(a, spec.reference["latents"])  # clones are independent of later calls


def test_static_runner_rejects_bad_inputs(specs):
    spec = specs["block_step"]
    runner = StaticGraphRunner.from_spec(spec, "cpu")
    with pytest.raises(RuntimeError, match="inputs never set"):
        runner({"noise": spec.example["noise"]})
    with pytest.raises(ValueError, match="static shape"):
        runner.set_inputs({"noise": spec.example["noise"][:, :3]})
    with pytest.raises(KeyError, match="unknown input"):
        runner.set_inputs({"nosie": spec.example["noise"]})
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StaticGraphRunner.from_spec(spec, "cpu", use_cuda_graph=True)


def test_carry_feeds_the_caches_back(specs):
    spec = specs["block_step"]
    runner = StaticGraphRunner.from_spec(spec, "cpu")
    runner(spec.example)
    runner.carry(CACHE_CARRY)
    for out_name, in_name in CACHE_CARRY.items():
        assert torch.equal(runner.inputs[in_name], runner.outputs[out_name])


def test_rollout_through_static_runners_equals_motion_stream(model, specs):
    cfg, blocks = model.cfg, 3
    frames = cfg.clip_frames + blocks * cfg.block_frames
    gen = torch.Generator().manual_seed(7)
    conditions = [torch.randn(1, frames, 512, generator=gen) for _ in range(3)]
    r_s = torch.randn(1, 512, generator=gen) * 0.3
    noise = rollout_noise(cfg, blocks, seed=7)
    sampler = FlowMatchingEulerSampler(SETTINGS.nfe)
    stream = MotionStream(model.flow_transformer, r_s, sampler, GuidanceScales(), noise=StoredNoise(noise))
    reference = generate(stream, *conditions)
    runners = [StaticGraphRunner.from_spec(specs[n], "cpu") for n in ("first_clip", "block_step")]
    latents, caches = rollout_latents(cfg, *runners, conditions, r_s, GuidanceScales().as_tensor(), noise)
    assert torch.equal(latents, reference)
    assert torch.equal(caches["self_k"], stream.state.self_k)
    eager, _ = rollout_latents(
        cfg,
        EagerRunner(specs["first_clip"]),
        EagerRunner(specs["block_step"]),
        conditions,
        r_s,
        GuidanceScales().as_tensor(),
        noise,
    )
    assert torch.equal(eager, reference)


def test_bf16_autocast_keeps_float32_buffers_and_stays_close(specs):
    spec = specs["block_step"]
    out = StaticGraphRunner.from_spec(spec, "cpu", precision="bf16")(spec.example)
    for key, reference in spec.reference.items():
        assert out[key].dtype == torch.float32 and torch.isfinite(out[key]).all()
        scale = float(reference.abs().max())
        assert float((out[key] - reference).abs().max()) < 0.1 * scale, key
    assert not torch.equal(out["latents"], spec.reference["latents"])  # it did run in bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (none here)")
@pytest.mark.parametrize("name", ["block_step", "decoder"])
def test_cuda_graph_capture_and_replay(model, name):
    w2v = model.audio_encoder.wav2vec2.config
    cuda_model = AvatarForcingModel.with_formula_weights(model.cfg, wav2vec2_config=w2v).cuda()
    (spec,) = build_graph_specs(cuda_model, SETTINGS, [name])
    runner = StaticGraphRunner.from_spec(spec, "cuda")
    assert runner.use_cuda_graph
    for seed in (0, 1):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        feeds = {
            n: t + 0.01 * torch.randn(t.shape, generator=gen, device="cuda") if t.is_floating_point() else t
            for n, t in spec.example.items()
        }
        got, want = runner(feeds), spec.run_eager(feeds)
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-5, rtol=1e-5), key
    assert runner.graph is not None and runner.calls == 2


# -- backend choice ----------------------------------------------------------------------------
H100 = dict(
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    cuda_reason=None,
    cuda_graphs=True,
    onnxruntime_version="1.31.1",
    onnxruntime_reason=None,
)


def test_probe_tells_the_truth_about_this_machine():
    caps = probe_capabilities()
    assert (caps.gpu_name is not None) == torch.cuda.is_available()
    if caps.gpu_name is None:
        assert caps.cuda_reason and caps.available("cuda_eager").startswith("no CUDA device")
    if importlib.util.find_spec("tensorrt") is None:
        assert caps.tensorrt_version is None and "tensorrt" in caps.tensorrt_reason
    assert caps.onnx_exports is None and "avatarforcing graphs export" in caps.onnx_exports_reason


def test_selection_on_this_machine(model, tmp_path):
    export_all(model, tmp_path, SETTINGS, graphs=["audio_window"])
    digest = model_hash(model, model.cfg.to_dict(), SETTINGS)
    with_exports = select_backend(probe_capabilities(tmp_path, digest))
    without = select_backend(probe_capabilities())
    stale = probe_capabilities(tmp_path, "0" * 64)
    for choice in (with_exports, without):
        assert choice.backend in BACKENDS and "\n" not in choice.log_line()
        assert choice.log_line().startswith(f"backend: {choice.backend} (")
    if not torch.cuda.is_available():
        assert with_exports.backend == "onnxruntime_cpu" and "no CUDA device" in with_exports.reason
        assert without.backend == "torch_cpu" and "avatarforcing graphs export" in without.reason
        assert stale.onnx_exports is None and "another model" in stale.onnx_exports_reason
        assert select_backend(stale).backend == "torch_cpu"


def test_selection_order_on_described_machines():
    exports = dict(onnx_exports="/exports", onnx_exports_reason=None)
    trt = select_backend(Capabilities(**H100, tensorrt_version="10.13.0", tensorrt_reason=None, **exports))
    assert trt.backend == "tensorrt" and "H100" in trt.reason and "sm_90" in trt.reason and "10.13.0" in trt.reason
    missing = "tensorrt is not importable (ModuleNotFoundError)"
    no_trt = Capabilities(**H100, tensorrt_version=None, tensorrt_reason=missing, **exports)
    choice = select_backend(no_trt)
    assert choice.backend == "cuda_graphs" and "ModuleNotFoundError" in choice.reason
    no_graphs = Capabilities(**{**H100, "cuda_graphs": False}, tensorrt_version=None, tensorrt_reason="missing")
    assert select_backend(no_graphs).backend == "cuda_eager"
    trt_without_exports = Capabilities(**H100, tensorrt_version="10.13.0", tensorrt_reason=None)
    choice = select_backend(trt_without_exports)
    assert choice.backend == "cuda_graphs" and "graphs export" in choice.reason

    cpu = Capabilities(
        cuda_reason="PyTorch built without CUDA",
        tensorrt_reason="no tensorrt",
        onnxruntime_version="1.31.1",
        onnxruntime_reason=None,
        **exports,
    )
    assert select_backend(cpu).backend == "onnxruntime_cpu"
    assert select_backend(cpu, cpu_order=("torch_cpu", "onnxruntime_cpu")).backend == "torch_cpu"
    requested = select_backend(cpu, prefer="cuda_graphs")
    assert requested.backend == "onnxruntime_cpu" and requested.reason.startswith(
        "requested cuda_graphs is unavailable"
    )
    assert select_backend(cpu, prefer="torch_cpu").backend == "torch_cpu"
    no_ort = Capabilities(cuda_reason="x", tensorrt_reason="y", onnxruntime_reason="onnxruntime is not importable")
    choice = select_backend(no_ort)
    assert choice.backend == "torch_cpu" and "onnxruntime is not importable" in choice.reason
    with pytest.raises(ValueError, match="unknown backend"):
        cpu.available("vulkan")
