"""Reading weight files safely: tensors only, never pickled code.

- `.pth` / `.pt` / `.bin`: `torch.load(map_location="cpu", weights_only=True)`. A file whose
  pickle references anything but tensors and plain containers (e.g. `os.system` via
  `__reduce__`) is refused with `CheckpointError` before any of it runs.
- `.safetensors`: `safetensors.torch.load_file` (no code path at all).
- Nested training checkpoints (`{"state_dict": {...}}`, `{"model": {...}, "optimizer": ...}`)
  are unwrapped to the flat name -> tensor mapping.
- A HuggingFace model folder (`config.json` + `model.safetensors` or `pytorch_model.bin`,
  optionally sharded with an index file) is read without network access.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Nesting keys of training checkpoints, in order of preference when several hold tensors.
NESTING_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema", "state")
SAFETENSORS_SUFFIX = ".safetensors"


class CheckpointError(Exception):
    """A weight file cannot be used: unreadable, unsafe, or not matching the model.

    `report` holds the `LoadReport` when the error comes from key/shape checks.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class TensorFile:
    """Flat tensors read from one file. `non_tensors`: top-level entries that were not tensors."""

    path: Path
    tensors: dict[str, Tensor]
    non_tensors: list[str] = field(default_factory=list)


def _torch_load(path: Path) -> Any:
    """`torch.load` restricted to tensors (`weights_only=True`), on the CPU."""
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format; avoids a second copy in RAM
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        detail = next(
            (line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else ""
        ).strip()
        if "GLOBAL" not in detail:
            # the bytes are not a pickle at all (random bytes, a truncated or foreign file): torch's
            # restricted unpickler stops at the first opcode it does not know
            raise CheckpointError(
                f"cannot read {path}: it is neither safetensors nor a PyTorch checkpoint (its bytes do not "
                f"parse as a pickle: {detail}); the file is corrupt, truncated or of another kind — download it again"
            ) from error
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint — its pickle refers to "
            f"Python objects or code, which is never unpickled here (torch.load weights_only=True "
            f"rejected it: {detail}). Only state dicts of tensors are accepted; if you "
            f"trust the file, re-save its tensors (e.g. as safetensors) in a trusted environment."
        ) from error
    except Exception as error:  # torch raises many kinds on a corrupt or foreign file
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from error


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} as safetensors: {error}") from error


def _holds_tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, Tensor) for v in value.values())


def unwrap_state_dict(obj: Any, path: Path) -> TensorFile:
    """Descend through nesting (`{"state_dict": ...}`, `{"model": ...}`) to the flat tensor map.

    A mapping with tensors at its top level is the state dict (its other entries are listed in
    `non_tensors`). Otherwise the unique child mapping holding tensors is taken, or, among
    several, the first of `NESTING_KEYS`; anything else is an error naming the top-level keys.
    """
    trail = []
    while isinstance(obj, Mapping) and not _holds_tensors(obj):
        children = [k for k, v in obj.items() if isinstance(v, Mapping) and _nested_tensors(v)]
        if not children:
            break
        if len(children) == 1:
            key = children[0]
        else:
            key = next((k for k in NESTING_KEYS if k in children), None)
            if key is None:
                raise CheckpointError(
                    f"{path}: ambiguous checkpoint, several entries hold tensors ({', '.join(map(str, children))}); "
                    "extract the model's state dict into its own file"
                )
        trail.append(str(key))
        obj = obj[key]
    if not isinstance(obj, Mapping) or not _holds_tensors(obj):
        kind = type(obj).__name__
        keys = ", ".join(map(str, list(obj)[:10])) if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"{path}: no state dict of tensors found (top level is a {kind}{': ' + keys if keys else ''})"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    non_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    return TensorFile(path=path, tensors=tensors, non_tensors=non_tensors)


def _nested_tensors(value: Mapping) -> bool:
    """Whether a mapping holds tensors at its top level or in nested mappings."""
    return any(isinstance(v, Tensor) or (isinstance(v, Mapping) and _nested_tensors(v)) for v in value.values())


def read_tensor_file(path: str | Path) -> TensorFile:
    """Read one weight file (`.safetensors`, or a torch pickle read with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        return TensorFile(path=path, tensors=_safetensors_load(path))
    return unwrap_state_dict(_torch_load(path), path)


@dataclass
class HFFolder:
    """A local HuggingFace model folder: its `config.json` and all weight tensors."""

    path: Path
    config: dict[str, Any]
    weight_files: list[Path]
    tensors: dict[str, Tensor]


_WEIGHT_CHOICES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


def _weight_files(folder: Path) -> list[Path]:
    for single, index in _WEIGHT_CHOICES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as error:
                raise CheckpointError(f"{folder / index}: not a valid shard index ({error})") from error
            return [folder / name for name in sorted(set(weight_map.values()))]
    names = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors or pytorch_model.bin); the folder holds {names}"
    )


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; `CheckpointError` naming the file when it is unreadable or not
    an object."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def read_hf_folder(folder: str | Path) -> HFFolder:
    """Read `config.json` and the weights of a local HF folder; never touches the network."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: config.json is missing (expected a HuggingFace model folder)")
    config = read_json_object(config_path)
    files = _weight_files(folder)
    tensors: dict[str, Tensor] = {}
    for path in files:
        part = read_tensor_file(path)
        overlap = tensors.keys() & part.tensors.keys()
        if overlap:
            raise CheckpointError(f"{path}: keys repeated across shards: {', '.join(sorted(overlap)[:5])}")
        tensors.update(part.tensors)
    return HFFolder(path=folder, config=config, weight_files=files, tensors=tensors)
