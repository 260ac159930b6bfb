"""`Session`: sources -> features -> generator -> renderer -> pacer -> sinks, one thread per
stage — live on a 25 fps session clock (``avatarforcing run``) or offline, as fast as the engine
goes (``avatarforcing render``). See docs/session.md."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarforcing.plugin.api.errors import AvatarForcingError, ConfigError, PluginError
from avatarforcing.plugin.api.types import (
    FACE_PARAMS_SPACE,
    SOURCE_KINDS,
    VIDEO_SOURCE_KINDS,
    Frame,
    InputTick,
    MotionBlock,
    SessionInfo,
)
from avatarforcing.plugin.app.config import AppConfig
from avatarforcing.plugin.app.session.capture import AudioInbox, CaptureThread, VideoInbox
from avatarforcing.plugin.app.session.clock import SessionClock
from avatarforcing.plugin.app.session.heap import release_free_heap
from avatarforcing.plugin.app.session.pacer import FramePacer, OfflinePacer, RenderedFrame
from avatarforcing.plugin.app.session.queues import END, Aborted, StageQueue
from avatarforcing.plugin.app.session.sinks import SinkWorker
from avatarforcing.plugin.app.session.stats import SessionStats
from avatarforcing.plugin.app.session.vad import SpeakListenPolicy, VoiceActivityDetector
from avatarforcing.plugin.events import SessionEvents
from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 5.0  # how long the last blocks may take after --duration
PORTRAIT_RENDERER = "portrait"  # draws face parameters onto the session's portrait


@dataclass
class TickRecord:
    """What the pacer needs about an input frame: capture time of its newest audio, its 40 ms of
    avatar audio, and `tick`: the session-clock tick whose input it is (frames are numbered in
    the engine's stream, which skips the ticks the session drops; the pacer schedules by tick)."""

    captured_at: float
    audio: np.ndarray
    tick: int


@dataclass(frozen=True)
class RendererChoice:
    """The renderer a session runs (`name`) and why (`reason`, for one line of the log)."""

    name: str
    reason: str


def choose_renderer(config: AppConfig, engine_spec: Any, renderers: Collection[str] = ()) -> RendererChoice:
    """The session's renderer, in this order: ``[render] use`` when the config names it; the
    `PORTRAIT_RENDERER` when the engine emits face parameters (``motion_space`` ``"face-13"``),
    a portrait is given (``[session] portrait``) and a renderer of that name is among
    `renderers` (the registered names); else the engine's default renderer; else ``[render]
    use``'s default."""
    engine = getattr(engine_spec, "name", "?")
    if config.render.chosen:
        return RendererChoice(config.render.use, "chosen by [render] use")
    face_params = getattr(engine_spec, "motion_space", "") == FACE_PARAMS_SPACE
    if face_params and config.session.portrait and PORTRAIT_RENDERER in renderers:
        return RendererChoice(PORTRAIT_RENDERER, f"a portrait is given and engine {engine} emits face parameters")
    default = getattr(engine_spec, "default_renderer", "")
    if not default:
        return RendererChoice(config.render.use, f"engine {engine} names no renderer: the [render] use default")
    why = f"the default renderer of engine {engine}"
    if face_params and config.session.portrait:  # say why the portrait is not drawn
        why += f" (a portrait is given, but no renderer named {PORTRAIT_RENDERER!r} is installed)"
    elif face_params:
        why += " (no portrait given)"
    return RendererChoice(default, why)


def renderer_name(config: AppConfig, engine_spec: Any, renderers: Collection[str] = ()) -> str:
    """The name `choose_renderer` picks."""
    return choose_renderer(config, engine_spec, renderers).name


class _FirstThenFactory:
    """Returns the source built up front (its options checked before warm-up) once, then builds
    a new one from `make` for each reopen."""

    def __init__(self, first: Any, make: Callable[[], Any] | None = None) -> None:
        self.first, self.make = first, make

    def __call__(self) -> Any:
        if self.first is not None:
            source, self.first = self.first, None
            return source
        return self.make()


class Session:
    """One session. `run()` blocks until the inputs end, `duration` seconds of live time pass,
    `request_stop()` is called (Ctrl-C) or a stage fails, and returns the stats dict
    (``stats["error"]`` is None on success). `stats_path`: JSON written every stats interval
    and at the end.

    Live (default): sources are read as they come, the features thread ticks on the 25 fps
    clock, the pacer sends one frame per tick (holding late frames, dropping stale ones).

    Offline (``offline=True``, renders): the same stages with nothing paced and nothing dropped —
    sources (files) are read as fast as the engine takes them, every tick waits for its inputs,
    every frame reaches the sinks in order, and the session ends with the avatar's and the
    user's audio. A source or sink that fails ends it with an error (no retry: a file does not
    come back). `on_frame(count)` reports progress."""

    def __init__(
        self,
        host: Any,
        config: AppConfig,
        *,
        duration: float = 0.0,
        stats_path: str | Path | None = None,
        console_log: Callable[[str], None] | None = None,
        offline: bool = False,
        on_frame: Callable[[int], None] | None = None,
    ) -> None:
        self.host, self.config = host, config
        self.offline, self.on_frame = offline, on_frame
        self.duration = duration
        self.stats_path = Path(stats_path) if stats_path else None
        self.say = console_log or log.info
        self.stats = SessionStats()
        self.stop = threading.Event()  # abort: every stage returns now
        self.capture_stop = threading.Event()  # capture threads return
        self.clock = SessionClock(FRAME_RATE)
        self.events = SessionEvents(host.pm)
        self.policy = SpeakListenPolicy.from_config(config)
        self.vad = VoiceActivityDetector(self.policy, SAMPLE_RATE)
        self._records: dict[int, TickRecord] = {}
        self._records_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._captures: list[CaptureThread] = []
        self._sink_workers: list[SinkWorker] = []
        self._inboxes: dict[str, AudioInbox | VideoInbox] = {}
        self._file_kinds: set[str] = set()  # kinds whose source reads a file (SourceSpec.reads_file)
        self._frozen = False  # gc.freeze() in effect (live, from going live to shutdown)
        self.engine: Any = None
        self.renderer: Any = None
        self.session: SessionInfo | None = None

    # -- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop as soon as possible (signal handlers call this)."""
        if not self.stop.is_set():
            log.info("stop requested")
        self.stop.set()
        for queue in self._queues():
            queue.abort()
        for inbox in self._inboxes.values():
            inbox.close()

    def _queues(self) -> list[StageQueue]:
        # `is not None`: an empty queue is falsy (it has a length) and must be aborted too
        names = ("features_queue", "blocks_queue", "frames_queue")
        return [q for q in (getattr(self, n, None) for n in names) if q is not None]

    def _fail(self, stage: str, error: BaseException, trace: bool = True) -> None:
        """Record the session's first error (``stats.error``, naming `stage`) and stop.
        `trace`: log the traceback (a bug somewhere); False for the failures of a file or a
        device, which the message explains."""
        if self.stats.error is None:
            self.stats.error = f"{stage}: {type(error).__name__}: {error}"
        log.error("stage %s failed: %s: %s", stage, type(error).__name__, error, exc_info=error if trace else None)
        self.request_stop()

    def _stage(self, name: str, body: Callable[[], None]) -> threading.Thread:
        def target() -> None:
            try:
                body()
            except Aborted:
                pass
            except BaseException as error:  # reported with the stage name, ends the session
                self._fail(name, error)

        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        return thread

    # -- setup ---------------------------------------------------------------------------------
    def _build(self) -> None:
        config = self.config
        engine_spec, self.engine = self.host.create_engine(config)
        registered = {entry.spec.name for entry in self.host.provided("renderers")}
        choice = choose_renderer(config, engine_spec, registered)
        renderer = choice.name
        self.say(f"renderer {renderer}: {choice.reason}")
        self.renderer = self.host.create("renderers", renderer, config.render.options, "render")
        sink_specs = [self.host.lookup("sinks", name).spec for name in config.sinks.use]
        portrait = None
        if config.session.portrait:
            from avatarforcing.integrations.face_crop import load_image_rgb

            path = Path(config.session.portrait).expanduser()
            if not path.is_file():
                raise ConfigError("session.portrait", f"file not found: {str(path)!r}")
            try:
                portrait = load_image_rgb(path)
            except (ValueError, OSError) as error:  # not an image: one line, not a traceback
                raise ConfigError("session.portrait", str(error)) from None
        sources = {kind: config.sources.slot(kind).use for kind in SOURCE_KINDS}
        self.session = SessionInfo(
            session_id=uuid.uuid4().hex,
            config=config,
            fps=FRAME_RATE,
            sample_rate=SAMPLE_RATE,
            portrait_path=config.session.portrait,
            portrait=portrait,
            sources=sources,
            renderer=renderer,
            sinks=tuple(config.sinks.use),
            engine=self.engine,
            offline=self.offline,
        )
        self.stats.engine, self.stats.renderer = engine_spec.name, renderer
        for kind in SOURCE_KINDS:
            slot = config.sources.slot(kind)
            if not slot.use:
                continue
            # a file does not come back: a file source that fails ends the session, live too
            reads_file = self.host.lookup(kind, slot.use).spec.reads_file
            if reads_file:
                self._file_kinds.add(kind)
            make = lambda k=kind, s=slot: self.host.create(k, s.use, s.options, f"sources.{k}")
            inbox = (
                VideoInbox(lossless=self.offline)
                if kind in VIDEO_SOURCE_KINDS
                else AudioInbox(
                    max_backlog=10 * SAMPLE_RATE if self.offline else SAMPLE_RATE // 2, lossless=self.offline
                )
            )
            self._inboxes[kind] = inbox
            capture = CaptureThread(
                slot.use,
                kind,
                _FirstThenFactory(make(), make),
                inbox,
                self.stats,
                self.capture_stop,
                config.session.retry_initial_s,
                config.session.retry_max_s,
                on_failure=(
                    (lambda error, k=kind: self._fail(f"sources.{k}", error, trace=False))
                    if self.offline or reads_file
                    else None
                ),
            )
            self._captures.append(capture)
        self._sink_specs = sink_specs

    def _open(self) -> None:
        session = self.session
        self.engine.open(session)
        self.stats.backend = str(getattr(self.engine, "backend", "") or "")
        self.stats.backend_graphs = dict(getattr(self.engine, "backend_graphs", None) or {})
        self.renderer.open(session)
        for spec in self._sink_specs:
            make = lambda s=spec: self.host.create(
                "sinks", s.name, self.config.sinks.options_for(s.name), f"sinks.{s.name}"
            )
            sink = make()
            try:
                sink.open(session)
            except AvatarForcingError:
                raise
            except Exception as error:  # a device/driver/service the user must set up first
                raise PluginError(f"sink {spec.name!r} cannot start: {error}") from error
            self._sink_workers.append(
                SinkWorker(
                    spec.name,
                    make,
                    spec.accepts_audio,
                    session,
                    self.stats,
                    self.config.session.retry_initial_s,
                    self.config.session.retry_max_s,
                    sink=sink,
                    lossless=self.offline,
                    on_failure=self._sink_failure(spec),
                )
            )

    def _sink_failure(self, spec: Any) -> Callable[[BaseException], None] | None:
        """What happens when sink `spec` fails: None (live, the default) reopens it with backoff;
        offline its failure ends the session (a render's file is its only output); live, a sink
        that must not be reopened (``SinkSpec.reopen`` false, e.g. the recorder) is dead and
        the session ends when no output is left (`_sink_died`)."""
        if self.offline:
            return lambda error: self._fail(f"sinks.{spec.name}", error, trace=False)
        if not spec.reopen:
            return lambda error: self._sink_died(spec.name, error)
        return None

    def _sink_died(self, name: str, error: BaseException) -> None:
        """Sink `name` failed for good: the session goes on while another output is alive and
        ends with this error (exit 1) when it was the last one."""
        if all(worker.dead for worker in self._sink_workers):
            self._fail(f"sinks.{name}", error, trace=False)
            return
        log.error("sink %r stopped for good (%s: %s); the other outputs continue", name, type(error).__name__, error)

    def _warm_up(self) -> np.ndarray | None:
        """engine.warm_up() and one render; returns the image to hold until the first frame."""
        started = time.perf_counter()
        blocks = self.engine.warm_up()
        image = None
        if blocks:
            first: MotionBlock = blocks[0]
            one = MotionBlock(first.index, first.first_frame, 1, first.latents[:1], dict(first.metadata))
            frames = self.renderer.render(one)
            image = frames[0].image if frames else None
        self.stats.warm_up_s = time.perf_counter() - started
        self.say(f"warm-up took {self.stats.warm_up_s:.1f} s")
        return image

    def _block_frames(self) -> int:
        """Frames per block of the engine (10 when it does not say): sizes queues and lag bounds."""
        return max(1, int(getattr(self.engine, "block_frames", 10)))

    # -- stages --------------------------------------------------------------------------------
    def _video_frames(self, kind: str, k: int, n: int, now: float) -> list[np.ndarray | None]:
        """The images of video source `kind` for frames ``k .. k+n-1``: offline the frame of each
        frame's stream time, live the latest one (None where there is none: no source, or its
        frame is stale)."""
        inbox = self._inboxes.get(kind)
        if inbox is None:
            return [None] * n
        if self.offline:
            return [inbox.frame_at((k + i) / FRAME_RATE) for i in range(n)]
        return [inbox.latest(now)] * n

    def _ending_inboxes(self) -> list[AudioInbox | VideoInbox]:
        """The inboxes whose end ends the session. Offline: the audio (the official length, the
        longer of the two voices). Live: the file sources' — endless ones (devices, endless
        silence) must not keep a session whose files ended alive; with no file source, every
        source (a session of devices runs until stopped)."""
        if self.offline:
            ending = [self._inboxes[k] for k in ("avatar_audio", "user_audio") if k in self._inboxes]
        else:
            ending = [self._inboxes[k] for k in self._file_kinds if k in self._inboxes]
        return ending or list(self._inboxes.values())

    def _features(self) -> None:
        """One `InputTick` per `feature_frames` clock ticks: take the audio and video of the
        tick, extract, queue for the generator. `k` numbers the frames handed to the engine
        (contiguous: its stream never has a hole); `tick` is the clock tick they belong to. When
        this thread (or the generator, through the full queue) falls more than `max_behind`
        ticks behind the clock, the missed ticks are dropped here, before any engine sees them:
        their audio is discarded, `dropped_ticks` counts them, and the pacer holds a frame over
        the gap — the latency stays what the engine needs instead of growing with every stall."""
        engine, config = self.engine, self.config
        n = config.session.feature_frames
        total = int(round(self.duration * FRAME_RATE)) if self.duration > 0 else None
        audio = {kind: self._inboxes.get(kind) for kind in ("avatar_audio", "user_audio")}
        ending = self._ending_inboxes()
        max_behind = max(2 * self._block_frames(), 2 * n)
        k = tick = 0
        while True:
            if total is not None and tick >= total:
                break
            if ending and all(inbox.drained for inbox in ending):
                log.info("every source ended")
                break
            if self.offline:
                if self.stop.is_set():
                    return
            else:
                behind = self.clock.frame_at() - (tick + n)
                if behind > max_behind:
                    skipped = behind // n * n
                    tick += skipped
                    # the audio of the dropped ticks' moment has passed: keep what the ticks from
                    # `tick` to now captured
                    keep = (self.clock.frame_at() - tick) * SAMPLES_PER_FRAME
                    for inbox in audio.values():
                        if inbox is not None:
                            inbox.keep_newest(keep)
                    self.stats.count("dropped_ticks", skipped)
                    log.info("input fell %d ticks behind the clock: dropping them", skipped)
                    if total is not None and tick >= total:
                        break
                if not self.clock.wait_until_due(tick + n, self.stop):
                    return
            now = time.monotonic()
            tracks, newest = {}, 0.0
            for kind, inbox in audio.items():
                if inbox is None:
                    tracks[kind] = np.zeros(n * SAMPLES_PER_FRAME, np.float32)
                    continue
                tracks[kind], captured, _ = inbox.take(n * SAMPLES_PER_FRAME)
                newest = max(newest, captured)
            if self.offline:  # no capture clock: latency is not a property of a render
                captured_at = 0.0
            else:
                captured_at = newest or self.clock.due(tick + n)
                self.stats.observe("capture_to_features", max(0.0, now - captured_at))
            voice = self.vad.update(tracks["avatar_audio"])
            tick_input = InputTick(
                k,
                n,
                tracks["avatar_audio"],
                tracks["user_audio"],
                self._video_frames("user_video", tick, n, now),
                avatar_voice=voice,
                captured_at=captured_at,
                avatar_frames=self._video_frames("avatar_video", tick, n, now),
            )
            with self._records_lock:
                for i in range(n):
                    self._records[k + i] = TickRecord(
                        captured_at,
                        tracks["avatar_audio"][i * SAMPLES_PER_FRAME : (i + 1) * SAMPLES_PER_FRAME],
                        tick + i,
                    )
                for old in [i for i in self._records if i < k - 2000]:
                    del self._records[old]
            t = time.perf_counter()
            features = engine.extract(tick_input)
            self.stats.observe("extract", time.perf_counter() - t)
            self.features_queue.put((features, self.vad.speaking))
            k += n
            tick += n
        self.features_queue.put(END)

    def _emit_blocks(self, blocks: list[MotionBlock], elapsed: float) -> None:
        for block in blocks:
            self.stats.observe("generate", elapsed / len(blocks))
            self.stats.count("blocks")
            self.events.block(self.session, block)
            self.blocks_queue.put(block)

    def _generator(self) -> None:
        while True:
            item = self.features_queue.get()
            if item is END:
                t = time.perf_counter()
                self._emit_blocks(self.engine.finish() or [], time.perf_counter() - t)
                self.blocks_queue.put(END)
                return
            features, speaking = item
            self.engine.set_guidance(*self.policy.scales(speaking))
            t = time.perf_counter()
            blocks = self.engine.generate(features) or []
            if blocks:
                self._emit_blocks(blocks, time.perf_counter() - t)

    def _live_edge(self, block: MotionBlock) -> MotionBlock:
        """The first block (the engine's first clip, e.g. 25 frames that all come out at once, a
        clip after their inputs began) keeps only its newest frame: the pacer starts there, at
        the live edge, instead of a clip behind the inputs. The stale frames are counted as
        `skipped_stale`. Later blocks pass unchanged."""
        if block.index != 0 or block.num_frames <= 1:
            return block
        skipped = block.num_frames - 1
        with self._records_lock:
            for index in range(block.first_frame, block.first_frame + skipped):
                self._records.pop(index, None)
        self.stats.count("skipped_stale", skipped)
        log.info("first clip: starting at its newest frame, skipping %d stale ones", skipped)
        return block.frames(skipped, block.num_frames, skipped_stale_frames=skipped)

    def _render_slices(self, block: MotionBlock) -> list[MotionBlock]:
        """The pieces of `block` the renderer draws one call each: live, `[session]
        render_frames` frames (default 1: a block's first frame goes to the pacer as soon as it
        is drawn instead of after the whole block, which is what the pacer's delay must cover);
        offline, the whole block (throughput is all that counts there)."""
        size = self.config.session.render_frames
        if self.offline or size <= 0 or size >= block.num_frames:
            return [block]
        return [block.frames(start, min(start + size, block.num_frames)) for start in range(0, block.num_frames, size)]

    def _render(self) -> None:
        while True:
            block = self.blocks_queue.get()
            if block is END:
                self.frames_queue.put(END)
                return
            if not self.offline:
                block = self._live_edge(block)
            spent = 0.0
            for piece in self._render_slices(block):
                t = time.perf_counter()
                frames = list(self.renderer.render(piece))
                spent += time.perf_counter() - t
                if len(frames) != piece.num_frames:
                    raise PluginError(
                        f"renderer {self.session.renderer!r} returned {len(frames)} frames for block "
                        f"{block.index} frames {piece.first_frame}..{piece.first_frame + piece.num_frames - 1}, "
                        f"expected {piece.num_frames}"
                    )
                for frame in frames:
                    self._hand_to_pacer(frame)
            self.stats.observe("render", spent)

    def _hand_to_pacer(self, frame: Frame) -> None:
        frame = self.events.frame(self.session, frame)
        with self._records_lock:
            record = self._records.pop(frame.index, None)
        self.frames_queue.put(
            RenderedFrame(
                frame,
                record.tick if record else frame.index,
                time.monotonic(),
                record.captured_at if record else 0.0,
                record.audio if record else None,
            )
        )
        depth = len(self.frames_queue)
        if depth > self.stats.max_frame_queue:
            self.stats.max_frame_queue = depth

    # -- run -----------------------------------------------------------------------------------
    def _write_stats(self) -> dict[str, Any]:
        data = self.stats.to_dict()
        # an engine that talks to a server (the remote engine) reports its round trip, jitter
        # and bytes per second; sessions show them beside their own figures
        network = getattr(self.engine, "network_stats", None)
        if callable(network):
            data["network"] = network()
        if self.stats_path is not None:
            tmp = self.stats_path.with_name(self.stats_path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            tmp.replace(self.stats_path)
        return data

    def run(self) -> dict[str, Any]:
        started_hooks = False
        try:
            self._build()
            self._open()
            if self.offline:  # nothing read before the clock starts is discarded
                for inbox in self._inboxes.values():
                    inbox.go_live()
            # devices start now, so they are flowing when the session goes live; a file read in real
            # time starts with the clock instead (during warm-up a short file would play out unheard)
            deferred = [c for c in self._captures if not self.offline and c.kind in self._file_kinds]
            for capture in self._captures:
                if capture not in deferred:
                    capture.start()
            if not self.offline:
                # unmap the heap freed so far (model loading, earlier work) now, before the warm-up
                # touches the memory the live path needs: mid-session, the unmapping is a stall of
                # whichever thread frees the last block (heap.py)
                release_free_heap()
            initial = self._warm_up() if self.config.session.warm_up and not self.offline else None
            block_frames = self._block_frames()
            n = self.config.session.feature_frames
            # never drops: a tick the engine has seen must reach it (its stream has no holes); a
            # full queue holds the features thread back, which then drops ticks before extracting
            self.features_queue = StageQueue(max(2, -(-2 * block_frames // n)))
            self.blocks_queue = StageQueue(2)
            # room for the frames the pacer delays (a few blocks), so the renderer never waits on it
            self.frames_queue = StageQueue(self.config.session.queue_frames or max(4 * block_frames, 25))
            self.events.started(self.session)
            started_hooks = True
            if self.offline:
                pacer = OfflinePacer(
                    self.frames_queue, self._sink_workers, self.stats, self.stop, FRAME_RATE, SAMPLE_RATE, self.on_frame
                )
            else:
                pacer = FramePacer(
                    self.clock,
                    self.frames_queue,
                    self._sink_workers,
                    self.stats,
                    self.stop,
                    initial,
                    session=self.session,
                )
            self._threads.append(pacer)
            stages = [
                self._stage("features", self._features),
                self._stage("generator", self._generator),
                self._stage("renderer", self._render),
            ]
            for worker in self._sink_workers:
                worker.start()
            # the first stats summary loads numpy's percentile code (~20-150 ms holding the GIL):
            # do it now, not during the first live stats report, where it stalls the pacer
            self.stats.to_dict()
            if not self.offline:
                # a full garbage collection walks every object (the models', torch's, ...): 100 ms
                # or more, a stall of the pacer when it comes mid-session; what exists now lives as
                # long as the session, so collect once and freeze it out of later collections
                gc.collect()
                gc.freeze()
                self._frozen = True
            live_start = self.clock.start()
            for inbox in self._inboxes.values():
                inbox.go_live()
            for capture in deferred:
                capture.start()
            for thread in (*stages, pacer):
                thread.start()
            self.say(
                f"{'offline' if self.offline else 'live'}: engine {self.stats.engine}, "
                f"renderer {self.stats.renderer}, sinks {', '.join(self.session.sinks) or 'none'}"
            )
            interval = self.config.session.stats_interval
            next_report = time.monotonic() + (interval or 5.0)
            while pacer.is_alive() and not self.stop.is_set():
                pacer.join(0.2)
                self.stats.live_s = time.monotonic() - live_start
                if not self.offline and self.duration > 0 and self.stats.live_s > self.duration + DRAIN_GRACE_S:
                    log.warning("the last blocks did not arrive %.0f s after --duration; stopping", DRAIN_GRACE_S)
                    break
                if time.monotonic() >= next_report:
                    if interval:
                        self.say(self.stats.log_line())
                    self._write_stats()
                    next_report += interval or 5.0
            self.stats.live_s = time.monotonic() - live_start
        except BaseException as error:
            if self.stats.error is None:
                self.stats.error = f"setup: {type(error).__name__}: {error}"
            self.request_stop()
            self._shutdown(started_hooks)
            raise
        return self._shutdown(started_hooks)

    def _shutdown(self, started_hooks: bool) -> dict[str, Any]:
        """Stop every stage, close sources, sinks, renderer and engine; the final stats."""
        if self._frozen:  # what the session froze may be collected again
            gc.unfreeze()
            self._frozen = False
        self.request_stop()
        self.capture_stop.set()
        for capture in self._captures:
            capture.close_source()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(30)
        for capture in self._captures:
            if capture.is_alive():
                capture.join(10)
        for worker in self._sink_workers:
            if worker.is_alive():
                worker.finish()
            elif worker.sink is not None:
                worker.sink.close()
        for name, close in (
            ("renderer", getattr(self.renderer, "close", None)),
            ("engine", getattr(self.engine, "close", None)),
        ):
            if close is None:
                continue
            try:
                close()
            except Exception as error:
                log.warning("closing the %s failed: %s: %s", name, type(error).__name__, error)
        stuck = [t.name for t in (*self._threads, *self._captures) if t.is_alive()]
        if stuck:
            log.warning("threads still running at exit: %s", ", ".join(stuck))
        data = self._write_stats()
        if self.session is not None and started_hooks:
            self.events.stopped(self.session, data)
            self.say(self.stats.log_line())  # only a session that went live has stats to show
        return data
