"""PyTorch backend with static input/output buffers and CUDA-graph capture/replay.

`StaticGraphRunner` owns one tensor per graph input and output (the shapes of a `GraphSpec`).
A call copies the given inputs into the static inputs, runs the module, and leaves the results
in the static outputs. On CUDA the module is captured once as a `torch.cuda.CUDAGraph`
(after warm-up iterations on a side stream) and every later call is a single `replay()`;
elsewhere (or with `use_cuda_graph=False`) the same buffer logic runs eagerly, which is what
the CPU tests exercise.

Inputs keep their values between calls, so constant inputs (r_s, guidance, a portrait's
identity features) are given once; `carry()` copies outputs into inputs on the device (the
caches going around the block loop) without leaving it.

Precision: the buffers keep the spec's dtypes (float32); `precision="bf16"`/`"fp16"` runs the
module under `torch.autocast` (weight-cast cache disabled, as graph capture requires).

Requirements for capture: fixed shapes (given), no host synchronisation inside the module,
and window-local RoPE (`MotionStream(rope_offset=None)`, the default): `set_rope_origin`
re-registers buffers, which would invalidate captured addresses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from avatarforcing.engine.export.graph_specs import (
    CACHE_NAMES,
    ExportSettings,
    GraphSpec,
    TensorSpec,
    build_graph_specs,
)
from avatarforcing.engine.official.model import AvatarForcingModel

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class StaticGraphRunner:
    """Static-buffer execution of `module` with the I/O of `inputs` / `outputs` (see module doc).

    `runner(feeds)` -> {output name: tensor}; with `copy_outputs=False` the returned tensors are
    the static output buffers themselves (overwritten by the next call).
    """

    def __init__(
        self,
        module: nn.Module,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str | torch.device,
        precision: str = "fp32",
        use_cuda_graph: bool | None = None,
        warmup: int = 2,
        copy_outputs: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        self.use_cuda_graph = self.device.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        if self.use_cuda_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.module = module.eval()
        self.precision = precision
        self.warmup = warmup
        self.copy_outputs = copy_outputs
        self.input_specs, self.output_specs = tuple(inputs), tuple(outputs)
        self.inputs = {s.name: torch.zeros(s.shape, dtype=s.torch_dtype, device=self.device) for s in inputs}
        self.outputs = {s.name: torch.zeros(s.shape, dtype=s.torch_dtype, device=self.device) for s in outputs}
        self._unset = set(self.inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    @classmethod
    def from_spec(cls, spec: GraphSpec, device: str | torch.device, **kwargs) -> StaticGraphRunner:
        return cls(spec.module, spec.inputs, spec.outputs, device, **kwargs)

    # -- buffers -------------------------------------------------------------------------------
    def set_inputs(self, feeds: Mapping[str, Tensor]) -> None:
        """Copy named tensors into the static inputs (shapes must match exactly)."""
        for name, value in feeds.items():
            if name not in self.inputs:
                raise KeyError(f"unknown input {name!r}; inputs are {', '.join(self.inputs)}")
            buffer = self.inputs[name]
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(f"input {name}: shape {tuple(value.shape)} != static shape {tuple(buffer.shape)}")
            buffer.copy_(value, non_blocking=True)
            self._unset.discard(name)

    def carry(self, mapping: Mapping[str, str]) -> None:
        """Copy static outputs into static inputs, e.g. {"self_k_out": "self_k"} (on the device)."""
        self.set_inputs({dst: self.outputs[src] for src, dst in mapping.items()})

    # -- execution ---------------------------------------------------------------------------
    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def _compute(self) -> None:
        with torch.no_grad(), self._autocast():
            result = self.module(*(self.inputs[s.name] for s in self.input_specs))
        result = (result,) if isinstance(result, Tensor) else result
        for spec, value in zip(self.output_specs, result):
            self.outputs[spec.name].copy_(value)

    def capture(self) -> None:
        """Warm up on a side stream, then capture one computation as a CUDA graph."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._compute()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use CUDA
            self._compute()
        self.graph = graph

    def run(self) -> None:
        """Compute from the current static inputs into the static outputs."""
        if self._unset:
            raise RuntimeError(f"inputs never set: {', '.join(sorted(self._unset))}")
        if self.use_cuda_graph:
            if self.graph is None:
                self.capture()
            self.graph.replay()
        else:
            self._compute()
        self.calls += 1

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.set_inputs(feeds)
        self.run()
        if self.copy_outputs:
            return {n: t.clone() for n, t in self.outputs.items()}
        return dict(self.outputs)


CACHE_CARRY = {f"{n}_out": n for n in CACHE_NAMES}


def static_runners(
    model: AvatarForcingModel,
    device: str | torch.device,
    settings: ExportSettings | None = None,
    graphs: Sequence[str] = ("first_clip", "block_step", "decoder"),
    precision: str = "fp32",
    use_cuda_graph: bool | None = None,
) -> dict[str, StaticGraphRunner]:
    """Static-buffer runners (CUDA graphs on CUDA) for `graphs` of a model already on `device`."""
    specs = build_graph_specs(model, settings, graphs)
    return {
        s.name: StaticGraphRunner.from_spec(s, device, precision=precision, use_cuda_graph=use_cuda_graph)
        for s in specs
    }


__all__ = ["CACHE_CARRY", "PRECISIONS", "StaticGraphRunner", "static_runners"]
