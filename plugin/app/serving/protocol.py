"""The avatar session wire protocol (version 1): one binary WebSocket message per `Message`.

Layout of a message: ``b"AF"``, one byte version (`VERSION`), a little-endian ``uint32``
header length, the header (UTF-8 JSON object: ``"type"``, the message's fields and
``"parts": [[name, nbytes], ...]``), then the parts' bytes back to back. Binary parts carry
media without base64: audio as 16 kHz mono PCM (``s16`` little-endian or ``f32``
little-endian), the user's frames as JPEG or as already-extracted face parameters
(``float32 [13]``), motion latents as ``float32``, rendered frames as JPEG (RGB) or PNG (RGBA,
alpha kept), saved stream states as opaque bytes.

Client → server: `Hello` (first message; token, settings, optionally a saved state to resume
from), `Tick` (one input tick), `Guidance`, `Finish`. Server → client: `Ready` (answer to
`Hello`), `Blocks` (motion blocks), `Checkpoint` (the session's saved state),
`Ended` (after `Finish`, every block sent). A message that breaks this contract raises
`ProtocolError` with a reason meant for the peer; the server closes that session with it
(WebSocket close code 1003 or 1008), never the replica.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from avatarforcing.schemas.media_rates import SAMPLE_RATE, SAMPLES_PER_FRAME

MAGIC = b"AF"
VERSION = 1
_PREFIX = struct.Struct("<2sBI")  # magic, version, header length
MAX_HEADER_BYTES = 64 * 1024
MAX_TICK_FRAMES = 25  # a tick covers at most 1 s
AUDIO_FORMATS = ("s16", "f32")
FRAME_FORMATS = ("jpeg", "rgba")  # rendered frames: JPEG of RGB, or PNG of RGBA (alpha kept)
VIDEO_KINDS = ("jpeg", "params")  # what a tick's user frame may be; absent = no video
PARAMS_DIM = 13  # face parameters of `avatarforcing.schemas.motion_space`


class ProtocolError(ValueError):
    """A message that breaks the protocol; `str(error)` is the reason sent to the peer."""


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------
@dataclass
class Hello:
    """Opens (or resumes) a session. `token`: the server's token ("" when it needs none);
    `seed`, `nfe` (0 = the server's), `a_cfg_scale`, `u_cfg_scale`: model settings of this
    session; `audio_format`: PCM encoding of the ticks' audio; `checkpoint_frames`: how often
    (input frames) the server sends a `Checkpoint` (0 = never). Resuming: `session_id` of the
    session, `state` its last `Checkpoint.state` (b"" = from the start), `next_frame` the
    first input frame the state has not seen, `next_block` the index of the next block.
    Rendering on the server: `render` names the server's renderer ("" = the client renders),
    `frame_format` how frames come back (`FRAME_FORMATS`), `portrait` the identity image
    (JPEG or PNG bytes; b"" = none)."""

    TYPE: ClassVar[str] = "hello"
    token: str = ""
    seed: int = 20
    nfe: int = 0
    a_cfg_scale: float = 2.0
    u_cfg_scale: float = 1.0
    audio_format: str = "s16"
    checkpoint_frames: int = 25
    session_id: str = ""
    state: bytes = b""
    next_frame: int = 0
    next_block: int = 0
    render: str = ""
    frame_format: str = "jpeg"
    portrait: bytes = b""

    def __repr__(self) -> str:  # the token never reaches a log through a repr
        return f"Hello(session_id={self.session_id!r}, seed={self.seed}, resume={bool(self.session_id)})"


@dataclass
class Ready:
    """The session is open on `replica`; the engine's `engine` name, rates and block sizes,
    `motion_space` of its latents, `resumed` (a saved state was restored), `checkpoints` (the
    engine saves its state: the session can be resumed elsewhere), and `warm_up`: the latents
    ``float32 [n, D]`` of the engine's warm-up block (the image to hold until the first live
    frame; empty when resuming); `warm_up_frame`: that block's first frame, encoded as the
    session's `frame_format`, when the server renders (b"" otherwise)."""

    TYPE: ClassVar[str] = "ready"
    session_id: str = ""
    replica: str = ""
    engine: str = ""
    motion_space: str = ""
    fps: int = 25
    sample_rate: int = SAMPLE_RATE
    first_block_frames: int = 25
    block_frames: int = 4
    resumed: bool = False
    checkpoints: bool = False
    warm_up: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    warm_up_frame: bytes = b""


@dataclass
class Tick:
    """One input tick (see `InputTick`): `first_frame`, `num_frames`, both parties' audio
    ``float32 [num_frames * 640]`` (encoded as `audio_format`), `avatar_voice`, `sent_at`
    (client clock, echoed back for the round trip), and per frame the user's image as JPEG
    bytes (`jpegs`) or face parameters (`params`, ``float32 [13]`` or None = no face); both
    lists are empty or have `num_frames` entries (None where there is nothing)."""

    TYPE: ClassVar[str] = "tick"
    first_frame: int = 0
    num_frames: int = 1
    avatar_audio: np.ndarray = field(default_factory=lambda: np.zeros(SAMPLES_PER_FRAME, np.float32))
    user_audio: np.ndarray = field(default_factory=lambda: np.zeros(SAMPLES_PER_FRAME, np.float32))
    avatar_voice: float = 0.0
    sent_at: float = 0.0
    jpegs: list = field(default_factory=list)
    params: list = field(default_factory=list)
    audio_format: str = "f32"


@dataclass
class Guidance:
    """Guidance scales from the next block on."""

    TYPE: ClassVar[str] = "guidance"
    avatar: float = 2.0
    user: float = 1.0


@dataclass
class Finish:
    """The inputs ended: the server sends the remaining blocks, then `Ended`."""

    TYPE: ClassVar[str] = "finish"


@dataclass
class Blocks:
    """Blocks computed after the tick that `input_frame` ends (first frame not yet consumed):
    `blocks` is a list of ``(index, first_frame, latents float32 [n, D], metadata)``;
    `frames`: when the server renders, per block its `n` encoded frames (else empty);
    `sent_at` echoes the tick's; `server_ms`: compute time on the replica."""

    TYPE: ClassVar[str] = "blocks"
    blocks: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    input_frame: int = 0
    sent_at: float = 0.0
    server_ms: float = 0.0


@dataclass
class Checkpoint:
    """The session's saved state after the inputs before `next_frame`, with `next_block` the
    index of the next block; the client keeps the latest one and the ticks after it."""

    TYPE: ClassVar[str] = "checkpoint"
    next_frame: int = 0
    next_block: int = 0
    state: bytes = b""


@dataclass
class Ended:
    """Every block of a finished session was sent."""

    TYPE: ClassVar[str] = "ended"


Message = Hello | Ready | Tick | Guidance | Finish | Blocks | Checkpoint | Ended
_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Hello, Ready, Tick, Guidance, Finish, Blocks, Checkpoint, Ended)}


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
def _pcm(samples: np.ndarray, audio_format: str) -> bytes:
    samples = np.asarray(samples, np.float32)
    if audio_format == "s16":
        return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return samples.astype("<f4").tobytes()


def _latents(array: Any) -> tuple[list[int], bytes]:
    array = np.ascontiguousarray(np.asarray(array, np.float32))
    if array.ndim != 2:
        raise ProtocolError(f"latents must be 2-d [frames, dim], got shape {array.shape}")
    return list(array.shape), array.astype("<f4").tobytes()


def encode(message: Message) -> bytes:
    """`message` -> one binary WebSocket message."""
    header: dict[str, Any] = {"type": message.TYPE}
    parts: list[tuple[str, bytes]] = []
    if isinstance(message, Tick):
        if message.audio_format not in AUDIO_FORMATS:
            raise ProtocolError(f"audio_format must be one of {AUDIO_FORMATS}, got {message.audio_format!r}")
        header.update(
            first_frame=message.first_frame,
            num_frames=message.num_frames,
            avatar_voice=float(message.avatar_voice),
            sent_at=float(message.sent_at),
            audio_format=message.audio_format,
        )
        parts += [
            ("avatar_audio", _pcm(message.avatar_audio, message.audio_format)),
            ("user_audio", _pcm(message.user_audio, message.audio_format)),
        ]
        video = []
        for i in range(message.num_frames):
            jpeg = message.jpegs[i] if i < len(message.jpegs) else None
            params = message.params[i] if i < len(message.params) else None
            if jpeg is not None:
                video.append("jpeg")
                parts.append((f"frame{i}", bytes(jpeg)))
            elif params is not None:
                video.append("params")
                parts.append((f"frame{i}", np.asarray(params, "<f4").reshape(PARAMS_DIM).tobytes()))
            else:
                video.append(None)
        header["video"] = video
    elif isinstance(message, Ready):
        header.update({k: getattr(message, k) for k in _scalar_fields(Ready)})
        shape, data = _latents(message.warm_up) if np.size(message.warm_up) else ([0, 0], b"")
        header["warm_up_shape"] = shape
        parts += [("warm_up", data), ("warm_up_frame", bytes(message.warm_up_frame))]
    elif isinstance(message, Blocks):
        header.update(input_frame=message.input_frame, sent_at=message.sent_at, server_ms=message.server_ms)
        described = []
        for i, (index, first_frame, latents, metadata) in enumerate(message.blocks):
            shape, data = _latents(latents)
            frames = message.frames[i] if i < len(message.frames) else []
            described.append(
                {
                    "index": index,
                    "first_frame": first_frame,
                    "shape": shape,
                    "metadata": metadata,
                    "frames": len(frames),
                }
            )
            parts.append((f"block{i}", data))
            parts += [(f"block{i}frame{j}", bytes(frame)) for j, frame in enumerate(frames)]
        header["blocks"] = described
    elif isinstance(message, (Hello, Checkpoint)):
        header.update({k: getattr(message, k) for k in _scalar_fields(type(message))})
        parts.append(("state", bytes(message.state)))
        if isinstance(message, Hello):
            parts.append(("portrait", bytes(message.portrait)))
    else:
        header.update({k: getattr(message, k) for k in _scalar_fields(type(message))})
    header["parts"] = [[name, len(data)] for name, data in parts]
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + b"".join(data for _, data in parts)


def _scalar_fields(cls: type) -> list[str]:
    return [name for name, f in cls.__dataclass_fields__.items() if f.type in ("str", "int", "float", "bool")]


# --------------------------------------------------------------------------------------------
# Decoding and validation
# --------------------------------------------------------------------------------------------
def _field(header: dict, name: str, kind: type, default: Any = None, low: float | None = None) -> Any:
    value = header.get(name, default)
    if value is None:
        raise ProtocolError(f"{header.get('type')}: field {name!r} is missing")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{header.get('type')}: field {name!r} must be {kind.__name__}, got {value!r:.40}")
    if kind is float and not math.isfinite(value):
        raise ProtocolError(f"{header.get('type')}: field {name!r} must be finite")
    if low is not None and value < low:
        raise ProtocolError(f"{header.get('type')}: field {name!r} must be >= {low}, got {value}")
    return value


def _split(header: dict, payload: memoryview) -> dict[str, bytes]:
    described = header.get("parts", [])
    if not isinstance(described, list):
        raise ProtocolError("'parts' must be a list of [name, nbytes]")
    parts: dict[str, bytes] = {}
    offset = 0
    for entry in described:
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], int)
        if not ok or entry[1] < 0 or entry[0] in parts:
            raise ProtocolError(f"bad part description {entry!r:.60}")
        parts[entry[0]] = bytes(payload[offset : offset + entry[1]])
        offset += entry[1]
    if offset != len(payload):
        raise ProtocolError(f"parts describe {offset} bytes, the message carries {len(payload)}")
    return parts


def _audio(parts: dict[str, bytes], name: str, audio_format: str, expected: int) -> np.ndarray:
    data = parts.get(name)
    width = 2 if audio_format == "s16" else 4
    if data is None or len(data) != expected * width:
        got = "nothing" if data is None else f"{len(data)} bytes"
        raise ProtocolError(
            f"tick: {name} must be {expected} {audio_format} samples ({expected * width} bytes), got {got}"
        )
    if audio_format == "s16":
        return (np.frombuffer(data, "<i2").astype(np.float32) / 32767.0).astype(np.float32)
    samples = np.frombuffer(data, "<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError(f"tick: {name} has samples that are not finite")
    return samples


def _decode_tick(header: dict, parts: dict[str, bytes]) -> Tick:
    n = _field(header, "num_frames", int, low=1)
    if n > MAX_TICK_FRAMES:
        raise ProtocolError(f"tick: num_frames must be at most {MAX_TICK_FRAMES}, got {n}")
    audio_format = _field(header, "audio_format", str)
    if audio_format not in AUDIO_FORMATS:
        raise ProtocolError(f"tick: audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r:.20}")
    video = header.get("video", [])
    if not isinstance(video, list) or len(video) not in (0, n) or any(v not in (None, *VIDEO_KINDS) for v in video):
        raise ProtocolError(f"tick: video must list {n} entries of 'jpeg', 'params' or null")
    jpegs: list = [None] * n
    params: list = [None] * n
    for i, kind in enumerate(video):
        data = parts.get(f"frame{i}")
        if kind is None:
            continue
        if data is None:
            raise ProtocolError(f"tick: frame {i} is announced as {kind} but missing")
        if kind == "jpeg":
            jpegs[i] = data
        else:
            row = np.frombuffer(data, "<f4").astype(np.float32) if len(data) == 4 * PARAMS_DIM else None
            if row is None or not np.isfinite(row).all():
                raise ProtocolError(f"tick: frame {i} parameters must be {PARAMS_DIM} finite float32 values")
            params[i] = row
    samples = n * SAMPLES_PER_FRAME
    return Tick(
        first_frame=_field(header, "first_frame", int, low=0),
        num_frames=n,
        avatar_audio=_audio(parts, "avatar_audio", audio_format, samples),
        user_audio=_audio(parts, "user_audio", audio_format, samples),
        avatar_voice=min(1.0, max(0.0, _field(header, "avatar_voice", float, 0.0))),
        sent_at=_field(header, "sent_at", float, 0.0),
        jpegs=jpegs if any(j is not None for j in jpegs) else [],
        params=params if any(p is not None for p in params) else [],
        audio_format=audio_format,
    )


def _array(data: bytes | None, shape: Any, what: str) -> np.ndarray:
    ok = isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)
    if not ok or data is None or len(data) != 4 * shape[0] * shape[1]:
        raise ProtocolError(f"{what}: shape {shape!r:.40} does not match its {0 if data is None else len(data)} bytes")
    return np.frombuffer(data, "<f4").astype(np.float32).reshape(shape)


def _decode_blocks(header: dict, parts: dict[str, bytes]) -> Blocks:
    described = header.get("blocks")
    if not isinstance(described, list):
        raise ProtocolError("blocks: 'blocks' must be a list")
    blocks, frames = [], []
    for i, info in enumerate(described):
        if not isinstance(info, dict):
            raise ProtocolError("blocks: each block must be an object")
        latents = _array(parts.get(f"block{i}"), info.get("shape"), f"block {i}")
        metadata = info.get("metadata", {})
        blocks.append((_field(info, "index", int, low=0), _field(info, "first_frame", int, low=0), latents, metadata))
        count = _field(info, "frames", int, 0, low=0)
        encoded = [parts.get(f"block{i}frame{j}") for j in range(count)]
        if any(f is None for f in encoded):
            raise ProtocolError(f"blocks: block {i} announces {count} frames, some are missing")
        frames.append(encoded)
    return Blocks(
        blocks=blocks,
        frames=frames if any(frames) else [],
        input_frame=_field(header, "input_frame", int, low=0),
        sent_at=_field(header, "sent_at", float, 0.0),
        server_ms=_field(header, "server_ms", float, 0.0),
    )


def _decode_plain(cls: type, header: dict, parts: dict[str, bytes]) -> Message:
    values: dict[str, Any] = {}
    for name, f in cls.__dataclass_fields__.items():
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(f.type)
        if kind is not None and name in header:
            values[name] = _field(header, name, kind)
    if "state" in cls.__dataclass_fields__:
        values["state"] = parts.get("state", b"")
    if cls is Ready:
        values["warm_up"] = _array(parts.get("warm_up", b""), header.get("warm_up_shape", [0, 0]), "ready warm_up")
        values["warm_up_frame"] = parts.get("warm_up_frame", b"")
    if cls is Hello:
        values["portrait"] = parts.get("portrait", b"")
        if values.get("audio_format", "s16") not in AUDIO_FORMATS:
            raise ProtocolError(f"hello: audio_format must be one of {AUDIO_FORMATS}")
        if values.get("frame_format", "jpeg") not in FRAME_FORMATS:
            raise ProtocolError(f"hello: frame_format must be one of {FRAME_FORMATS}")
    return cls(**values)


def decode(data: bytes | bytearray | memoryview, max_bytes: int = 0) -> Message:
    """One received WebSocket message -> its `Message`; `max_bytes` (0 = no limit) bounds its
    size. Anything malformed raises `ProtocolError` saying what is wrong."""
    if isinstance(data, str):
        raise ProtocolError("messages are binary; got a text message")
    view = memoryview(data)
    if max_bytes and len(view) > max_bytes:
        raise ProtocolError(f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) < _PREFIX.size:
        raise ProtocolError(f"message of {len(view)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, length = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError("not an avatarforcing message (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    if length > MAX_HEADER_BYTES or _PREFIX.size + length > len(view):
        raise ProtocolError(f"header length {length} is out of bounds")
    try:
        header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not UTF-8 JSON: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    cls = _TYPES.get(header.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown message type {header.get('type')!r:.30}")
    parts = _split(header, view[_PREFIX.size + length :])
    if cls is Tick:
        return _decode_tick(header, parts)
    if cls is Blocks:
        return _decode_blocks(header, parts)
    return _decode_plain(cls, header, parts)
