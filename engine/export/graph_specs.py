"""The exported graphs: their modules, named inputs/outputs, example inputs, and the model hash.

`build_graph_specs(model, ...)` returns one `GraphSpec` per per-block graph with fixed shapes:

* `first_clip`: noise [B,50,512], avatar_audio, user_audio, user_motion [B,50,512], r_s [B,512],
  guidance [2] -> latents [B,50,512], self_k_out, self_v_out [D,3B,H,38,d], cross_k_out,
  cross_v_out [D,3B,H,2,d].
* `block_step`: noise [B,10,512], context [B,2,512], avatar_audio, user_audio, user_motion
  [B,12,512] (frames t-2..t+9), r_s, self_k, self_v, cross_k, cross_v, guidance [2] -> latents
  [B,10,512], self_k_out, self_v_out, cross_k_out, cross_v_out.
* `decoder`: latents [N,512], s_r [1,512], feat_8 .. feat_S [1,C,r,r] -> frames [N,3,S,S].
* `motion_encoder`: frames [N,3,S,S] -> motion [N,512].
* `audio_window` (`StreamingWindowEncoder`): samples [1,(hop+lookahead)*640], context
  [1,ctx,Cc], gn_sum, gn_sumsq [1,C0], gn_weight [1,1] -> features [1,hop,512], context_out,
  gn_sum_out, gn_sumsq_out, gn_weight_out.

(N frames per call, one block = 10 by default; D depth, H heads, d head width; ctx the audio
context frames, Cc the conv-feature and C0 the first conv's channels; the sizes are the official
model's, the generator graphs of another `ModelConfig` take its dim_w / dim_a widths and its
clip and block lengths.) The model is an `AvatarForcingModel` (every graph) or a bare
`FlowTransformer` (`GraphModel`; the generator graphs need nothing else, e.g. the embedded
default avatar): `graphs_of(model)` says which. Example inputs are
realistic: the block step's caches and context come from running the first clip, the audio
window's context and running statistics from one window after a silent stream start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from avatarforcing.engine.export.graph_modules import (
    DecoderGraph,
    MotionEncoderGraph,
    feature_input_names,
    identity_feeds,
)
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.generator_step import BlockStep, FirstClipStep
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.streaming_audio import StreamingAudioConfig, StreamingWindowEncoder
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME

GRAPH_NAMES = ("first_clip", "block_step", "decoder", "motion_encoder", "audio_window")
GENERATOR_GRAPHS = ("first_clip", "block_step")
# what the graphs are built from: the whole official model, or only a flow transformer (whose
# `cfg` is its ModelConfig), which has the generator graphs alone
GraphModel = AvatarForcingModel | FlowTransformer
STEP_OUTPUTS = ("latents", "self_k_out", "self_v_out", "cross_k_out", "cross_v_out")
AUDIO_OUTPUTS = ("features", "context_out", "gn_sum_out", "gn_sumsq_out", "gn_weight_out")
CACHE_NAMES = ("self_k", "self_v", "cross_k", "cross_v")


@dataclass(frozen=True)
class TensorSpec:
    """Name, fixed shape and dtype (numpy name, e.g. "float32") of one graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def of(cls, name: str, tensor: Tensor) -> TensorSpec:
        return cls(name, tuple(int(s) for s in tensor.shape), str(tensor.dtype).removeprefix("torch."))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping) -> TensorSpec:
        return cls(data["name"], tuple(int(s) for s in data["shape"]), data["dtype"])


@dataclass
class GraphSpec:
    """One exportable graph: `module(*inputs)` -> outputs, in the order of the specs."""

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example: dict[str, Tensor]  # realistic example inputs by name
    reference: dict[str, Tensor] = field(default_factory=dict)  # module outputs on `example`

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    def example_args(self) -> tuple[Tensor, ...]:
        return tuple(self.example[n] for n in self.input_names)

    @torch.no_grad()
    def run_eager(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the PyTorch module on named inputs -> named outputs."""
        result = self.module(*(feeds[n] for n in self.input_names))
        if isinstance(result, Tensor):
            result = (result,)
        return dict(zip(self.output_names, result))


@dataclass(frozen=True)
class ExportSettings:
    """What besides the weights shapes the graphs (part of the model hash)."""

    nfe: int = 10
    batch: int = 1  # B of the generator graphs
    frames_per_call: int | None = None  # N of the decoder / motion encoder (None: one block, 10)
    audio: StreamingAudioConfig = field(default_factory=StreamingAudioConfig)

    def image_frames(self, cfg) -> int:
        return self.frames_per_call or cfg.block_frames

    def to_dict(self) -> dict:
        return {
            "nfe": self.nfe,
            "batch": self.batch,
            "frames_per_call": self.frames_per_call,
            "audio": dataclasses.asdict(self.audio),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ExportSettings:
        try:
            audio = StreamingAudioConfig(**data["audio"])
        except TypeError as error:  # fields renamed or removed since the export
            raise ValueError(f"export settings of another StreamingAudioConfig ({error}); re-export") from error
        return cls(
            nfe=int(data["nfe"]), batch=int(data["batch"]), frames_per_call=data.get("frames_per_call"), audio=audio
        )


def model_hash(model: nn.Module, config: Mapping | None = None, settings: ExportSettings | None = None) -> str:
    """sha256 (hex) over the model config, export settings and every state-dict tensor
    (name, dtype, shape, bytes). Equal weights and settings give equal hashes on any machine."""
    digest = hashlib.sha256()
    meta = {"config": dict(config or {}), "settings": settings.to_dict() if settings else None}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def graphs_of(model: GraphModel) -> tuple[str, ...]:
    """The graphs `model` has: all of `GRAPH_NAMES` for an `AvatarForcingModel`, the
    `GENERATOR_GRAPHS` for a bare `FlowTransformer`."""
    return GRAPH_NAMES if isinstance(model, AvatarForcingModel) else GENERATOR_GRAPHS


def generator_of(model: GraphModel) -> FlowTransformer:
    """The flow transformer that the generator graphs run."""
    return model.flow_transformer if isinstance(model, AvatarForcingModel) else model


def _specs(names: Iterable[str], tensors: Sequence[Tensor]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.of(n, t) for n, t in zip(names, tensors))


def _finish(name: str, module: nn.Module, example: dict[str, Tensor], output_names: Sequence[str]) -> GraphSpec:
    module.eval()
    with torch.no_grad():
        result = module(*example.values())
    result = (result,) if isinstance(result, Tensor) else tuple(result)
    return GraphSpec(
        name,
        module,
        _specs(example, example.values()),
        _specs(output_names, result),
        example,
        dict(zip(output_names, result)),
    )


def build_graph_specs(
    model: GraphModel,
    settings: ExportSettings | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> list[GraphSpec]:
    """GraphSpecs (with example inputs and reference outputs) of the requested graphs (None:
    every graph `model` has, `graphs_of`), on the model's device and dtype. Runs each module
    once (and the first clip once more for the block step's state)."""
    names = graphs_of(model) if names is None else tuple(names)
    unknown = set(names) - set(graphs_of(model))
    if unknown:
        raise ValueError(f"unknown graphs {sorted(unknown)}; {type(model).__name__} has {', '.join(graphs_of(model))}")
    settings = settings or ExportSettings()
    cfg = model.cfg
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

    b, width, audio_width = settings.batch, cfg.dim_w, cfg.dim_a
    k, m, c = cfg.clip_frames, cfg.block_frames, cfg.context_frames
    sampler = FlowMatchingEulerSampler(settings.nfe, cfg.num_train_timestep)
    r_s = randn(b, width, scale=0.3)
    guidance = GuidanceScales().as_tensor().to(device, dtype)
    specs: dict[str, GraphSpec] = {}

    if "first_clip" in names or "block_step" in names:
        first = FirstClipStep(generator_of(model), sampler).to(device)
        example = {
            "noise": randn(b, k, width),
            "avatar_audio": randn(b, k, audio_width),
            "user_audio": randn(b, k, audio_width),
            "user_motion": randn(b, k, width, scale=0.3),
            "r_s": r_s,
            "guidance": guidance,
        }
        specs["first_clip"] = _finish("first_clip", first, example, STEP_OUTPUTS)
    if "block_step" in names:
        state = specs["first_clip"].reference
        block = BlockStep(generator_of(model), sampler).to(device)
        n = c + m
        example = {
            "noise": randn(b, m, width),
            "context": state["latents"][:, -c:].clone(),
            "avatar_audio": randn(b, n, audio_width),
            "user_audio": randn(b, n, audio_width),
            "user_motion": randn(b, n, width, scale=0.3),
            "r_s": r_s,
            **{name: state[f"{name}_out"].clone() for name in CACHE_NAMES},
            "guidance": guidance,
        }
        specs["block_step"] = _finish("block_step", block, example, STEP_OUTPUTS)

    size, frames = cfg.input_size, settings.image_frames(cfg)
    if "decoder" in names:
        mae = model.motion_autoencoder
        with torch.no_grad():
            identity = mae.encode_reference(randn(1, 3, size, size).clamp(-1, 1))
        example = {"latents": randn(frames, width, scale=0.3), **identity_feeds(identity, size)}
        specs["decoder"] = _finish("decoder", DecoderGraph(mae), example, ("frames",))
    if "motion_encoder" in names:
        example = {"frames": (torch.rand(frames, 3, size, size, generator=gen) * 2 - 1).to(device, dtype)}
        encoder = MotionEncoderGraph(model.motion_autoencoder)
        specs["motion_encoder"] = _finish("motion_encoder", encoder, example, ("motion",))
    if "audio_window" in names:
        window = StreamingWindowEncoder(model.audio_encoder, settings.audio)
        audio = settings.audio
        gn = window.groupnorm_channels
        zeros = [torch.zeros(1, n, device=device, dtype=dtype) for n in (gn, gn, 1)]
        with torch.no_grad():  # stream start (silence context), then one window: realistic state
            silent_frame = torch.zeros(1, SAMPLES_PER_FRAME, device=device, dtype=dtype)
            silence, *_ = window.frame_conv_features(silent_frame, *zeros)
            context = silence.expand(1, audio.context_frames, silence.shape[-1]).contiguous()
            _, context, *state = window(randn(1, audio.new_samples), context, *zeros)
        example = {
            "samples": randn(1, audio.new_samples),
            "context": context,
            "gn_sum": state[0],
            "gn_sumsq": state[1],
            "gn_weight": state[2],
        }
        specs["audio_window"] = _finish("audio_window", window, example, AUDIO_OUTPUTS)
    return [specs[n] for n in names]


def numpy_feeds(feeds: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Named tensors -> contiguous numpy arrays (ONNX Runtime inputs)."""
    return {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in feeds.items()}


__all__ = [
    "AUDIO_OUTPUTS",
    "CACHE_NAMES",
    "GENERATOR_GRAPHS",
    "GRAPH_NAMES",
    "STEP_OUTPUTS",
    "ExportSettings",
    "GraphModel",
    "GraphSpec",
    "TensorSpec",
    "build_graph_specs",
    "feature_input_names",
    "generator_of",
    "graphs_of",
    "model_hash",
    "numpy_feeds",
]
