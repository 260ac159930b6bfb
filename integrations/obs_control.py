"""Drive OBS Studio (28+, obs-websocket protocol v5) through obs-websocket-py.

- `ObsClient`: one connection. `connect()` cannot hang (obs-websocket-py's own `connect()` has
  no timeout: it runs on a helper thread and its socket is shut down at the deadline); every
  request has a timeout; a failed request raises `ObsRequestError` with OBS's
  ``requestStatus.comment``; a dead connection (closed socket, broken pipe, timeout) raises
  `ObsUnavailable`.
- `ensure_media_source()`: a scene with an ``ffmpeg_source`` input that plays a network URL
  (our MJPEG stream) with no buffering, created or updated in place.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
                text += " (check the OBS websocket password: Tools > WebSocket Server Settings)"
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
def media_source_settings(url: str, input_format: str = "mpjpeg") -> dict[str, Any]:
    """``ffmpeg_source`` settings for a live network stream: no buffering, reconnect after 1 s."""
    return {
        "is_local_file": False,
        "input": url,
        "input_format": input_format,
        "buffering_mb": 0,
        "reconnect_delay_sec": 1,
        "close_when_inactive": False,
        "restart_on_activate": False,
        "hw_decode": False,
        "clear_on_media_end": False,
    }


@dataclass(frozen=True)
class SourceSetup:
    """Where the avatar goes in OBS: `scene` holding input `source` that plays `url`."""

    scene: str
    source: str
    url: str


def ensure_media_source(client: ObsClient, setup: SourceSetup) -> dict[str, bool]:
    """Make `setup.scene` exist and show input `setup.source` playing `setup.url`.

    An existing input of that name gets its settings updated (and is restarted so it reconnects
    at once); a new scene becomes the program scene and the new item is fitted to the canvas.
    Returns ``{"created_scene": ..., "created_input": ...}``.
    """
    scenes = [s["sceneName"] for s in client.request("GetSceneList").get("scenes", [])]
    created_scene = setup.scene not in scenes
    if created_scene:
        client.request("CreateScene", sceneName=setup.scene)
    settings = media_source_settings(setup.url)
    try:
        client.request("GetInputSettings", inputName=setup.source)
        exists = True
    except ObsRequestError as error:
        if error.code != RESOURCE_NOT_FOUND:
            raise
        exists = False
    if exists:
        client.request("SetInputSettings", inputName=setup.source, inputSettings=settings, overlay=True)
        try:
            item_id = client.request("GetSceneItemId", sceneName=setup.scene, sourceName=setup.source)["sceneItemId"]
        except ObsRequestError as error:
            if error.code != RESOURCE_NOT_FOUND:
                raise
            item_id = client.request("CreateSceneItem", sceneName=setup.scene, sourceName=setup.source)["sceneItemId"]
            _fit_to_canvas(client, setup.scene, item_id)
        client.request(
            "TriggerMediaInputAction", inputName=setup.source, mediaAction="OBS_WEBSOCKET_MEDIA_INPUT_ACTION_RESTART"
        )
    else:
        item_id = client.request(
            "CreateInput",
            sceneName=setup.scene,
            inputName=setup.source,
            inputKind="ffmpeg_source",
            inputSettings=settings,
            sceneItemEnabled=True,
        )["sceneItemId"]
        _fit_to_canvas(client, setup.scene, item_id)
    if created_scene:
        client.request("SetCurrentProgramScene", sceneName=setup.scene)
    return {"created_scene": created_scene, "created_input": not exists}


def _fit_to_canvas(client: ObsClient, scene: str, item_id: int) -> None:
    video = client.request("GetVideoSettings")
    client.request(
        "SetSceneItemTransform",
        sceneName=scene,
        sceneItemId=item_id,
        sceneItemTransform={
            "boundsType": "OBS_BOUNDS_SCALE_INNER",
            "boundsAlignment": 0,
            "boundsWidth": float(video["baseWidth"]),
            "boundsHeight": float(video["baseHeight"]),
            "positionX": 0.0,
            "positionY": 0.0,
            "alignment": 5,
        },
    )


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
                    self._setup(client)
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
