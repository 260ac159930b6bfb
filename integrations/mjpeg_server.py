"""A local HTTP server that streams the newest frame, as MJPEG and as RGBA video with alpha.

Any number of clients (OBS media sources, browsers, ``ffplay``) can read
``http://HOST:PORT/stream.mjpg`` (MJPEG, ``multipart/x-mixed-replace``, no alpha) or
``http://HOST:PORT/stream.nut`` (NUT with RGBA rawvideo, alpha kept:
`avatarforcing.integrations.alpha_stream`); ``/snapshot.jpg`` returns the newest frame once.
Each stream client gets frames at a steady `fps` from the live edge (the newest frame at every
tick, repeated when nothing new came), because FFmpeg's ``mpjpeg`` demuxer (OBS's media source)
stamps frames at 25 fps and queues up anything faster. A frame is encoded (JPEG with
``cv2.imencode``; RGBA for the NUT stream) once per new frame, on the first client thread that
needs it (nothing is encoded while nobody watches). A NUT client whose frame size changes is
disconnected: the reader reconnects (OBS after its reconnect delay) and gets the new size.

`publish(rgb)` never blocks: it only swaps a reference. Images are RGB or RGBA ``uint8``
``(height, width, 3|4)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Generic, TypeVar

import cv2
import numpy as np

from avatarforcing.integrations import alpha_stream
from avatarforcing.integrations.alpha import flatten_rgba
from avatarforcing.integrations.frame_handoff import LatestValue

log = logging.getLogger(__name__)
T = TypeVar("T")

BOUNDARY = "avatarforcingframe"
STREAM_PATH = "/stream.mjpg"
ALPHA_PATH = "/stream.nut"
SNAPSHOT_PATH = "/snapshot.jpg"


class MjpegServerError(RuntimeError):
    """The server could not start (the message says why and what to change)."""


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB/RGBA ``uint8`` image (RGBA flattened over the default background)."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(flatten_rgba(image), cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, quality)
    )
    if not ok:
        raise MjpegServerError("cv2.imencode failed to encode a JPEG")
    return data.tobytes()


class _EncodeCache(Generic[T]):
    """``encode(image)`` of the newest published frame, computed at most once per frame
    (thread-safe; keyed by the frame's sequence number)."""

    def __init__(self, encode: Callable[[np.ndarray], T]) -> None:
        self._encode = encode
        self._lock = threading.Lock()
        self._sequence = 0
        self._value: T | None = None

    def get(self, sequence: int, image: np.ndarray) -> T:
        with self._lock:
            if sequence != self._sequence or self._value is None:
                self._value, self._sequence = self._encode(image), sequence
            return self._value


class _MjpegBody:
    """One MJPEG client: a multipart part per tick."""

    content_type = f"multipart/x-mixed-replace; boundary={BOUNDARY}"

    def __init__(self, owner: MjpegServer, wfile) -> None:
        self.owner, self.wfile = owner, wfile

    def write(self, sequence: int, image: np.ndarray, pts: int) -> bool:
        data = self.owner.jpegs.get(sequence, image)
        header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
        self.wfile.write(header.encode() + data + b"\r\n")
        self.wfile.flush()
        return True

    def close(self) -> None:
        pass


class _NutBody:
    """One alpha-stream client: the NUT header with the first frame's size, then a packet per
    tick; returns False (end of this stream) when the frame size changes."""

    content_type = alpha_stream.CONTENT_TYPE

    def __init__(self, owner: MjpegServer, wfile) -> None:
        self.owner, self.wfile = owner, wfile
        self.writer: alpha_stream.NutRgbaWriter | None = None

    def write(self, sequence: int, image: np.ndarray, pts: int) -> bool:
        rgba = self.owner.rgba.get(sequence, image)
        height, width = rgba.shape[:2]
        if self.writer is None:
            self.writer = alpha_stream.NutRgbaWriter(self.wfile, width, height, self.owner.fps)
        elif self.writer.size != (width, height):
            return False
        self.writer.write(rgba, pts)
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:
        log.debug("mjpeg %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == STREAM_PATH:
            self._stream(_MjpegBody)
        elif path == ALPHA_PATH:
            self._stream(_NutBody)
        elif path == SNAPSHOT_PATH:
            self._snapshot()
        else:
            self.send_error(HTTPStatus.NOT_FOUND, f"try {STREAM_PATH}, {ALPHA_PATH} or {SNAPSHOT_PATH}")

    def _snapshot(self) -> None:
        sequence, image = self.server.owner.frames.peek()
        if image is None:
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame published yet")
            return
        data = self.server.owner.jpegs.get(sequence, image)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, kind: type[_MjpegBody | _NutBody]) -> None:
        owner = self.server.owner
        body = kind(owner, self.wfile)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", body.content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        period = 1.0 / owner.fps
        sequence, image = owner.frames.wait_newer(0, None)  # first frame (or close)
        start = tick = time.monotonic()
        owner._client_joined()
        try:
            while not owner.frames.closed and image is not None:
                # pts counts periods of the clock, so a stall shows as a gap, not as lateness
                if not body.write(sequence, image, round((tick - start) / period)):
                    break
                tick += period
                delay = tick - time.monotonic()
                if delay < -period:  # the client stalled: restart the clock instead of bursting
                    tick, delay = time.monotonic(), 0.0
                owner.stopping.wait(max(0.0, delay))
                sequence, image = owner.frames.peek()
        except OSError:
            pass  # the client went away (broken pipe, reset, timeout)
        finally:
            body.close()
            owner._client_left()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MjpegServer


class MjpegServer:
    """Serve the newest published frame over HTTP on `host`:`port` (0 = any free port).

    `url` is the MJPEG stream's address, `alpha_url` the NUT stream's (alpha kept), `snapshot_url`
    the single-frame address. Start with `start()`
    (or use as a context manager); `close()` stops the server and ends every stream.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fps: float = 25.0, quality: int = 85) -> None:
        if not 0 < fps <= 60:
            raise ValueError(f"fps must be in (0, 60], got {fps}")
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1-100, got {quality}")
        self.host, self.requested_port, self.fps = host, port, float(fps)
        self.frames: LatestValue[np.ndarray] = LatestValue()
        self.jpegs = _EncodeCache(lambda image: encode_jpeg(image, quality))
        self.rgba = _EncodeCache(alpha_stream.rgba_frame)
        self.stopping = threading.Event()
        self._clients = 0
        self._clients_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> MjpegServer:
        try:
            server = _Server((self.host, self.requested_port), _Handler)
        except OSError as error:
            raise MjpegServerError(
                f"cannot serve MJPEG on {self.host}:{self.requested_port} ({error.strerror or error}); "
                "choose another port (0 picks a free one) or stop the program using it"
            ) from error
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="mjpeg-server", daemon=True
        )
        self._thread.start()
        log.info("MJPEG stream at %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and end every open stream; idempotent."""
        self.stopping.set()
        self.frames.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames ------------------------------------------------------------------------------
    def publish(self, image: np.ndarray) -> None:
        """Make `image` (RGB/RGBA uint8 ``(h, w, 3|4)``) the newest frame; never blocks."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an RGB/RGBA uint8 (h, w, 3|4) image, got {image.dtype} {image.shape}")
        self.frames.put(image)

    # -- addresses and status ----------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise MjpegServerError("the MJPEG server is not running; call start() first")
        return int(self._server.server_address[1])

    def _url_host(self) -> str:
        return "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host

    @property
    def url(self) -> str:
        return f"http://{self._url_host()}:{self.port}{STREAM_PATH}"

    @property
    def alpha_url(self) -> str:
        """The NUT stream with alpha (RGBA rawvideo; FFmpeg input format ``nut``)."""
        return f"http://{self._url_host()}:{self.port}{ALPHA_PATH}"

    @property
    def snapshot_url(self) -> str:
        return f"http://{self._url_host()}:{self.port}{SNAPSHOT_PATH}"

    @property
    def clients(self) -> int:
        """Stream clients connected now."""
        with self._clients_lock:
            return self._clients

    def _client_joined(self) -> None:
        with self._clients_lock:
            self._clients += 1

    def _client_left(self) -> None:
        with self._clients_lock:
            self._clients -= 1
