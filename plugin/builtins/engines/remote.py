"""The ``remote`` motion engine: the engine runs on an ``avatarforcing serve`` server.

`RemoteEngine` implements the `MotionEngine` protocol over one WebSocket
(`avatarforcing.plugin.app.serving.protocol`): `extract` encodes a tick (both parties'
audio as 16 kHz PCM; the user's frame as face parameters tracked here, ``video = "params"``,
or as JPEG, ``"jpeg"``, or nothing), `generate` sends it and returns the blocks that have
arrived (the replies stream back on a receiver thread, so a round trip longer than a tick never
stalls the session). Latents are the server engine's (``float32 [n, 13]`` face parameters for
``default``), rendered locally by the session's renderer; or, with ``render = NAME``, the
server renders with its renderer NAME and sends the frames (JPEG, or PNG of RGBA with
``frame_format = "rgba"``): the session then uses the ``remote-frames`` renderer, which shows
them (`MotionBlock.latents` is then ``uint8 [n, H, W, 3|4]``).

When the connection drops mid-session, `generate` returns nothing (the session holds its
last frame and counts held frames), a background thread reconnects with exponential backoff
and resumes the session from the last `Checkpoint` the server sent, replaying the ticks sent
after it; blocks already delivered are not delivered twice. With ``fallback = true`` a drop
longer than ``fallback_after_s`` switches the session to the local ``default`` engine, resumed
from the same checkpoint, so the picture never freezes. Network figures (round trip, jitter,
bytes per second, reconnects, seconds held) are in `network_stats()`, in the blocks' metadata
(``net_rtt_ms``) and in ``session.plugin_state["remote"]``.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.exceptions import InvalidStatus

from avatarforcing.plugin.api.errors import ConfigError, PluginError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import (
    FACE_PARAMS_SPACE,
    EngineSpec,
    Frame,
    InputTick,
    MotionBlock,
    OptionSpec,
    RendererSpec,
)
from avatarforcing.plugin.app.serving.images import decode_frame, encode_frame
from avatarforcing.plugin.app.serving.protocol import (
    Blocks,
    Checkpoint,
    Ended,
    Finish,
    Guidance,
    Hello,
    ProtocolError,
    Ready,
    Tick,
    decode,
    encode,
)
from avatarforcing.plugin.app.session.stats import LatencyTracker
from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE

log = logging.getLogger(__name__)

ENGINE_NAME = "remote"
FRAMES_RENDERER = "remote-frames"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BACKOFF_FIRST_S = 0.05


@dataclass
class SentTick:
    """A tick as sent: its wire bytes (replayed after a resume) and what a local fallback
    engine needs (the `InputTick` and the user's face parameters, if tracked here)."""

    first_frame: int
    data: bytes
    tick: InputTick
    params: list | None


@dataclass
class NetworkStats:
    """Round trips (tick sent -> its reply back, seconds; `block_round_trip`: only the ticks
    whose reply carried blocks, i.e. with the server's compute), jitter (RFC 3550 smoothing of
    successive round-trip differences), bytes each way, reconnects and time spent held."""

    round_trip: LatencyTracker = field(default_factory=LatencyTracker)
    block_round_trip: LatencyTracker = field(default_factory=LatencyTracker)
    jitter_s: float = 0.0
    last_rtt_s: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    reconnects: int = 0
    held_s: float = 0.0
    fallback: bool = False
    started: float = field(default_factory=time.monotonic)

    def rtt(self, seconds: float, blocks: bool) -> None:
        if self.last_rtt_s is not None:
            self.jitter_s += (abs(seconds - self.last_rtt_s) - self.jitter_s) / 16.0
        self.last_rtt_s = seconds
        self.round_trip.add(seconds)
        if blocks:
            self.block_round_trip.add(seconds)

    def to_dict(self) -> dict[str, Any]:
        elapsed = max(1e-6, time.monotonic() - self.started)
        return {
            "round_trip": self.round_trip.summary(),
            "block_round_trip": self.block_round_trip.summary(),
            "jitter_ms": round(self.jitter_s * 1000.0, 2),
            "sent_bytes_per_s": round(self.bytes_sent / elapsed, 1),
            "received_bytes_per_s": round(self.bytes_received / elapsed, 1),
            "reconnects": self.reconnects,
            "held_s": round(self.held_s, 3),
            "fallback": self.fallback,
        }


class _Link:
    """One WebSocket connection and its receiver thread; received messages, then the close
    reason (a `_Closed`), go to its own `inbox`. The round trip of a tick is measured here, when
    its reply arrives: `sent_at` maps the input frame a tick ends at to when it was sent."""

    def __init__(self, url: str, timeout: float, tls_ca: str, stats: NetworkStats, sent_at: dict) -> None:
        from websockets.sync.client import connect

        context = None
        if url.startswith("wss://"):
            context = ssl.create_default_context(cafile=tls_ca or None)
        self.stats: NetworkStats = stats
        self.sent_at = sent_at
        self.inbox: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.ws = connect(
            url,
            ssl=context,
            open_timeout=timeout,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # PCM and JPEG do not deflate; the CPU is better spent elsewhere
            proxy=None,
            close_timeout=1.0,
            legacy=True,  # the connection outlives this call (closed by `close`), not a `with` block
        )
        self.thread = threading.Thread(target=self._receive, name="remote-engine-recv", daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for data in self.ws:
                self.stats.bytes_received += len(data)
                message = decode(data)
                if isinstance(message, Blocks):
                    sent = self.sent_at.pop(message.input_frame, None)
                    if sent is not None:
                        self.stats.rtt(max(0.0, time.monotonic() - sent), bool(message.blocks))
                self.inbox.put(message)
        except ConnectionClosed as error:
            self.inbox.put(_Closed(error.rcvd.code if error.rcvd else 1006, error.rcvd.reason if error.rcvd else ""))
        except ProtocolError as error:
            self.inbox.put(_Closed(1008, f"bad message from the server: {error}"))
        except OSError as error:
            self.inbox.put(_Closed(1006, str(error)))
        else:
            self.inbox.put(_Closed(self.ws.close_code or 1006, self.ws.close_reason or ""))
        finally:
            self.closed.set()

    def send(self, data: bytes) -> None:
        self.ws.send(data)
        self.stats.bytes_sent += len(data)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # already gone
            pass


@dataclass
class _Closed:
    code: int
    reason: str


def _queued(inbox: queue.Queue) -> list:
    """Everything in `inbox` now, without waiting."""
    items = []
    while True:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            return items


def _refusal(closed: _Closed, url: str) -> PluginError:
    if closed.code == 1013:
        return PluginError(f"engine 'remote': {url} is full ({closed.reason}); try later or add replicas")
    return PluginError(f"engine 'remote': {url} refused the session: {closed.reason or f'close code {closed.code}'}")


class RemoteEngine:
    """A session's engine on an ``avatarforcing serve`` server (see the module docstring)."""

    fps = FRAME_RATE
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000/avatar",
        token_file: str = "",
        video: str = "params",
        audio: str = "s16",
        jpeg_quality: int = 85,
        connect_timeout_s: float = 10.0,
        reconnect_max_s: float = 2.0,
        give_up_s: float = 60.0,
        checkpoint_s: float = 1.0,
        fallback: bool = False,
        fallback_after_s: float = 2.0,
        tls_ca: str = "",
        reply_wait_s: float = 0.15,
        render: str = "",
        frame_format: str = "jpeg",
    ) -> None:
        self.url, self.token_file, self.video, self.audio = url, token_file, video, audio
        self.jpeg_quality, self.connect_timeout_s = jpeg_quality, connect_timeout_s
        self.reconnect_max_s, self.give_up_s, self.checkpoint_s = reconnect_max_s, give_up_s, checkpoint_s
        self.fallback, self.fallback_after_s, self.tls_ca = fallback, fallback_after_s, tls_ca
        self.reply_wait_s = reply_wait_s
        self.render, self.frame_format = render, frame_format
        self.first_block_frames, self.block_frames = 25, 4
        self.stats = NetworkStats()
        self.ready: Ready | None = None
        self._token = ""
        self._session = None
        self._hello: Hello | None = None
        self._faces = None
        self._lock = threading.RLock()
        self._link: _Link | None = None
        self._sent_at: dict[int, float] = {}  # input frame a tick ends at -> when it was sent
        self._down_since: float | None = None
        self._reconnecting: threading.Thread | None = None
        self._closing = threading.Event()
        self._pending: list[SentTick] = []  # ticks after the last checkpoint
        self._checkpoint = Checkpoint()
        self._next_block = 0
        self._guidance: tuple[float, float] | None = None
        self._local = None  # the fallback engine once the session switched to it
        self._ended = False  # finish() was called
        self._finished = False  # the server sent Ended

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self, session) -> None:
        from avatarforcing.plugin.app.serving.session import read_token

        self._session = session
        if self.token_file:
            try:
                self._token = read_token(self.token_file)
            except ValueError as error:
                raise ConfigError("engines.remote.token_file", str(error)) from None
        self._check_renderer(session.renderer)
        model = session.config.model
        self._hello = Hello(
            token=self._token,
            seed=model.seed,
            nfe=model.nfe,
            a_cfg_scale=model.a_cfg_scale,
            u_cfg_scale=model.u_cfg_scale,
            audio_format=self.audio,
            checkpoint_frames=max(0, round(self.checkpoint_s * FRAME_RATE)),
            render=self.render,
            frame_format=self.frame_format,
            # PNG: the server's renderer sees the portrait's exact pixels
            portrait=encode_frame(session.portrait, "rgba") if self.render and session.portrait is not None else b"",
        )
        if self.video == "params":
            from avatarforcing.integrations.face_params import FaceParamsExtractor, FaceParamsUnavailable

            try:
                self._faces = FaceParamsExtractor()
            except FaceParamsUnavailable as error:
                raise ConfigError(
                    "engines.remote.video", f"params needs face tracking here ({error}); or use jpeg"
                ) from None
        try:
            self._link, self.ready = self._connect(self._hello)
        except InvalidStatus as error:  # refused before the WebSocket opened: 503 = every replica full
            status = error.response.status_code
            if status in (500, 503):  # Serve's proxy refuses a WebSocket it cannot queue with 500
                raise _refusal(_Closed(1013, f"every replica is busy, HTTP {status}"), self.url) from None
            raise PluginError(
                f"engine 'remote': {self.url} answered HTTP {status}; is it an avatarforcing server?"
            ) from None
        except TimeoutError:
            raise PluginError(
                f"engine 'remote': no session from {self.url} within {self.connect_timeout_s:g} s: the server is "
                "full (every replica holds its sessions; try later or add replicas) or still starting"
            ) from None
        except OSError as error:
            raise PluginError(
                f"engine 'remote': cannot reach {self.url}: {error} (is `avatarforcing serve` running there?)"
            ) from None
        if self.fallback and self.ready.engine != "default":
            raise ConfigError(
                "engines.remote.fallback", f"needs the server's engine to be 'default', it runs {self.ready.engine!r}"
            )
        self.first_block_frames, self.block_frames = self.ready.first_block_frames, self.ready.block_frames
        self._hello.session_id = self.ready.session_id
        session.plugin_state[ENGINE_NAME] = self
        log.info("remote engine %r on replica %s of %s", self.ready.engine, self.ready.replica, self.url)

    def _check_renderer(self, renderer: str) -> None:
        """Server-side rendering and the session's renderer go together (one line otherwise)."""
        if self.render and renderer != FRAMES_RENDERER:
            raise ConfigError(
                "engines.remote.render", f"the server renders: set render.use={FRAMES_RENDERER} (not {renderer!r})"
            )
        if not self.render and renderer == FRAMES_RENDERER:
            raise ConfigError(
                "render.use", f"{FRAMES_RENDERER} shows server-rendered frames: set engines.remote.render"
            )
        if self.render and self.fallback:
            raise ConfigError("engines.remote.fallback", "the local fallback renders locally: not with render")

    def _connect(self, hello: Hello) -> tuple[_Link, Ready]:
        """Open a link, send `hello`, wait for `Ready`; a refusal raises PluginError."""
        link = _Link(self.url, self.connect_timeout_s, self.tls_ca, self.stats, self._sent_at)
        try:
            try:
                link.send(encode(hello))
            except Exception:  # closed at once (full, refused): the reason is in the inbox
                link.closed.wait(self.connect_timeout_s)
            deadline = time.monotonic() + self.connect_timeout_s + 60.0  # the server loads a model
            while True:
                try:
                    message = link.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"no answer from {self.url} to the session request") from None
                if isinstance(message, _Closed):
                    raise _refusal(message, self.url)
                if isinstance(message, Ready):
                    break
        except BaseException:
            link.close()
            raise
        return link, message

    def warm_up(self) -> list[MotionBlock]:
        """The server warmed its engine up when the session opened: its first block's latents."""
        if self.ready is not None and self.ready.warm_up_frame:
            image = decode_frame(self.ready.warm_up_frame, self.frame_format)
            return [MotionBlock(0, 0, 1, image[None], {"engine": ENGINE_NAME, "warm_up": True})]
        warm = self.ready.warm_up if self.ready is not None else np.zeros((0, 0), np.float32)
        if not warm.size:
            return []
        return [MotionBlock(0, 0, warm.shape[0], warm, {"engine": ENGINE_NAME, "warm_up": True})]

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            if self._link is not None:
                self._link.close()
                self._link = None
            if self._local is not None:
                self._local.close()
                self._local = None
        if self._faces is not None:
            self._faces.close()
            self._faces = None
        log.info("remote engine network: %s", self.stats.to_dict())

    def network_stats(self) -> dict[str, Any]:
        return self.stats.to_dict()

    # -- features thread -----------------------------------------------------------------------
    def extract(self, tick: InputTick) -> SentTick:
        jpegs: list = []
        params: list | None = None
        frames = list(tick.user_frames or [])
        if self.video == "jpeg" and any(f is not None for f in frames):
            jpegs = [encode_frame(f, "jpeg", self.jpeg_quality) if f is not None else None for f in frames]
        elif self._faces is not None:
            params = []
            for i in range(tick.num_frames):
                image = frames[i] if i < len(frames) else None
                if image is None:
                    self._faces.reset()
                params.append(None if image is None else self._faces.extract(image))
        wire = Tick(
            first_frame=tick.first_frame,
            num_frames=tick.num_frames,
            avatar_audio=tick.avatar_audio,
            user_audio=tick.user_audio,
            avatar_voice=tick.avatar_voice,
            jpegs=jpegs,
            params=params or [],
            audio_format=self.audio,
        )
        return SentTick(tick.first_frame, encode(wire), tick, params)

    # -- generator thread ----------------------------------------------------------------------
    def set_guidance(self, avatar_scale: float, user_scale: float) -> None:
        with self._lock:
            self._guidance = (float(avatar_scale), float(user_scale))
            if self._local is not None:
                self._local.set_guidance(*self._guidance)
            else:
                self._send(encode(Guidance(*self._guidance)))

    def generate(self, features: SentTick) -> list[MotionBlock]:
        with self._lock:
            if self._local is not None:
                return self._local_blocks(self._local.generate(self._local_features(features)))
            if self.ready.checkpoints:  # kept to replay after a resume; without checkpoints, none
                self._pending.append(features)
            end = features.first_frame + features.tick.num_frames
            self._sent_at[end] = time.monotonic()
            self._send(features.data)
            blocks = self._drain()
            if self._link is not None and self._completes_block(features.first_frame, end):
                blocks += self._await_reply(end)
            return blocks

    def finish(self) -> list[MotionBlock]:
        with self._lock:
            if self._local is not None:
                return self._local_blocks(self._local.finish())
            self._ended = True
            self._send(encode(Finish()))
        blocks: list[MotionBlock] = []
        deadline = time.monotonic() + self.give_up_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._local is not None:
                    return blocks + self._local_blocks(self._local.finish())
                got = self._drain()
                blocks += got
            if self._finished:
                return blocks
            if not got:
                time.sleep(0.01)
        raise PluginError(f"engine 'remote': {self.url} did not finish the session within {self.give_up_s:g} s")

    # -- internals (called with the lock held) -------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self._link is None:
            self._went_down()
            return
        try:
            self._link.send(data)
        except Exception as error:  # the connection broke: the reconnect thread takes over
            log.warning("remote engine: send failed (%s); reconnecting", error)
            self._drop_link()

    def _drop_link(self) -> list[MotionBlock]:
        """Close the link; returns the blocks it had received before breaking."""
        link, self._link = self._link, None
        blocks: list[MotionBlock] = []
        if link is not None:
            link.close()
            blocks = self._handle(link, [m for m in _queued(link.inbox) if not isinstance(m, _Closed)])
        self._went_down()
        return blocks

    def _went_down(self) -> None:
        if not self.ready.checkpoints:
            raise PluginError(
                f"engine 'remote': lost the connection to {self.url}, and its engine {self.ready.engine!r} "
                "cannot resume a session (it saves no state)"
            )
        if self._down_since is None:
            self._down_since = time.monotonic()
        if self._reconnecting is None or not self._reconnecting.is_alive():
            self._reconnecting = threading.Thread(target=self._reconnect, name="remote-engine-reconnect", daemon=True)
            self._reconnecting.start()

    def _drain(self) -> list[MotionBlock]:
        """The new blocks that arrived (or, fallen back, that the local engine computed)."""
        blocks = self._handle(self._link, _queued(self._link.inbox)) if self._link is not None else []
        if self._link is None and self._down_since is not None:
            blocks += self._maybe_fall_back()
        return blocks

    def _completes_block(self, start: int, end: int) -> bool:
        """Whether input frames [start, end) complete a block (the first after
        `first_block_frames` frames, then one every `block_frames`)."""
        first, step = self.first_block_frames, self.block_frames
        if end < first:
            return False
        return first + (end - first) // step * step > start

    def _await_reply(self, end: int) -> list[MotionBlock]:
        """Wait up to `reply_wait_s` for the reply to the tick that ends at input frame `end`
        (it carries a block): the generator then hands the block on as soon as a local engine
        would, instead of one tick later. Later replies are collected by the next call."""
        link, blocks = self._link, []
        deadline = time.monotonic() + self.reply_wait_s
        while link is self._link and (left := deadline - time.monotonic()) > 0:
            try:
                message = link.inbox.get(timeout=left)
            except queue.Empty:
                break
            blocks += self._handle(link, [message])
            if isinstance(message, Blocks) and message.input_frame >= end:
                break
        return blocks

    def _handle(self, link: _Link | None, messages: list) -> list[MotionBlock]:
        blocks: list[MotionBlock] = []
        for message in messages:
            if isinstance(message, Blocks):
                blocks += self._accept(message)
            elif isinstance(message, Checkpoint):
                self._checkpoint = message
                self._pending = [t for t in self._pending if t.first_frame >= message.next_frame]
            elif isinstance(message, Ended):
                self._finished = True
            elif isinstance(message, _Closed) and link is self._link:
                blocks += self._on_closed(message)
        return blocks

    def _accept(self, message: Blocks) -> list[MotionBlock]:
        out = []
        for i, (index, first_frame, latents, metadata) in enumerate(message.blocks):
            if index < self._next_block:  # replayed after a resume: already delivered
                continue
            self._next_block = index + 1
            if i < len(message.frames) and message.frames[i]:  # rendered on the server
                latents = np.stack([decode_frame(f, self.frame_format) for f in message.frames[i]])
            meta = dict(metadata, engine=ENGINE_NAME, server_ms=message.server_ms)
            if self.stats.last_rtt_s is not None:
                meta["net_rtt_ms"] = round(self.stats.last_rtt_s * 1000.0, 2)
            out.append(MotionBlock(index, first_frame, latents.shape[0], latents, meta))
        return out

    def _on_closed(self, closed: _Closed) -> list[MotionBlock]:
        if closed.code == 1000 and self._finished:
            return []
        if closed.code == 1008:  # the server refused what we sent: retrying would not help
            raise PluginError(f"engine 'remote': the server closed the session: {closed.reason}")
        log.warning("remote engine: connection lost (%s %s); holding frames, reconnecting", closed.code, closed.reason)
        return self._drop_link()

    # -- reconnecting --------------------------------------------------------------------------
    def _reconnect(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._closing.is_set():
            with self._lock:
                if self._local is not None or self._link is not None:
                    return
                down_for = time.monotonic() - (self._down_since or time.monotonic())
                if down_for > self.give_up_s:
                    log.error("remote engine: no connection to %s for %.0f s; giving up", self.url, down_for)
                    return
                hello = Hello(**{**self._hello.__dict__})
                hello.state = self._checkpoint.state
                hello.next_frame, hello.next_block = self._checkpoint.next_frame, self._checkpoint.next_block
            try:
                link, ready = self._connect(hello)
            except Exception as error:  # refused, unreachable, full: try again after the backoff
                log.info("remote engine: reconnect failed (%s); next try in %.2f s", error, delay)
                if self._closing.wait(delay):
                    return
                delay = min(self.reconnect_max_s, delay * 2)
                continue
            with self._lock:
                if self._local is not None:  # fell back meanwhile: this link is not needed
                    link.close()
                    return
                self._link, self.ready = link, ready
                self.stats.reconnects += 1
                self.stats.held_s += time.monotonic() - (self._down_since or time.monotonic())
                self._down_since = None
                log.warning("remote engine: resumed on replica %s (from frame %d)", ready.replica, hello.next_frame)
                if self._guidance is not None:
                    self._link.send(encode(Guidance(*self._guidance)))
                for sent in self._pending:
                    self._sent_at[sent.first_frame + sent.tick.num_frames] = time.monotonic()
                    self._link.send(sent.data)
                if self._ended:
                    self._link.send(encode(Finish()))
            return

    def _maybe_fall_back(self) -> list[MotionBlock]:
        """After `fallback_after_s` without a server: the local default engine, resumed from
        the last checkpoint with the ticks after it; returns the blocks not delivered yet."""
        if not self.fallback or self._down_since is None:
            return []
        if time.monotonic() - self._down_since < self.fallback_after_s:
            return []
        from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine

        log.warning(
            "remote engine: server unreachable for %.1f s; continuing on the local default engine",
            self.fallback_after_s,
        )
        local = DefaultEngine()
        local.open(self._session)
        if self._guidance is not None:
            local.set_guidance(*self._guidance)
        if self._checkpoint.state:
            local.load_state(self._checkpoint.state)
        self._local = local
        self.stats.fallback = True
        self.stats.held_s += time.monotonic() - self._down_since
        self._down_since = None
        blocks: list[MotionBlock] = []
        for sent in self._pending:
            blocks += self._local_blocks(local.generate(self._local_features(sent)))
        self._pending = []
        return blocks

    def _local_features(self, sent: SentTick):
        return (
            self._local.extract(sent.tick, user_params=sent.params) if sent.params else self._local.extract(sent.tick)
        )

    def _local_blocks(self, blocks: list[MotionBlock]) -> list[MotionBlock]:
        out = []
        for block in blocks:
            if block.index < self._next_block:
                continue
            self._next_block = block.index + 1
            block.metadata = dict(block.metadata, fallback=True)
            out.append(block)
        return out


class RemoteFrames:
    """The ``remote-frames`` renderer: shows the frames the server rendered (``--engine remote``
    with ``engines.remote.render``), one `Frame` per image of `MotionBlock.latents`."""

    def open(self, session) -> None:
        pass

    def render(self, block: MotionBlock) -> list[Frame]:
        images = block.latents
        if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.uint8):
            raise PluginError(
                f"renderer {FRAMES_RENDERER!r} shows frames a server rendered: use it with --engine remote "
                "and engines.remote.render=NAME"
            )
        return [
            Frame(images[i], block.first_frame + i, (block.first_frame + i) / FRAME_RATE)
            for i in range(block.num_frames)
        ]

    def close(self) -> None:
        pass


@hookimpl
def register_renderers() -> list[RendererSpec]:
    return [
        RendererSpec(
            FRAMES_RENDERER, "the frames an `avatarforcing serve` server rendered (engine remote)", RemoteFrames
        )
    ]


def _check_url(value: str) -> str | None:
    if not value.startswith(("ws://", "wss://")):
        return "must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:8000/avatar"
    return None


def _check_file(value: str) -> str | None:
    return None if not value or Path(value).expanduser().is_file() else f"file not found: {value!r}"


@hookimpl
def register_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name=ENGINE_NAME,
            description="the engine of an `avatarforcing serve` server (Ray Serve), over a WebSocket",
            factory=RemoteEngine,
            options=(
                OptionSpec("url", str, "ws://127.0.0.1:8000/avatar", "the server's session endpoint", check=_check_url),
                OptionSpec("token_file", str, "", "file holding the server's token", check=_check_file),
                OptionSpec(
                    "video",
                    str,
                    "params",
                    "what goes up of the user's face: params (tracked here), jpeg (tracked there), none",
                    choices=("params", "jpeg", "none"),
                ),
                OptionSpec("audio", str, "s16", "audio sample format on the wire", choices=("s16", "f32")),
                OptionSpec("jpeg_quality", int, 85, "JPEG quality of video = jpeg", minimum=10, maximum=100),
                OptionSpec("connect_timeout_s", float, 10.0, "give up starting after this long", minimum=0.5),
                OptionSpec("reconnect_max_s", float, 2.0, "longest wait between reconnect attempts", minimum=0.05),
                OptionSpec("give_up_s", float, 60.0, "end the session after this long without the server", minimum=1.0),
                OptionSpec("checkpoint_s", float, 1.0, "how often the server saves the session's state", minimum=0.2),
                OptionSpec("fallback", bool, False, "continue on the local default engine when the server is gone"),
                OptionSpec("fallback_after_s", float, 2.0, "how long to hold frames before falling back", minimum=0.1),
                OptionSpec("tls_ca", str, "", "CA file to verify a wss:// server ('' = system CAs)", check=_check_file),
                OptionSpec(
                    "render", str, "", "renderer on the server ('' = render here; then render.use=remote-frames)"
                ),
                OptionSpec(
                    "frame_format",
                    str,
                    "jpeg",
                    "server-rendered frames: jpeg, or rgba (PNG, alpha kept)",
                    choices=("jpeg", "rgba"),
                ),
                OptionSpec(
                    "reply_wait_s",
                    float,
                    0.15,
                    "how long a tick that completes a block waits for it (later ones arrive with the next tick)",
                    minimum=0.0,
                    maximum=1.0,
                ),
            ),
            default_renderer="puppet",
            motion_space=FACE_PARAMS_SPACE,
        )
    ]
