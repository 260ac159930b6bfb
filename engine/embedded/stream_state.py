"""A default-avatar stream saved as bytes, to resume it in another process or on another machine.

What a default-avatar session carries from one tick to the next: the `MotionStream` state
(KV caches, context latents, buffered condition frames, frame counter, guidance and the noise
generator's state: `StreamState`), the two parties' streaming audio front ends
(`StreamingAudioConditions`: 240 samples of history and < 640 pending samples each, and the
voicing history's floor and counters for a model that takes it), the output smoothing's filter
(`MotionSmoother`: last value, speed and time), the number of blocks emitted and whether the
inputs ended. `EmbeddedStreamState.to_bytes()` packs all of it into one
safetensors blob (no pickle: a blob from an untrusted peer can at worst fail to load), about
0.4 MB with the shipped model; a stream restored from it continues exactly as the saved one
would have (same latents, bit for bit, on the same device and torch build).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarforcing.engine.stream import MotionStream

PARTIES = ("avatar", "user")
STATE_FORMAT = 3  # bumped when the blob's layout changes; older blobs are refused, not misread


@dataclass
class EmbeddedStreamState:
    """`stream`: the `MotionStream` state as safetensors bytes; `avatar_audio`/`user_audio`:
    `StreamingAudioConditions.get_state()` of the two parties' audio front ends (name -> array);
    `blocks`: blocks emitted so far; `ended`: the inputs ended (`finish` was called);
    `smoother`: `MotionSmoother.state()` (value and speed ``float64 [13]`` or None, time or
    None: nothing filtered yet)."""

    stream: bytes
    avatar_audio: dict[str, np.ndarray]
    user_audio: dict[str, np.ndarray]
    blocks: int = 0
    ended: bool = False
    smoother: dict | None = None

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        arrays = {
            "stream": np.frombuffer(self.stream, np.uint8),
            **{f"avatar_{name}": value for name, value in self.avatar_audio.items()},
            **{f"user_{name}": value for name, value in self.user_audio.items()},
            "counters": np.array([STATE_FORMAT, self.blocks, int(self.ended)], np.int64),
        }
        smoother = self.smoother or {}
        if smoother.get("time") is not None:  # absent arrays: the filter has seen nothing yet
            arrays["smoother_value"] = np.asarray(smoother["value"], np.float64)
            arrays["smoother_speed"] = np.asarray(smoother["speed"], np.float64)
            arrays["smoother_time"] = np.array([smoother["time"]], np.float64)
        return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})

    @classmethod
    def from_bytes(cls, blob: bytes) -> EmbeddedStreamState:
        """Parse `to_bytes`' output; anything else raises ValueError saying what is wrong."""
        from safetensors.numpy import load

        try:
            arrays = load(bytes(blob))
        except Exception as error:  # safetensors raises its own error types for a corrupt header
            raise ValueError(f"not a saved default-avatar stream: {error}") from None
        missing = {
            "stream",
            *(f"{party}_mel_{part}" for party in PARTIES for part in ("history", "pending")),
            "counters",
        } - set(arrays)
        if missing:
            raise ValueError(f"not a saved default-avatar stream: missing {sorted(missing)}")
        counters = arrays["counters"]
        if counters.shape != (3,) or int(counters[0]) != STATE_FORMAT:
            raise ValueError(f"saved stream has format {counters[:1].tolist()}, this version reads {STATE_FORMAT}")
        return cls(
            stream=arrays["stream"].tobytes(),
            avatar_audio=_party_state(arrays, "avatar"),
            user_audio=_party_state(arrays, "user"),
            blocks=int(counters[1]),
            ended=bool(counters[2]),
            smoother={
                "value": arrays.get("smoother_value"),
                "speed": arrays.get("smoother_speed"),
                "time": float(arrays["smoother_time"][0]) if "smoother_time" in arrays else None,
            },
        )


def _party_state(arrays: dict[str, np.ndarray], party: str) -> dict[str, np.ndarray]:
    """The arrays saved under ``{party}_`` (the `StreamingAudioConditions` state of one party)."""
    prefix = f"{party}_"
    return {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}


def stream_to_bytes(stream: MotionStream) -> bytes:
    """`MotionStream.save_state` into bytes (it writes a file: a private temporary one here)."""
    with tempfile.TemporaryDirectory(prefix="avatarforcing-state-") as folder:
        path = Path(folder) / "state.safetensors"
        stream.save_state(path)
        return path.read_bytes()


def stream_from_bytes(stream: MotionStream, blob: bytes) -> None:
    """Replace `stream`'s state by `stream_to_bytes`' output (`MotionStream.load_state`); a
    blob that does not fit the stream's model raises ValueError."""
    with tempfile.TemporaryDirectory(prefix="avatarforcing-state-") as folder:
        path = Path(folder) / "state.safetensors"
        path.write_bytes(blob)
        try:
            stream.load_state(path)
        except Exception as error:  # a corrupt or foreign blob: one message, not a safetensors trace
            raise ValueError(f"saved motion stream does not load: {type(error).__name__}: {error}") from None
    widths = {name: buf.frames.shape[-1] for name, buf in stream.state.buffers.items()}
    expected = {"avatar_audio": stream.cfg.dim_a, "user_audio": stream.cfg.dim_a, "user_motion": stream.cfg.dim_w}
    if widths != expected:
        raise ValueError(f"saved motion stream has condition widths {widths}, this model needs {expected}")
