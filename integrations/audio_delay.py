"""Route the microphone through a delay into a virtual microphone, so that a meeting app hears
the voice as late as it sees the avatar's lips.

On Linux (PulseAudio, or PipeWire with pipewire-pulse) the output is a null sink (default
``avatar_mic``) created with ``pactl load-module module-null-sink`` when absent, plus a
``module-remap-source`` named ``<sink>_source`` over its monitor: meeting apps pick
"AvatarForcing microphone" (or the sink's monitor) as their microphone. Modules loaded here
are unloaded at `close()`. Elsewhere, `output` names a sounddevice playback device, e.g. the
input side of a virtual audio cable ("CABLE Input" on Windows, "BlackHole 2ch" on macOS).

The delay is a FIFO between the capture and playback callbacks: playback reads the captured
samples in order, keeping ``delay - capture latency - playback latency`` (the latencies that
PortAudio reports) buffered, so the sound leaves `output` `delay_s()` seconds after it
entered `input`. The read position moves sample by sample and jumps only when the fill level
is off by more than `jump_tolerance_s` (a changed delay, a stall): no resampling, no drift
correction in between.

Audio is float32 mono at `sample_rate`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avatarforcing.integrations import pulseaudio

log = logging.getLogger(__name__)

_PULSE_ENV_LOCK = threading.Lock()  # PULSE_SOURCE/PULSE_SINK are read by libpulse at stream open


class MicDelayError(RuntimeError):
    """The delayed microphone cannot run (the message says what to install or change)."""


# --------------------------------------------------------------------------------------------
# PulseAudio plumbing
# --------------------------------------------------------------------------------------------
def _names(kind: str) -> list[str]:
    try:
        return pulseaudio.names(kind)
    except pulseaudio.PulseAudioError as error:
        raise MicDelayError(str(error)) from error


def _pactl(*args: str) -> str:
    """``pactl ARGS`` with its failure reported as the delayed microphone's."""
    try:
        return pulseaudio.pactl(*args)
    except pulseaudio.PulseAudioError as error:
        raise MicDelayError(str(error)) from error


@dataclass
class VirtualMicrophone:
    """A Pulse null sink `sink` (what we play into) and its remapped source; `modules` are the
    module indices loaded by `ensure()` (unloaded by `remove()`)."""

    sink: str
    sample_rate: int = 48000
    modules: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.sink}_source"

    def ensure(self) -> VirtualMicrophone:
        loaded = []
        if self.sink not in _names("sinks"):
            loaded.append(
                _pactl(
                    "load-module",
                    "module-null-sink",
                    f"sink_name={self.sink}",
                    f"rate={self.sample_rate}",
                    "channels=1",
                    "sink_properties=device.description=AvatarForcing_delayed_microphone",
                ).strip()
            )
        if self.source not in _names("sources"):
            loaded.append(
                _pactl(
                    "load-module",
                    "module-remap-source",
                    f"master={self.sink}.monitor",
                    f"source_name={self.source}",
                    "source_properties=device.description=AvatarForcing_microphone",
                ).strip()
            )
        self.modules = tuple(loaded)
        return self

    def remove(self) -> None:
        for module in reversed(self.modules):
            try:
                _pactl("unload-module", module)
            except MicDelayError as error:  # the server may be gone already
                log.debug("could not unload module %s: %s", module, error)
        self.modules = ()


# --------------------------------------------------------------------------------------------
# The delay line
# --------------------------------------------------------------------------------------------
class DelayLine:
    """A ring of the last `capacity` input samples, indexed by absolute sample count.
    One writer thread and one reader thread."""

    def __init__(self, capacity: int) -> None:
        self.ring = np.zeros(capacity, np.float32)
        self.written = 0  # samples written so far
        self._lock = threading.Lock()

    def write(self, samples: np.ndarray) -> None:
        n = len(samples)
        capacity = len(self.ring)
        with self._lock:
            start = self.written % capacity
            first = min(n, capacity - start)
            self.ring[start : start + first] = samples[:first]
            self.ring[: n - first] = samples[first:]
            self.written += n

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples ``start .. start+n`` (zeros for those not written yet or already overwritten)."""
        out = np.zeros(n, np.float32)
        capacity = len(self.ring)
        with self._lock:
            low = max(start, self.written - capacity, 0)
            high = min(start + n, self.written)
            if high > low:
                out[low - start : high - start] = self.ring[np.arange(low, high) % capacity]
        return out


# --------------------------------------------------------------------------------------------
# The delayed microphone
# --------------------------------------------------------------------------------------------
class MicDelay:
    """Microphone `input` -> delay -> `output`.

    `input`: "" for the default microphone, a Pulse source name, or a sounddevice input device
    (name or index). `output`: on Linux with Pulse, the null sink to create/use (default
    ``avatar_mic``); elsewhere a sounddevice output device. `delay_s()` is called on the audio
    thread for every block (keep it cheap: it reads a float); `extra_s` is added to it.
    """

    def __init__(
        self,
        input: str = "",
        output: str = "avatar_mic",
        delay_s: Callable[[], float] = lambda: 0.0,
        extra_s: float = 0.0,
        sample_rate: int = 48000,
        block_s: float = 0.01,
        jump_tolerance_s: float = 0.04,
        max_delay_s: float = 10.0,
    ) -> None:
        self.input, self.output = input, output
        self._delay_s, self.extra_s = delay_s, extra_s
        self.sample_rate = sample_rate
        self.blocksize = max(16, int(round(block_s * sample_rate)))
        self.jump_tolerance = int(jump_tolerance_s * sample_rate)
        self.line = DelayLine(int((max_delay_s + 1.0) * sample_rate))
        self._device_latency = 0.0
        self.microphone: VirtualMicrophone | None = None
        self.jumps = 0
        self.underruns = 0
        self._read_position: int | None = None
        self._streams: list = []

    def wanted_delay(self) -> float:
        try:
            delay = float(self._delay_s()) + self.extra_s
        except Exception:  # a misbehaving provider must not stop the audio
            delay = self.extra_s
        return min(max(0.0, delay), len(self.line.ring) / self.sample_rate - 1.0)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> MicDelay:
        import sounddevice as sd

        use_pulse = sys.platform.startswith("linux") and pulseaudio.available()
        if use_pulse:
            self.microphone = VirtualMicrophone(self.output, self.sample_rate).ensure()
            out_device, out_env = self._pulse_device(sd), {"PULSE_SINK": self.output}
        elif sys.platform.startswith("linux"):
            raise MicDelayError(
                "mic-delay needs a PulseAudio or PipeWire (pipewire-pulse) server on Linux; "
                "pactl info failed: start one, or sudo apt-get install pulseaudio-utils"
            )
        else:
            out_device, out_env = self._named_device(sd, self.output, "output"), {}
        in_device, in_env = None, {}
        if self.input:
            if use_pulse and self.input in _names("sources"):
                in_device, in_env = self._pulse_device(sd), {"PULSE_SOURCE": self.input}
            else:
                in_device = self._named_device(sd, self.input, "input")
        try:
            with _pulse_env(out_env):
                output = sd.OutputStream(
                    device=out_device,
                    samplerate=self.sample_rate,
                    channels=1,
                    dtype="float32",
                    blocksize=self.blocksize,
                    latency="low",
                    callback=self._play,
                )
            with _pulse_env(in_env):
                capture = sd.InputStream(
                    device=in_device,
                    samplerate=self.sample_rate,
                    channels=1,
                    dtype="float32",
                    blocksize=self.blocksize,
                    latency="low",
                    callback=self._capture,
                )
        except sd.PortAudioError as error:
            self.close()
            raise MicDelayError(f"cannot open the audio devices for mic-delay: {error}") from error
        self._streams = [capture, output]
        self._device_latency = float(capture.latency) + float(output.latency)
        capture.start()
        output.start()
        log.info(
            "mic-delay: %s -> %s (+%.0f ms, capture %.0f ms, playback %.0f ms latency)",
            self.input or "default microphone",
            self.output,
            self.extra_s * 1000,
            capture.latency * 1000,
            output.latency * 1000,
        )
        return self

    @staticmethod
    def _pulse_device(sd) -> str:
        names = [d["name"] for d in sd.query_devices()]
        if "pulse" not in names:
            raise MicDelayError(
                "PortAudio has no 'pulse' device: sudo apt-get install libasound2-plugins "
                "(and start the sound server before avatarforcing)"
            )
        return "pulse"

    @staticmethod
    def _named_device(sd, name: str, kind: str):
        device = int(name) if name.isdigit() else name
        try:
            sd.check_input_settings(device=device) if kind == "input" else sd.check_output_settings(device=device)
        except (ValueError, sd.PortAudioError) as error:
            raise MicDelayError(
                f"no {kind} audio device {name!r} ({error}); list them with python -m sounddevice"
            ) from error
        return device

    def close(self) -> None:
        """Stop both streams and remove the modules loaded at start; idempotent."""
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.stop()
                stream.close()
            except Exception as error:  # the server may have died
                log.debug("closing a mic-delay stream: %s", error)
        if self.microphone is not None:
            self.microphone.remove()
            self.microphone = None

    @property
    def running(self) -> bool:
        return bool(self._streams) and all(stream.active for stream in self._streams)

    # -- audio callbacks (PortAudio threads) --------------------------------------------------
    def _capture(self, indata, frames, time_info, status) -> None:
        self.line.write(indata[:, 0])

    def _play(self, outdata, frames, time_info, status) -> None:
        written = self.line.written
        if written == 0:
            outdata.fill(0)
            return
        buffered_target = int(round((self.wanted_delay() - self._device_latency) * self.sample_rate))
        target = written - max(0, buffered_target)
        if self._read_position is None or abs(self._read_position - target) > self.jump_tolerance:
            if self._read_position is not None:
                self.jumps += 1
            self._read_position = target
        if self._read_position + frames > written:
            self.underruns += 1
        outdata[:, 0] = self.line.read(self._read_position, frames)
        self._read_position += frames


class _pulse_env:
    """Set PULSE_* variables while a stream opens (libpulse reads them then), under a lock."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        _PULSE_ENV_LOCK.acquire()
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc) -> None:
        try:
            for key, value in self.saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        finally:
            _PULSE_ENV_LOCK.release()
