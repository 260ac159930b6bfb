"""A local HTTP server that streams the newest frame as MJPEG (``multipart/x-mixed-replace``).

Any number of clients (OBS media sources, browsers, ``ffplay``) can read
``http://HOST:PORT/stream.mjpg``; ``/snapshot.jpg`` returns the newest frame once. Each stream
client gets frames at a steady `fps` (the newest frame at every tick, repeated when nothing new
came), because FFmpeg's ``mpjpeg`` demuxer (OBS's media source) stamps frames at 25 fps and
queues up anything faster. JPEGs are encoded with ``cv2.imencode``, once per new frame, on
the first client thread that needs it (nothing is encoded while nobody watches).

`publish(rgb)` never blocks: it only swaps a reference. Images are RGB or RGBA ``uint8``
``(height, width, 3|4)``.
"""

from __future__ import annotations

import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from avatarforcing.integrations.alpha import flatten_rgba
from avatarforcing.integrations.frame_handoff import LatestValue

log = logging.getLogger(__name__)

BOUNDARY = "avatarforcingframe"
STREAM_PATH = "/stream.mjpg"
SNAPSHOT_PATH = "/snapshot.jpg"


class MjpegServerError(RuntimeError):
    """The server could not start (the message says why and what to change)."""


class _JpegCache:
    """Encodes the newest published frame at most once (thread-safe)."""

    def __init__(self, frames: LatestValue[np.ndarray], quality: int) -> None:
        self._frames = frames
        self._quality = quality
        self._lock = threading.Lock()
        self._sequence = 0
        self._jpeg = b""

    def jpeg(self, sequence: int, image: np.ndarray) -> bytes:
        with self._lock:
            if sequence != self._sequence:
                ok, data = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(flatten_rgba(image), cv2.COLOR_RGB2BGR),
                    (cv2.IMWRITE_JPEG_QUALITY, self._quality),
                )
                if not ok:
                    raise MjpegServerError("cv2.imencode failed to encode a JPEG")
                self._sequence, self._jpeg = sequence, data.tobytes()
            return self._jpeg


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:
        log.debug("mjpeg %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == STREAM_PATH:
            self._stream()
        elif path == SNAPSHOT_PATH:
            self._snapshot()
        else:
            self.send_error(HTTPStatus.NOT_FOUND, f"try {STREAM_PATH} or {SNAPSHOT_PATH}")

    def _snapshot(self) -> None:
        sequence, image = self.server.owner.frames.peek()
        if image is None:
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame published yet")
            return
        data = self.server.owner.cache.jpeg(sequence, image)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self) -> None:
        owner = self.server.owner
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        period = 1.0 / owner.fps
        sequence, image = owner.frames.wait_newer(0, None)  # first frame (or close)
        tick = time.monotonic()
        owner._client_joined()
        try:
            while not owner.frames.closed and image is not None:
                data = owner.cache.jpeg(sequence, image)
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
                self.wfile.flush()
                tick += period
                delay = tick - time.monotonic()
                if delay < -period:  # the client stalled: restart the clock instead of bursting
                    tick, delay = time.monotonic(), 0.0
                owner.stopping.wait(max(0.0, delay))
                sequence, image = owner.frames.peek()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away
        finally:
            owner._client_left()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MjpegServer


class MjpegServer:
    """Serve the newest published frame over HTTP on `host`:`port` (0 = any free port).

    `url` is the stream address, `snapshot_url` the single-frame address. Start with `start()`
    (or use as a context manager); `close()` stops the server and ends every stream.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fps: float = 25.0, quality: int = 85) -> None:
        if not 0 < fps <= 60:
            raise ValueError(f"fps must be in (0, 60], got {fps}")
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1-100, got {quality}")
        self.host, self.requested_port, self.fps = host, port, float(fps)
        self.frames: LatestValue[np.ndarray] = LatestValue()
        self.cache = _JpegCache(self.frames, quality)
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
