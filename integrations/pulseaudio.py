"""PulseAudio and PipeWire (pipewire-pulse) through ``pactl``: the one adapter for the sound server.

Used by device listing (sources, sinks, monitors = system loopback), the delayed microphone
(null sink + remapped source) and ``doctor``. Only Linux runs a server that ``pactl`` reaches;
elsewhere, or without ``pactl``, `available` is False and `query` returns None.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

PACTL_TIMEOUT_S = 2.0  # a healthy server answers in milliseconds; a hung one must not hang us


class PulseAudioError(RuntimeError):
    """A ``pactl`` call failed; the message says which call and what to install or start."""


def pactl(*args: str, timeout: float = 5.0) -> str:
    """stdout of ``pactl ARGS``; `PulseAudioError` when pactl is missing, times out or fails."""
    try:
        result = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as error:
        raise PulseAudioError("pactl not found: sudo apt-get install pulseaudio-utils") from error
    except subprocess.TimeoutExpired as error:
        raise PulseAudioError(f"pactl {' '.join(args)} did not answer within {timeout:g} s") from error
    if result.returncode != 0:
        raise PulseAudioError(f"pactl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def query(*args: str, timeout: float = PACTL_TIMEOUT_S) -> str | None:
    """stdout of ``pactl ARGS``, or None where there is no Linux, no pactl, no server or an error."""
    if not sys.platform.startswith("linux") or shutil.which("pactl") is None:
        return None
    try:
        return pactl(*args, timeout=timeout)
    except (OSError, PulseAudioError):
        return None


def available() -> bool:
    """True when ``pactl info`` reaches a PulseAudio or PipeWire server."""
    return query("info") is not None


def names(kind: str) -> list[str]:
    """Names of the server's ``sinks`` or ``sources`` (``pactl list short KIND``); raises
    `PulseAudioError` when the server cannot be asked."""
    return [line.split("\t")[1] for line in pactl("list", "short", kind).splitlines() if "\t" in line]


def monitor_sources() -> list[str] | None:
    """The monitor sources (``<sink>.monitor``: what each output plays), or None when no server
    can be asked."""
    listing = query("list", "short", "sources")
    if listing is None:
        return None
    return [
        line.split("\t")[1]
        for line in listing.splitlines()
        if "\t" in line and line.split("\t")[1].endswith(".monitor")
    ]
