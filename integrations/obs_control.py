"""Drive OBS Studio (28+, obs-websocket protocol v5) through obs-websocket-py.

- `ObsClient`: one connection. `connect()` cannot hang (obs-websocket-py's own `connect()` has
  no timeout: it runs on a helper thread and its socket is shut down at the deadline); every
  request has a timeout; a failed request raises `ObsRequestError` with OBS's
  ``requestStatus.comment``; a dead connection (closed socket, broken pipe, timeout) raises
  `ObsUnavailable`.
- `choose_transport()`: how the avatar reaches this OBS (a browser source showing the overlay
  page, a media source reading the RGBA stream with alpha, or one reading MJPEG), from the
  input kinds OBS reports.
- `ensure_source()`: an input with its settings as an item of a scene (the current one by
  default), created or updated in place and never duplicated, a new item placed by `Placement`
  (corner, height as a fraction of the canvas).
- `ObsSupervisor`: keeps a client connected from a background thread, reconnecting with
  backoff when OBS quits or restarts, re-running the setup after every (re)connect and keeping
  a microphone input's audio sync offset equal to a latency that the caller updates.

The password is never logged, and is left out of every message and repr.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from avatarforcing.integrations.alpha_stream import INPUT_FORMAT as ALPHA_INPUT_FORMAT

log = logging.getLogger(__name__)

SYNC_OFFSET_RANGE_MS = (-950, 20000)  # what OBS's SetInputAudioSyncOffset accepts
RESOURCE_NOT_FOUND = 600


class ObsError(RuntimeError):
    """Something went wrong talking to OBS."""


class ObsUnavailable(ObsError):
    """OBS is not reachable (not running, websocket server off, wrong password, connection lost)."""


class ObsRequestError(ObsError):
    """OBS answered a request with a failure; `code` and `comment` are OBS's ``requestStatus``."""

    def __init__(self, request: str, code: int, comment: str) -> None:
        super().__init__(f"OBS refused {request}: {comment or 'no comment'} (code {code})")
        self.request, self.code, self.comment = request, code, comment


def _gone_errors() -> tuple[type[BaseException], ...]:
    import websocket
    from obswebsocket import exceptions

    return (websocket.WebSocketException, OSError, exceptions.MessageTimeout, exceptions.ConnectionFailure)


class ObsClient:
    """A connection to obs-websocket v5 at `host`:`port`.

    `connect_timeout`: seconds for TCP connect + websocket upgrade + Hello/Identify;
    `request_timeout`: seconds to wait for each answer. Not thread-safe across connect/close,
    but `request` may be called from several threads.
    """

    def __init__(
        self, host: str, port: int, password: str = "", connect_timeout: float = 3.0, request_timeout: float = 3.0
    ) -> None:
        self.host, self.port = host, int(port)
        self._password = password
        self.connect_timeout, self.request_timeout = float(connect_timeout), float(request_timeout)
        self._ws = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObsClient({self.host}:{self.port}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.ws is not None and bool(self._ws.ws.connected)

    def connect(self) -> ObsClient:
        """Open the connection within `connect_timeout` or raise `ObsUnavailable`."""
        from obswebsocket import obsws

        client = obsws(self.host, self.port, self._password, legacy=False, timeout=self.request_timeout)
        outcome: dict[str, BaseException | None] = {}

        def attempt() -> None:
            try:
                client.connect()
                outcome["error"] = None
            except BaseException as error:  # reported to the caller below
                outcome["error"] = error

        worker = threading.Thread(target=attempt, name="obs-connect", daemon=True)
        worker.start()
        worker.join(self.connect_timeout)
        where = f"obs-websocket at {self.host}:{self.port}"
        if worker.is_alive():
            self._abort(client)
            worker.join(1.0)
            raise ObsUnavailable(
                f"{where} did not answer within {self.connect_timeout:g} s (is it OBS? is OBS frozen?)"
            )
        error = outcome.get("error")
        if error is not None:
            text = str(error).replace(self._password, "***") if self._password else str(error)
            if "password" in text.lower() or "Identify" in text:
                # obs-websocket closes the connection at the Identify step when authentication
                # fails; the library words that as a guess ("password may be inconnect")
                text = (
                    "OBS refused the websocket password (authentication failed)"
                    if self._password
                    else "OBS asks for a websocket password and none was given"
                ) + "; compare it with OBS's Tools > WebSocket Server Settings > Show Connect Info"
            raise ObsUnavailable(f"cannot connect to {where}: {text}") from None
        self._ws = client
        return self

    @staticmethod
    def _abort(client) -> None:
        """Unblock a connect() stuck in the handshake by shutting its socket down."""
        ws = getattr(client, "ws", None)
        try:
            if ws is not None:
                ws.shutdown()
        except Exception:  # already closed
            pass

    def close(self) -> None:
        """Disconnect; idempotent, never raises."""
        client, self._ws = self._ws, None
        if client is None:
            return
        try:
            client.authreconnect = 0
            client.disconnect()
        except Exception:
            self._abort(client)

    def request(self, request_type: str, **data: Any) -> dict[str, Any]:
        """Send one v5 request; returns its ``responseData`` (``{}`` when none).

        Raises `ObsRequestError` when OBS reports a failure, `ObsUnavailable` when the
        connection is gone or no answer comes within `request_timeout`.
        """
        client = self._ws
        if client is None:
            raise ObsUnavailable("not connected to OBS")
        with self._lock:
            request_id = f"af-{client.id}"
            client.id += 1
        answered = threading.Event()
        client.events[request_id] = answered
        payload = {"op": 6, "d": {"requestType": request_type, "requestId": request_id, "requestData": data}}
        try:
            try:
                client.ws.send(json.dumps(payload))
            except _gone_errors() as error:
                raise ObsUnavailable(f"OBS connection lost ({type(error).__name__}: {error})") from None
            if not answered.wait(self.request_timeout):
                raise ObsUnavailable(f"OBS did not answer {request_type} within {self.request_timeout:g} s")
        finally:
            client.events.pop(request_id, None)
        answer = client.answers.pop(request_id, {})
        status = answer.get("requestStatus", {})
        if not status.get("result", False):
            raise ObsRequestError(request_type, int(status.get("code", 0)), str(status.get("comment", "")))
        return answer.get("responseData") or {}


# --------------------------------------------------------------------------------------------
# Scene setup
# --------------------------------------------------------------------------------------------
MEDIA_SOURCE, BROWSER_SOURCE = "ffmpeg_source", "browser_source"
TRANSPORTS = ("auto", "browser", "alpha", "mjpeg")
POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center", "fill")
# FFmpeg reads a live stream without probing ahead or buffering: the first packet is shown at once
LOW_LATENCY_OPTIONS = "probesize=32 analyzeduration=0 fflags=nobuffer"
# OBS's OBS_ALIGN_* flags (a scene item's anchor point); the centre is 0
_LEFT, _RIGHT, _TOP, _BOTTOM = 1, 2, 4, 8
_ANCHORS = {
    "bottom-right": (_BOTTOM | _RIGHT, 1.0, 1.0),
    "bottom-left": (_BOTTOM | _LEFT, 0.0, 1.0),
    "top-right": (_TOP | _RIGHT, 1.0, 0.0),
    "top-left": (_TOP | _LEFT, 0.0, 0.0),
    "center": (0, 0.5, 0.5),
}


def media_source_settings(url: str, input_format: str, ffmpeg_options: str = "") -> dict[str, Any]:
    """``ffmpeg_source`` settings for a live network stream: no buffering, reconnect after 1 s,
    ``linear_alpha`` off (OBS's default: alpha blended as the renderers drew it, in sRGB)."""
    return {
        "is_local_file": False,
        "input": url,
        "input_format": input_format,
        "ffmpeg_options": ffmpeg_options,
        "buffering_mb": 0,
        "reconnect_delay_sec": 1,
        "close_when_inactive": False,
        "restart_on_activate": False,
        "hw_decode": False,
        "clear_on_media_end": False,
        "linear_alpha": False,
    }


def browser_source_settings(url: str, width: int, height: int, fps: float) -> dict[str, Any]:
    """``browser_source`` settings for a transparent page of `width` x `height` px at `fps`."""
    return {
        "url": url,
        "is_local_file": False,
        "width": int(width),
        "height": int(height),
        "fps_custom": True,
        "fps": int(round(fps)),
        "css": "body { background-color: rgba(0, 0, 0, 0); margin: 0px auto; overflow: hidden; }",
        "shutdown": False,
        "restart_when_active": False,
        "reroute_audio": False,
    }


@dataclass(frozen=True)
class TransportChoice:
    """How the avatar reaches OBS (`name`: ``browser``, ``alpha`` or ``mjpeg``) and why."""

    name: str
    reason: str


def choose_transport(
    requested: str, input_kinds: set[str], urls: dict[str, str], obs_is_local: bool
) -> TransportChoice:
    """The transport for `requested` (one of `TRANSPORTS`) given OBS's `input_kinds`
    (``GetInputKindList``), the `urls` served (``{"browser": ..., "alpha": ..., "mjpeg": ...}``,
    a missing or empty one is not served) and whether OBS runs on this machine.

    ``auto``: the browser source when OBS has one and the overlay page is served; else the alpha
    media source when OBS is local (its raw RGBA stream is too heavy for a network link); else
    MJPEG. An explicit transport that cannot work raises `ObsError` saying what to change.
    """
    if requested not in TRANSPORTS:
        raise ValueError(f"unknown transport {requested!r}; known: {', '.join(TRANSPORTS)}")
    has_browser = BROWSER_SOURCE in input_kinds
    if requested == "browser":
        if not has_browser:
            raise ObsError(
                "this OBS has no browser source (obs-browser is not installed; Debian's OBS has none): "
                "set sinks.obs.transport to auto, alpha or mjpeg"
            )
        if not urls.get("browser"):
            raise ObsError(
                "the browser source shows the overlay page: add the overlay sink to sinks.use "
                "(on 127.0.0.1, without a token_file)"
            )
        return TransportChoice("browser", "chosen by sinks.obs.transport")
    if requested != "auto":
        return TransportChoice(requested, "chosen by sinks.obs.transport")
    if has_browser and urls.get("browser"):
        return TransportChoice("browser", "OBS has a browser source and the overlay page is served")
    why = "OBS has no browser source" if not has_browser else "no overlay page to show"
    if obs_is_local:
        return TransportChoice("alpha", f"{why}; OBS runs on this machine: RGBA media source")
    return TransportChoice("mjpeg", f"{why}; OBS is on another machine: MJPEG (the RGBA stream is too heavy)")


def input_for(transport: str, urls: dict[str, str], frame_size: tuple[int, int], fps: float) -> tuple[str, dict]:
    """``(input kind, settings)`` of the OBS input for `transport` (``browser``, ``alpha`` or
    ``mjpeg``, reading ``urls[transport]``); `frame_size` ``(width, height)`` sizes the page."""
    url = urls[transport]
    if transport == "browser":
        return BROWSER_SOURCE, browser_source_settings(url, frame_size[0], frame_size[1], fps)
    if transport == "alpha":
        return MEDIA_SOURCE, media_source_settings(url, ALPHA_INPUT_FORMAT, LOW_LATENCY_OPTIONS)
    if transport == "mjpeg":
        return MEDIA_SOURCE, media_source_settings(url, "mpjpeg")
    raise ValueError(f"no input for transport {transport!r}")


def input_kinds(client: ObsClient) -> set[str]:
    """The input kinds this OBS can create (unversioned ids: ``ffmpeg_source``, ``browser_source``...)."""
    return set(client.request("GetInputKindList", unversioned=True).get("inputKinds", []))


@dataclass(frozen=True)
class Placement:
    """Where a new scene item goes: `position` (one of `POSITIONS`; ``fill`` = fitted to the
    whole canvas) at `height` (a fraction of the canvas height) for a source of `frame_size`
    ``(width, height)`` pixels."""

    position: str = "bottom-right"
    height: float = 0.4
    frame_size: tuple[int, int] = (512, 512)

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; known: {', '.join(POSITIONS)}")
        if not 0.0 < self.height <= 1.0:
            raise ValueError(f"height is a fraction of the canvas height in (0, 1], got {self.height}")

    def transform(self, canvas_width: float, canvas_height: float) -> dict[str, Any]:
        """``SetSceneItemTransform``'s ``sceneItemTransform``: a bounds box (the source scaled
        into it, aspect kept) anchored at the chosen corner; works before the first frame."""
        if self.position == "fill":
            alignment, box_w, box_h, x, y = _TOP | _LEFT, canvas_width, canvas_height, 0.0, 0.0
        else:
            alignment, fx, fy = _ANCHORS[self.position]
            box_h = self.height * canvas_height
            box_w = min(canvas_width, box_h * self.frame_size[0] / max(1, self.frame_size[1]))
            x, y = fx * canvas_width, fy * canvas_height
        return {
            "boundsType": "OBS_BOUNDS_SCALE_INNER",
            "boundsAlignment": 0,
            "boundsWidth": float(box_w),
            "boundsHeight": float(box_h),
            "positionX": float(x),
            "positionY": float(y),
            "alignment": alignment,
        }


@dataclass(frozen=True)
class SourceSetup:
    """What to show in OBS: input `source` of `input_kind` with `settings`, as an item of
    `scene` (``""``: the current program scene), placed by `placement` when the item is new."""

    scene: str
    source: str
    input_kind: str
    settings: dict[str, Any]
    placement: Placement = field(default_factory=Placement)


@dataclass(frozen=True)
class SetupResult:
    """What `ensure_source` did: the scene used and what it created; `transport`: the caller's
    `TransportChoice` name, for the record."""

    scene: str
    created_scene: bool
    created_input: bool
    created_item: bool
    transport: str = ""


def ensure_source(client: ObsClient, setup: SourceSetup) -> SetupResult:
    """Make input `setup.source` show in its scene, creating only what is missing.

    An existing input of that name and kind gets its settings updated in place (a media source
    is restarted so it reconnects at once); one of another kind is replaced. An existing item of
    the input in the scene is reused as it is (a source moved by hand stays where it was put);
    a new one is placed by `setup.placement`. A named scene that does not exist is created and
    becomes the program scene. Calling it again (a reconnect) never duplicates anything.
    """
    scene = setup.scene or client.request("GetCurrentProgramScene")["currentProgramSceneName"]
    scenes = [s["sceneName"] for s in client.request("GetSceneList").get("scenes", [])]
    created_scene = scene not in scenes
    if created_scene:
        client.request("CreateScene", sceneName=scene)
    kind = _input_kind(client, setup.source)
    if kind is not None and kind != setup.input_kind:
        log.info("OBS input %r is a %s, replacing it with a %s", setup.source, kind, setup.input_kind)
        _remove_input(client, setup.source)
        kind = None
    created_item = False
    if kind is None:
        item_id = client.request(
            "CreateInput",
            sceneName=scene,
            inputName=setup.source,
            inputKind=setup.input_kind,
            inputSettings=setup.settings,
            sceneItemEnabled=True,
        )["sceneItemId"]
        created_item = True
    else:
        client.request("SetInputSettings", inputName=setup.source, inputSettings=setup.settings, overlay=True)
        item_id = _scene_item(client, scene, setup.source)
        if item_id is None:
            item_id = client.request("CreateSceneItem", sceneName=scene, sourceName=setup.source)["sceneItemId"]
            created_item = True
        if setup.input_kind == MEDIA_SOURCE:
            client.request(
                "TriggerMediaInputAction",
                inputName=setup.source,
                mediaAction="OBS_WEBSOCKET_MEDIA_INPUT_ACTION_RESTART",
            )
    if created_item:
        video = client.request("GetVideoSettings")
        client.request(
            "SetSceneItemTransform",
            sceneName=scene,
            sceneItemId=item_id,
            sceneItemTransform=setup.placement.transform(video["baseWidth"], video["baseHeight"]),
        )
    if created_scene:
        client.request("SetCurrentProgramScene", sceneName=scene)
    return SetupResult(scene, created_scene, kind is None, created_item)


def _input_kind(client: ObsClient, name: str) -> str | None:
    """The kind of input `name`, None when there is none."""
    try:
        return str(client.request("GetInputSettings", inputName=name)["inputKind"])
    except ObsRequestError as error:
        if error.code != RESOURCE_NOT_FOUND:
            raise
        return None


def _remove_input(client: ObsClient, name: str, timeout: float = 2.0) -> None:
    """Remove input `name` and wait until OBS no longer knows it: OBS destroys a removed source
    once nothing holds it, and until then its name can be neither reused nor placed."""
    client.request("RemoveInput", inputName=name)
    deadline = time.monotonic() + timeout
    while _input_kind(client, name) is not None:
        if time.monotonic() > deadline:
            raise ObsError(f"OBS still holds the removed input {name!r} after {timeout:g} s; try again")
        time.sleep(0.05)


def _scene_item(client: ObsClient, scene: str, source: str) -> int | None:
    """The id of `source`'s item in `scene`, None when it has none."""
    try:
        return int(client.request("GetSceneItemId", sceneName=scene, sourceName=source)["sceneItemId"])
    except ObsRequestError as error:
        if error.code != RESOURCE_NOT_FOUND:
            raise
        return None


def set_sync_offset(client: ObsClient, input_name: str, seconds: float) -> int:
    """Delay input `input_name`'s audio by `seconds` (rounded to ms, clamped to OBS's range);
    returns the offset set in milliseconds."""
    low, high = SYNC_OFFSET_RANGE_MS
    offset_ms = int(min(high, max(low, round(seconds * 1000.0))))
    client.request("SetInputAudioSyncOffset", inputName=input_name, inputAudioSyncOffset=offset_ms)
    return offset_ms


# --------------------------------------------------------------------------------------------
# Staying connected
# --------------------------------------------------------------------------------------------
@dataclass
class SupervisorStatus:
    """What the supervisor knows now (read from any thread)."""

    connected: bool = False
    connections: int = 0  # successful connects (and setups) so far
    last_error: str = ""
    sync_offset_ms: int | None = None
    setup: Any = None  # what the last setup returned
    events: list[str] = field(default_factory=list)


class ObsSupervisor:
    """Keeps OBS connected and set up from a background thread; never blocks its caller.

    `make_client()` returns a fresh, unconnected `ObsClient`; `setup(client)` runs after each
    (re)connect; when `mic_input` is set, its audio sync offset follows `latency_s()` (checked
    every `poll_s` seconds, updated when it moves by 10 ms or more). Reconnects back off from
    `min_backoff_s` to `max_backoff_s`.
    """

    def __init__(
        self,
        make_client: Callable[[], ObsClient],
        setup: Callable[[ObsClient], Any],
        mic_input: str = "",
        latency_s: Callable[[], float] = lambda: 0.0,
        poll_s: float = 0.5,
        min_backoff_s: float = 0.25,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._make_client, self._setup = make_client, setup
        self.mic_input, self._latency_s = mic_input, latency_s
        self.poll_s, self.min_backoff_s, self.max_backoff_s = poll_s, min_backoff_s, max_backoff_s
        self.status = SupervisorStatus()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._client: ObsClient | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ObsSupervisor:
        self._thread = threading.Thread(target=self._run, name="obs-supervisor", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and disconnect; idempotent. Waits at most one connect timeout."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self._drop("closed")

    def _note(self, text: str) -> None:
        self.status.events.append(text)
        del self.status.events[:-50]

    def _drop(self, reason: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if self.status.connected:
            log.warning("OBS connection lost (%s); reconnecting in the background", reason)
            self._note(f"lost: {reason}")
        self.status.connected = False
        self.connected.clear()

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            if self._client is None:
                try:
                    client = self._make_client().connect()
                    self._client = client
                    self.status.setup = self._setup(client)
                    self.status.sync_offset_ms = None
                    self._update_offset()
                except Exception as error:  # ObsError, or a surprise in OBS's answers: retry later
                    self.status.last_error = (
                        str(error) if isinstance(error, ObsError) else f"{type(error).__name__}: {error}"
                    )
                    self._drop(str(error))
                    self._stop.wait(backoff)
                    backoff = min(self.max_backoff_s, backoff * 2)
                    continue
                backoff = self.min_backoff_s
                self.status.connected = True
                self.status.connections += 1
                self.status.last_error = ""
                self.connected.set()
                self._note(f"connected #{self.status.connections}")
                log.info("OBS connected and set up (%s)", client)
            if self._stop.wait(self.poll_s):
                break
            try:
                if not self._client.connected:
                    raise ObsUnavailable("OBS closed the connection")
                self._update_offset()
                self._client.request("GetVersion")
            except ObsUnavailable as error:
                self._drop(str(error))
            except ObsRequestError as error:  # OBS is there but refused: report, keep going
                self.status.last_error = str(error)

    def _update_offset(self) -> None:
        if not self.mic_input or self._client is None:
            return
        wanted = int(round(max(0.0, self._latency_s()) * 1000))
        current = self.status.sync_offset_ms
        if current is None or abs(wanted - current) >= 10:
            try:
                self.status.sync_offset_ms = set_sync_offset(self._client, self.mic_input, wanted / 1000)
            except ObsRequestError as error:  # e.g. no such input (yet): tried again next poll
                self.status.last_error = f"sync offset of {self.mic_input!r}: {error.comment or error}"


def local_address_towards(host: str) -> str:
    """This machine's address as seen from `host` (``127.0.0.1`` for a loopback host)."""
    if host in ("localhost", "127.0.0.1", "::1", ""):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))  # UDP connect sends nothing; it only picks a route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
