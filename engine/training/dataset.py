"""The training dataset: one safetensors file of per-frame features per conversation side.

Layout of a dataset directory ROOT:
- `manifest.json`: {"format": "avatarforcing-dataset", "version": 1, "space": "official"|"default",
  "fps": 25, "dim_a": int, "dim_w": int, "items": [{"id", "file", "frames", "split", "source"}...],
  "info": {...}}
- `items/ID.safetensors`, float32: avatar_audio [T, dim_a], user_audio [T, dim_a],
  avatar_motion [T, dim_w], user_motion [T, dim_w] (zeros = no face = null condition),
  reference [dim_w], optional avatar_energy [T] (RMS of the avatar's raw audio per 40 ms frame),
  optional loss_weight [T, dim_w] (>= 0: the weight of each frame's and motion dim's squared
  flow-matching error in training; 1 where absent).

`create_dataset` writes the header, `write_item` adds or replaces one item (manifest updated
atomically), `ConversationDataset` reads one split.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatarforcing.schemas.media_rates import FRAME_RATE

FORMAT_NAME = "avatarforcing-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPACES = ("official", "default")
SPLITS = ("train", "heldout")
SEQUENCE_KEYS = ("avatar_audio", "user_audio", "avatar_motion", "user_motion")
REQUIRED_KEYS = (*SEQUENCE_KEYS, "reference")
OPTIONAL_KEYS = ("avatar_energy", "loss_weight")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


class DatasetError(ValueError):
    """A dataset directory or item that does not follow the format; the message says what to fix."""


@dataclass(frozen=True)
class DatasetItem:
    """One manifest entry: item `id`, `file` relative to the root, `frames` T, `split`, `source`."""

    id: str
    file: str
    frames: int
    split: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file": self.file, "frames": self.frames, "split": self.split, "source": self.source}


@dataclass(frozen=True)
class DatasetHeader:
    space: str
    fps: int
    dim_a: int
    dim_w: int
    info: dict[str, Any]


def conversation_sides(
    audio: Sequence[np.ndarray],
    motion: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    energy: Sequence[np.ndarray],
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Both sides of a two-party conversation as ``(suffix, tensors)`` items: ``a`` has party 0
    as the avatar and party 1 as the user, ``b`` the reverse. Each argument holds the two
    parties' arrays: audio features ``[T, dim_a]``, motion ``[T, dim_w]``, reference
    ``[dim_w]``, audio energy ``[T]``."""
    return [
        (
            suffix,
            {
                "avatar_audio": audio[me],
                "user_audio": audio[other],
                "avatar_motion": motion[me],
                "user_motion": motion[other],
                "reference": reference[me],
                "avatar_energy": energy[me],
            },
        )
        for suffix, me, other in (("a", 0, 1), ("b", 1, 0))
    ]


def _write_json_atomic(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed manifest of ROOT, checked for format and version."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: not a dataset directory (create one with create_dataset or `avatarforcing data prepare`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: format is not {FORMAT_NAME!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: version {manifest.get('version')!r} is not supported (expected {FORMAT_VERSION})")
    return manifest


def create_dataset(
    root: str | os.PathLike,
    space: str,
    dim_a: int,
    dim_w: int,
    info: Mapping[str, Any] | None = None,
    fps: int = FRAME_RATE,
) -> Path:
    """Create ROOT with an empty manifest (or check that an existing one has the same header)."""
    if space not in SPACES:
        raise DatasetError(f"space must be one of {SPACES}, got {space!r}")
    if min(dim_a, dim_w, fps) < 1:
        raise DatasetError(f"dim_a, dim_w and fps must be positive, got {dim_a}, {dim_w}, {fps}")
    root = Path(root)
    if (root / MANIFEST).exists():
        manifest = read_manifest(root)
        found = (manifest["space"], manifest["dim_a"], manifest["dim_w"], manifest["fps"])
        if found != (space, dim_a, dim_w, fps):
            raise DatasetError(
                f"{root}: existing dataset has space/dim_a/dim_w/fps {found}, not {(space, dim_a, dim_w, fps)}"
            )
        return root
    (root / "items").mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "space": space,
        "fps": fps,
        "dim_a": dim_a,
        "dim_w": dim_w,
        "items": [],
        "info": dict(info or {}),
    }
    _write_json_atomic(root / MANIFEST, manifest)
    return root


def _check_tensors(tensors: Mapping[str, np.ndarray], dim_a: int, dim_w: int, item_id: str) -> dict[str, np.ndarray]:
    missing = [k for k in REQUIRED_KEYS if k not in tensors]
    unknown = [k for k in tensors if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if missing or unknown:
        raise DatasetError(
            f"item {item_id}: missing {missing}, unknown {unknown} (expected {REQUIRED_KEYS} + optional {OPTIONAL_KEYS})"
        )
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    frames = arrays["avatar_audio"].shape[0] if arrays["avatar_audio"].ndim == 2 else -1
    expected = {
        "avatar_audio": (frames, dim_a),
        "user_audio": (frames, dim_a),
        "avatar_motion": (frames, dim_w),
        "user_motion": (frames, dim_w),
        "reference": (dim_w,),
        "avatar_energy": (frames,),
        "loss_weight": (frames, dim_w),
    }
    wrong = [f"{k} {arrays[k].shape} (expected {expected[k]})" for k in arrays if arrays[k].shape != expected[k]]
    if frames < 1 or wrong:
        raise DatasetError(f"item {item_id}: wrong shapes: {', '.join(wrong) or 'no frames'}")
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise DatasetError(f"item {item_id}: non-finite values in {bad}")
    if "loss_weight" in arrays and (arrays["loss_weight"] < 0).any():
        raise DatasetError(f"item {item_id}: negative values in loss_weight")
    return arrays


def write_item(
    root: str | os.PathLike, item_id: str, tensors: Mapping[str, np.ndarray], split: str, source: str = ""
) -> DatasetItem:
    """Write `items/ID.safetensors` and add (or replace) its manifest entry atomically.

    tensors: the keys of the module docstring as arrays (cast to float32); split: "train" or
    "heldout". The dataset must exist (`create_dataset`)."""
    from safetensors.numpy import save_file

    if not _ID_PATTERN.match(item_id):
        raise DatasetError(f"item id {item_id!r} may only contain letters, digits, '.', '_' and '-'")
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    manifest = read_manifest(root)
    arrays = _check_tensors(tensors, manifest["dim_a"], manifest["dim_w"], item_id)
    relative = f"items/{item_id}.safetensors"
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(arrays, str(partial))
    os.replace(partial, target)
    item = DatasetItem(item_id, relative, int(arrays["avatar_audio"].shape[0]), split, source)
    manifest = read_manifest(root)  # re-read: keep entries written meanwhile by this process
    manifest["items"] = [e for e in manifest["items"] if e["id"] != item_id] + [item.to_dict()]
    _write_json_atomic(root / MANIFEST, manifest)
    return item


def read_item(root: str | os.PathLike, item: DatasetItem) -> dict[str, Tensor]:
    """All tensors of one item as float32 torch tensors."""
    from safetensors.torch import load_file

    path = Path(root) / item.file
    if not path.is_file():
        raise DatasetError(f"{path} listed in the manifest is missing")
    return load_file(str(path))


class ConversationDataset:
    """Items of one split of a dataset directory.

    `ds[i]` -> dict of float32 tensors of the whole item (see module docstring) plus "frames".
    `sample_window(rng, frames)` -> a random window of `frames` frames from a random item long
    enough (chosen with probability proportional to its number of windows).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train") -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        self.header = DatasetHeader(
            manifest["space"], manifest["fps"], manifest["dim_a"], manifest["dim_w"], manifest.get("info", {})
        )
        items = [DatasetItem(**e) for e in manifest["items"]]
        self.items = [it for it in items if split is None or it.split == split]
        self._cache: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if index not in self._cache:
            self._cache[index] = read_item(self.root, self.items[index])
        return self._cache[index]

    def sample_window(self, rng: np.random.Generator, frames: int) -> dict[str, Tensor]:
        """A window of `frames` frames: sequence tensors [frames, D], reference [dim_w], plus
        "item" (index) and "start" (first frame) as 0-d int64 tensors."""
        counts = np.array([max(0, it.frames - frames + 1) for it in self.items], dtype=np.float64)
        if counts.sum() == 0:
            longest = max((it.frames for it in self.items), default=0)
            raise DatasetError(
                f"{self.root}: no item has {frames} frames (longest: {longest}); use a shorter --window or longer conversations"
            )
        index = int(rng.choice(len(self.items), p=counts / counts.sum()))
        start = int(rng.integers(0, counts[index]))
        item = self[index]
        window = {k: item[k][start : start + frames] for k in (*SEQUENCE_KEYS, *OPTIONAL_KEYS) if k in item}
        window["reference"] = item["reference"]
        window["item"] = torch.tensor(index)
        window["start"] = torch.tensor(start)
        return window
