"""A preview window in a child process, fed with raw RGB frames through a pipe.

The window lives in its own process (``python -m avatarforcing.integrations.preview_window``)
because GUI toolkits want their own main thread (macOS insists on it) and because OpenCV's Qt
window hangs in a process that loaded PyAV's FFmpeg libraries first. The child prints
``ready`` once the window exists (or one error line and exits 1), then shows every
``height * width * 3`` bytes it reads from stdin, until stdin closes or the user closes the
window.

`PreviewWindow.put(rgb)` never blocks: a writer thread sends the newest frame (resized to the
window's size) whenever one arrives.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import numpy as np

from avatarforcing.integrations.alpha import flatten_rgba
from avatarforcing.integrations.frame_handoff import LatestValue

log = logging.getLogger(__name__)


class PreviewError(RuntimeError):
    """The window could not open (the message says why)."""


class PreviewWindow:
    """A `width` x `height` window titled `title`; `start()`, `put(rgb)`, `close()`."""

    def __init__(self, title: str, width: int, height: int, start_timeout: float = 20.0) -> None:
        self.title, self.width, self.height = title, width, height
        self.start_timeout = start_timeout
        self.frames: LatestValue[np.ndarray] = LatestValue()
        self.shown = 0  # frames written to the window process
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> PreviewWindow:
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, self.title, str(self.width), str(self.height)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        answer: list[bytes] = []
        reader = threading.Thread(target=lambda: answer.append(self._process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.start_timeout)
        if not answer or answer[0].strip() != b"ready":
            self._process.kill()
            _, err = self._process.communicate()
            reason = err.decode(errors="replace").strip().splitlines()
            raise PreviewError(reason[-1] if reason else f"no window within {self.start_timeout:g} s")
        self._thread = threading.Thread(target=self._feed, name="preview-feed", daemon=True)
        self._thread.start()
        return self

    def put(self, image: np.ndarray) -> None:
        """Hand over the newest RGB/RGBA uint8 frame; never blocks."""
        self.frames.put(image)

    @property
    def open(self) -> bool:
        """False once the user closed the window (or it crashed)."""
        return self._process is not None and self._process.poll() is None

    def _feed(self) -> None:
        import cv2

        sequence = 0
        while True:
            sequence, image = self.frames.wait_newer(sequence, None)
            if self.frames.closed or image is None:
                return
            if image.shape[:2] != (self.height, self.width):
                image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
            try:
                self._process.stdin.write(np.ascontiguousarray(flatten_rgba(image)).tobytes())
                self._process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                log.info("preview window closed; the session goes on")
                return
            self.shown += 1

    def close(self) -> None:
        """Close the window and wait for its process; idempotent."""
        self.frames.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str]) -> int:
    """Child process: ``TITLE WIDTH HEIGHT``; frames on stdin, ``ready`` on stdout."""
    import cv2

    title, width, height = argv[0], int(argv[1]), int(argv[2])
    try:
        cv2.namedWindow(title, cv2.WINDOW_GUI_NORMAL | cv2.WINDOW_KEEPRATIO)
        cv2.resizeWindow(title, width, height)
        cv2.waitKey(1)
    except cv2.error as error:
        print(
            f"cannot open a window: {str(error).strip().splitlines()[-1]} (an OpenCV build without GUI support?)",
            file=sys.stderr,
        )
        return 1
    print("ready", flush=True)
    size = width * height * 3
    stdin = sys.stdin.buffer
    while True:
        data = stdin.read(size)
        if len(data) < size:
            break
        frame = np.frombuffer(data, np.uint8).reshape(height, width, 3)
        cv2.imshow(title, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)
        if cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
            break
    cv2.destroyAllWindows()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
