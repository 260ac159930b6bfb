"""A local HTTP + WebSocket server that shows the newest frame, with its alpha, in a web page.

``http://HOST:PORT/overlay`` is a self-contained page (``overlay_page.html``, no external
assets) that a browser or OBS's *Browser* source opens; it connects back to
``ws://HOST:PORT/overlay/ws`` and draws every frame it receives on a transparent canvas. Both
paths need ``?token=TOKEN`` when the server has a token.

Wire format, one binary WebSocket message per frame (little-endian)::

    0  4 bytes  magic b"AFO1"
    4  uint32   frame index
    8  float64  wall-clock time (Unix epoch, milliseconds) at which the frame was published
    16 uint16   width     18 uint16 height
    20 uint32   length N of the colour image
    24 N bytes  colour: JPEG (4:4:4), the RGB of the frame
    24+N ...    alpha: a PNG whose alpha channel is the frame's alpha; empty for RGB frames

The page draws the JPEG and then the PNG with ``destination-in``, so each pixel keeps the
frame's exact alpha. Why not one RGBA image: with OpenCV, an RGBA PNG of a photo is several
times larger and slower to encode, and a WebP too slow for 25 fps on a small CPU (measurements
in docs/sinks.md). The alpha PNG is OpenCV's 8-bit greyscale PNG relabelled as a palette image
whose 256 entries are black with alpha 0..255 (`alpha_png`), which costs a fraction of an
RGBA PNG.

`publish(image)` encodes once (on the caller's thread, only while a page is connected) and
hands the message to the server's event loop; each client is sent the newest message after
its previous send has drained, so a slow client skips frames and nothing queues up. The server
(``websockets``, asyncio) runs in a thread of its own.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import struct
import threading
import time
import zlib
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

PAGE_PATH = "/overlay"
SOCKET_PATH = "/overlay/ws"
MAGIC = b"AFO1"
HEADER = struct.Struct("<4sIdHHI")  # magic, index, published_ms, width, height, colour length
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class OverlayServerError(RuntimeError):
    """The server could not start (the message says why)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def alpha_png(alpha: np.ndarray) -> bytes:
    """A PNG of `alpha` (``uint8 (h, w)``) whose pixels are black with that alpha.

    OpenCV writes the 8-bit greyscale PNG; its colour type becomes 3 (palette) with 256 black
    entries whose transparency (``tRNS``) is the entry's index, so a browser decodes grey
    value v as alpha v. Lossless.
    """
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"expected a uint8 (h, w) alpha plane, got {alpha.dtype} {alpha.shape}")
    ok, encoded = cv2.imencode(".png", alpha, (cv2.IMWRITE_PNG_COMPRESSION, 1))
    if not ok:
        raise OverlayServerError("cv2.imencode failed to encode a PNG")
    data = encoded.tobytes()
    ihdr = bytearray(data[16:29])  # after the signature and IHDR's length and type
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or ihdr[8:10] != b"\x08\x00":
        raise OverlayServerError("unexpected PNG layout from OpenCV (expected 8-bit greyscale)")
    ihdr[9] = 3  # colour type: palette
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", bytes(ihdr))
        + _png_chunk(b"PLTE", bytes(256 * 3))
        + _png_chunk(b"tRNS", bytes(range(256)))
        + data[33:]  # the remaining chunks (IDAT..., IEND) unchanged
    )


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB/RGBA uint8 (h, w, 3|4) image, got {image.dtype} {image.shape}")


def encode_frame(image: np.ndarray, index: int, published_ms: float, quality: int = 90) -> bytes:
    """One wire message (see the module docs) for an RGB/RGBA ``uint8 (h, w, 3|4)`` image."""
    _check_image(image)
    height, width = image.shape[:2]
    ok, colour = cv2.imencode(
        ".jpg",
        cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR),
        (cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    )
    if not ok:
        raise OverlayServerError("cv2.imencode failed to encode a JPEG")
    alpha = alpha_png(np.ascontiguousarray(image[..., 3])) if image.shape[2] == 4 else b""
    header = HEADER.pack(MAGIC, index & 0xFFFFFFFF, published_ms, width, height, colour.size)
    return header + colour.tobytes() + alpha


def page_html() -> bytes:
    """The overlay page, as shipped in the package."""
    return resources.files("avatarforcing.integrations").joinpath("overlay_page.html").read_bytes()


class OverlayServer:
    """Serve the overlay page and its frame stream on `host`:`port` (0 = any free port).

    `token`: ``""`` = no token; otherwise every request needs ``?token=TOKEN``. `quality`:
    JPEG quality of the colour image. Start with `start()` (or use as a context manager);
    `close()` closes every connection (pages then reconnect on their own, with backoff).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = "", quality: int = 90) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1-100, got {quality}")
        self.host, self.requested_port, self.quality = host, port, quality
        self._token = token
        self._page = page_html()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        # newest message, its sequence number and an event set when a newer one arrives:
        # touched only on the event loop's thread
        self._message = b""
        self._sequence = 0
        self._fresh: asyncio.Event | None = None
        self._clients = 0
        self.published = 0  # frames encoded and handed to clients
        self.sent = 0  # messages written to clients, all clients together

    def __repr__(self) -> str:  # never show the token
        return f"OverlayServer({self.host}:{self.requested_port}, token={'***' if self._token else 'none'})"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> OverlayServer:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure), name="overlay-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise OverlayServerError(f"the server on {self.host}:{self.requested_port} did not start within 30 s")
        if failure:
            self._thread.join()
            self._thread = None
            error = failure[0]
            # asyncio's message repeats the address: the errno's own text is enough
            code = getattr(error, "errno", None)
            reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(error)
            raise OverlayServerError(f"cannot listen on {self.host}:{self.requested_port} ({reason})") from error
        log.debug("overlay server listening on %s:%d", self.host, self.port)
        return self

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._fresh, self._stopped = asyncio.Event(), asyncio.Event()
            try:
                self._server = await serve(
                    self._client,
                    self.host,
                    self.requested_port,
                    process_request=self._route,
                    compression=None,  # JPEG/PNG do not deflate further
                    close_timeout=1.0,  # a stuck browser must not hold the end of a session up
                    max_size=4096,  # the page sends nothing
                    # websockets logs each request line at debug level: keep the token out
                    logger=_quiet_logger(),
                )
            except Exception as error:  # a busy port, an address not of this machine...
                failure.append(error)
                ready.set()
                return
            ready.set()
            await self._stopped.wait()
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

        asyncio.run(main())

    def close(self) -> None:
        """Stop serving and close every connection; idempotent."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and self._thread is not None:
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:
                pass  # the loop already ended
            self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> OverlayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames ------------------------------------------------------------------------------
    def publish(self, image: np.ndarray, index: int = 0) -> None:
        """Make `image` (RGB/RGBA ``uint8 (h, w, 3|4)``) the newest frame, stamped with the
        wall clock now. Encodes on the calling thread (a few ms for 512²) when a page is
        connected, else only checks the image; never waits for a client."""
        published_ms = time.time() * 1000.0
        _check_image(image)
        loop = self._loop
        if self._clients == 0 or loop is None:
            return
        message = encode_frame(image, index, published_ms, self.quality)
        try:
            loop.call_soon_threadsafe(self._announce, message)
        except RuntimeError:
            return  # closing
        self.published += 1

    def _announce(self, message: bytes) -> None:
        self._message, self._sequence = message, self._sequence + 1
        fresh, self._fresh = self._fresh, asyncio.Event()
        fresh.set()

    # -- HTTP and WebSocket ------------------------------------------------------------------
    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        """The page, a refusal, or None to go on with the WebSocket handshake."""
        url = urlsplit(request.path)
        if url.path not in (PAGE_PATH, SOCKET_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: open {PAGE_PATH}\n")
        if self._token:
            given = parse_qs(url.query).get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return connection.respond(
                    HTTPStatus.FORBIDDEN,
                    "missing or wrong token: use the overlay URL printed when the session started\n",
                )
        if url.path == SOCKET_PATH:
            return None
        response = connection.respond(HTTPStatus.OK, "")
        response.body = self._page
        del response.headers["Content-Type"], response.headers["Content-Length"]
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Content-Length"] = str(len(self._page))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _client(self, connection: ServerConnection) -> None:
        """Send the newest message whenever there is one this client has not had."""
        self._clients += 1
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            sent = self._sequence
            while not closed.done():
                if self._sequence == sent:
                    fresh = asyncio.ensure_future(self._fresh.wait())
                    await asyncio.wait((fresh, closed), return_when=asyncio.FIRST_COMPLETED)
                    fresh.cancel()
                    continue
                sent = self._sequence
                await connection.send(self._message)  # returns once the write buffer drained
                self.sent += 1
        except ConnectionClosed:
            pass  # the page went away
        finally:
            closed.cancel()
            self._clients -= 1

    # -- addresses and status ----------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise OverlayServerError("the overlay server is not running; call start() first")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    def page_url(self, with_token: bool = True) -> str:
        """The page's address (``token=***`` in place of the token unless `with_token`)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        url = f"http://{host}:{self.port}{PAGE_PATH}"
        if self._token:
            url += "?token=" + (quote(self._token, safe="") if with_token else "***")
        return url

    @property
    def clients(self) -> int:
        """Pages connected now."""
        return self._clients


def _quiet_logger() -> logging.Logger:
    """websockets' logger for this server: INFO and above only (its debug lines include the
    request path, which carries the token)."""
    quiet = log.getChild("websockets")
    quiet.setLevel(logging.INFO)
    return quiet
