"""A live video stream that keeps the alpha channel, for FFmpeg-based readers (OBS's media source).

The container is NUT and the video is ``rawvideo`` RGBA: no encoding cost (a copy), exact
colours, and FFmpeg hands OBS frames in ``AV_PIX_FMT_RGBA``, which OBS's media source shows
with their alpha. A 512x512 stream is 1 MiB a frame (26 MiB/s at 25 fps): meant for a reader on
this machine (loopback), not for a network link.

- `rgba_frame(image)`: an RGB or RGBA ``uint8`` ``(h, w, 3|4)`` image as contiguous RGBA
  (RGB gets alpha 255).
- `NutRgbaWriter`: one reader's stream over a writable binary object: the NUT header, then one
  packet per `write`, pts in frame periods, flushed packet by packet (nothing waits in a buffer
  for the next frame).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Protocol

import numpy as np

INPUT_FORMAT = "nut"  # what an FFmpeg reader is told to expect (OBS: the media source's input_format)
CONTENT_TYPE = "video/x-nut"


class BinaryOutput(Protocol):
    def write(self, data: bytes, /) -> object: ...


def rgba_frame(image: np.ndarray) -> np.ndarray:
    """Contiguous RGBA ``uint8`` ``(h, w, 4)`` of an RGB/RGBA ``uint8`` image (RGB: alpha 255)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB/RGBA uint8 (h, w, 3|4) image, got {image.dtype} {image.shape}")
    if image.shape[2] == 4:
        return np.ascontiguousarray(image)
    out = np.empty((*image.shape[:2], 4), np.uint8)
    out[..., :3] = image
    out[..., 3] = 255
    return out


class _WriteOnly:
    """Exposes only ``write`` to PyAV: an object with ``seek`` would be taken for a seekable file,
    and the NUT muxer would then keep data back to patch it later."""

    def __init__(self, out: BinaryOutput) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.write(data)
        return len(data)


class NutRgbaWriter:
    """A NUT stream of `width` x `height` RGBA frames at `fps` written to `out` (any object with
    ``write(bytes)``, e.g. a socket file). Errors of `out` (a reader that went away:
    ``BrokenPipeError``, ``ConnectionResetError``) propagate from `write`."""

    def __init__(self, out: BinaryOutput, width: int, height: int, fps: float) -> None:
        import av

        self.size = (int(width), int(height))
        self.time_base = 1 / Fraction(fps).limit_denominator(1001)
        self._container = av.open(_WriteOnly(out), "w", format=INPUT_FORMAT, container_options={"flush_packets": "1"})
        stream = self._container.add_stream("rawvideo", rate=1 / self.time_base)
        stream.width, stream.height, stream.pix_fmt = self.size[0], self.size[1], "rgba"
        stream.codec_context.time_base = self.time_base
        self._stream = stream
        self._last_pts = -1

    def write(self, rgba: np.ndarray, pts: int) -> None:
        """Send one RGBA ``uint8`` ``(height, width, 4)`` frame at `pts` frame periods (kept
        strictly increasing: a pts not after the previous one becomes previous + 1)."""
        import av

        if rgba.shape != (self.size[1], self.size[0], 4) or rgba.dtype != np.uint8:
            raise ValueError(f"expected a uint8 {(self.size[1], self.size[0], 4)} frame, got {rgba.dtype} {rgba.shape}")
        pts = max(int(pts), self._last_pts + 1)
        packet = av.Packet(np.ascontiguousarray(rgba))
        packet.pts = packet.dts = pts
        packet.time_base = self.time_base
        packet.is_keyframe = True  # rawvideo: every frame stands alone
        packet.stream = self._stream
        self._container.mux(packet)
        self._last_pts = pts

    def close(self) -> None:
        """End the stream (the NUT trailer); never raises: the reader may be gone already."""
        try:
            self._container.close()
        except Exception:  # a closed socket: nothing left to tell the reader
            pass
