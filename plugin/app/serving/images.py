"""Images on the wire: the user's frames and the portrait going up, rendered frames coming down.

`encode_frame(image, "jpeg" | "rgba")`: a rendered ``uint8`` RGB or RGBA frame as JPEG (RGB; RGBA
flattened like every JPEG output, `integrations.mjpeg_server.encode_jpeg`) or as PNG of RGBA
(alpha kept, lossless: the client gets the server's pixels exactly; RGB gets an opaque alpha).
`decode_frame` reverses it. `decode_image`: JPEG or PNG bytes from a peer -> RGB ``uint8``, with
a size limit (a decompression bomb is refused, not decoded).
"""

from __future__ import annotations

import numpy as np

from avatarforcing.plugin.app.serving.protocol import ProtocolError

MAX_IMAGE_SIDE = 4096
_PNG_FAST = 1  # zlib level: a 512² frame in a few ms; RGBA avatars with flat backgrounds still shrink well


def encode_frame(image: np.ndarray, frame_format: str, quality: int = 85) -> bytes:
    import cv2

    from avatarforcing.integrations.mjpeg_server import encode_jpeg

    if frame_format == "jpeg":
        return encode_jpeg(image, quality)
    if image.shape[2] == 3:
        image = np.concatenate((image, np.full(image.shape[:2] + (1,), 255, np.uint8)), axis=2)
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA), (cv2.IMWRITE_PNG_COMPRESSION, _PNG_FAST))
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return data.tobytes()


def decode_frame(data: bytes, frame_format: str) -> np.ndarray:
    """`encode_frame`'s bytes -> RGB ``(h, w, 3)`` ("jpeg") or RGBA ``(h, w, 4)`` ("rgba")."""
    import cv2

    flag = cv2.IMREAD_COLOR if frame_format == "jpeg" else cv2.IMREAD_UNCHANGED
    image = _checked(cv2.imdecode(np.frombuffer(data, np.uint8), flag), "a rendered frame")
    if frame_format == "jpeg":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ProtocolError("a rendered RGBA frame is not a 4-channel PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)


def decode_image(data: bytes, what: str) -> np.ndarray:
    """JPEG or PNG bytes -> RGB ``uint8 (h, w, 3)``; anything else raises ProtocolError naming `what`."""
    import cv2

    image = _checked(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), what)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _checked(image: np.ndarray | None, what: str) -> np.ndarray:
    if image is None or image.ndim != 3:
        raise ProtocolError(f"{what} is not a decodable image")
    if max(image.shape[:2]) > MAX_IMAGE_SIDE:
        raise ProtocolError(f"{what} of {image.shape[1]}x{image.shape[0]} exceeds {MAX_IMAGE_SIDE} pixels")
    return image
