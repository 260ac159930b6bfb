"""Audio devices: list inputs, outputs and loopback candidates; resolve a device name to what
`sounddevice.InputStream` has to open.

Sources of the listing:

- PortAudio through `sounddevice` (every OS): inputs and outputs. Loopback candidates among
  them: Windows WASAPI loopback inputs (``"... [Loopback]"``), macOS virtual devices
  (BlackHole, Loopback, Soundflower), "Stereo Mix"/"What U Hear" inputs.
- PulseAudio/PipeWire through ``pactl`` (Linux, when installed and a server answers): sources and
  sinks by their server names; the monitor of each sink (``SINK.monitor``) is a loopback. Debian's
  PortAudio has no PulseAudio host API, so these are opened through PortAudio's ALSA ``pulse``
  device with ``PULSE_SOURCE=NAME`` in the environment at open time (see `OpenPlan`).

`sounddevice` is imported lazily: listing works (pactl only) where PortAudio is missing.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from avatarforcing.integrations import pulseaudio

LOOPBACK_NAME_WORDS = ("[loopback]", "loopback", "blackhole", "soundflower", "stereo mix", "what u hear", "monitor of")
PULSE_DEFAULT_MONITOR = "@DEFAULT_MONITOR@"
DeviceKind = Literal["input", "output"]


class AudioDeviceError(ValueError):
    """A device name that matches nothing (or several things); the message lists candidates."""


@dataclass(frozen=True)
class AudioDevice:
    """One audio endpoint.

    `name`: what to give as a source's ``device`` option; `kind`: ``input``/``output``;
    `api`: ``"pulse"`` for sound-server names (pactl), else the PortAudio host API (``ALSA``,
    ``Windows WASAPI``, ``Core Audio``...); `index`: PortAudio device index (``None`` for
    pactl entries); `channels`: maximum channels; `sample_rate`: default rate in Hz (0 when
    unknown); `is_default`: the system default of its kind; `is_loopback`: captures what is
    played to an output (a monitor, WASAPI loopback, BlackHole...); `monitor_of`: the output
    that a loopback captures, when known.
    """

    name: str
    description: str
    kind: DeviceKind
    api: str
    index: int | None = None
    channels: int = 0
    sample_rate: float = 0.0
    is_default: bool = False
    is_loopback: bool = False
    monitor_of: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OpenPlan:
    """How to open one capture: ``sounddevice.InputStream(device=device, extra_settings=...)``
    with the environment variables `env` set while the stream opens (``PULSE_SOURCE`` for a
    sound-server source). `label` describes the choice for logs and error messages."""

    device: int | str | None
    label: str
    env: dict[str, str] = field(default_factory=dict)
    extra_settings: Any = None


def _name_looks_like_loopback(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in LOOPBACK_NAME_WORDS)


# -- PortAudio -------------------------------------------------------------------------------------
def import_sounddevice():
    """The `sounddevice` module; `AudioDeviceError` with the fix when PortAudio is missing."""
    try:
        import sounddevice
    except ModuleNotFoundError as error:
        raise AudioDeviceError("sounddevice is not installed: pip install sounddevice") from error
    except OSError as error:
        raise AudioDeviceError(
            f"sounddevice cannot load PortAudio ({error}); install it: "
            "apt-get install libportaudio2 (Linux), brew install portaudio (macOS)"
        ) from error
    return sounddevice


def rescan_portaudio(sd) -> None:
    """Make PortAudio enumerate devices again (it lists them once, at initialisation).

    PortAudio's initialisation is reference counted: this terminates and re-initialises it,
    which closes every stream of the process that is still open. Callers do this only when the
    device they need is missing (e.g. the sound server started after the process)."""
    sd._terminate()
    sd._initialize()


def portaudio_devices(sd=None) -> list[AudioDevice]:
    """Inputs and outputs that PortAudio lists (a device with both appears twice)."""
    sd = sd or import_sounddevice()
    apis = [api["name"] for api in sd.query_hostapis()]
    try:
        default_in, default_out = sd.default.device
    except Exception:  # no default device at all
        default_in = default_out = -1
    devices: list[AudioDevice] = []
    for info in sd.query_devices():
        api = apis[info["hostapi"]] if 0 <= info["hostapi"] < len(apis) else ""
        for kind, channels, default in (
            ("input", info["max_input_channels"], default_in),
            ("output", info["max_output_channels"], default_out),
        ):
            if channels <= 0:
                continue
            devices.append(
                AudioDevice(
                    name=info["name"],
                    description=f"{info['name']} ({api})",
                    kind=kind,
                    api=api,
                    index=info["index"],
                    channels=channels,
                    sample_rate=float(info["default_samplerate"]),
                    is_default=info["index"] == default,
                    is_loopback=kind == "input" and _name_looks_like_loopback(info["name"]),
                )
            )
    return devices


# -- PulseAudio / PipeWire (pactl) -----------------------------------------------------------------
def pulse_devices() -> list[AudioDevice]:
    """Sources (inputs; monitors marked as loopback) and sinks (outputs) of the sound server,
    or ``[]`` when there is no pactl or no server."""
    default_source = (pulseaudio.query("get-default-source") or "").strip()
    default_sink = (pulseaudio.query("get-default-sink") or "").strip()
    devices: list[AudioDevice] = []
    for kind, listing in (("input", "sources"), ("output", "sinks")):
        for entry in _pactl_list(listing):
            name = entry.get("name", "")
            monitor_of = entry.get("monitor_source", "") if kind == "input" else ""
            properties = entry.get("properties") or {}
            loopback = kind == "input" and (
                bool(monitor_of) or properties.get("device.class") == "monitor" or name.endswith(".monitor")
            )
            if loopback and not monitor_of and name.endswith(".monitor"):
                monitor_of = name[: -len(".monitor")]
            channels, rate = _parse_sample_spec(entry.get("sample_specification", ""))
            devices.append(
                AudioDevice(
                    name=name,
                    description=entry.get("description", name),
                    kind=kind,
                    api="pulse",
                    channels=channels,
                    sample_rate=rate,
                    is_default=name == (default_source if kind == "input" else default_sink),
                    is_loopback=loopback,
                    monitor_of=monitor_of,
                )
            )
    return devices


def _pactl_list(what: str) -> list[dict[str, Any]]:
    text = pulseaudio.query("-f", "json", "list", what)
    if text is not None:
        try:
            return list(json.loads(text))
        except ValueError:
            pass
    # pactl before 16 has no JSON output: "index name driver spec state" lines
    text = pulseaudio.query("list", "short", what) or ""
    entries = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            entries.append({"name": parts[1], "sample_specification": parts[3]})
    return entries


def _parse_sample_spec(spec: str) -> tuple[int, float]:
    """``"s16le 2ch 48000Hz"`` -> ``(2, 48000.0)``; zeros when unparsable."""
    channels, rate = 0, 0.0
    for word in spec.split():
        if word.endswith("ch") and word[:-2].isdigit():
            channels = int(word[:-2])
        elif word.endswith("Hz") and word[:-2].isdigit():
            rate = float(word[:-2])
    return channels, rate


# -- everything ------------------------------------------------------------------------------------
def list_audio_devices() -> list[AudioDevice]:
    """Sound-server devices (pactl) first, then PortAudio's; PortAudio missing is not an error
    here (the listing simply lacks those entries)."""
    devices = pulse_devices()
    try:
        devices += portaudio_devices()
    except AudioDeviceError:
        pass
    return devices


def loopback_candidates(devices: list[AudioDevice]) -> list[AudioDevice]:
    """The inputs that capture an output, defaults first."""
    found = [d for d in devices if d.kind == "input" and d.is_loopback]
    return sorted(found, key=lambda d: not d.is_default)


def how_to_get_loopback() -> str:
    """One line per OS telling the user how to get a loopback source."""
    if sys.platform.startswith("linux"):
        return (
            "run PulseAudio or PipeWire (each output has a 'SINK.monitor' source) and install "
            "pulseaudio-utils and libasound2-plugins (the ALSA 'pulse' device)"
        )
    if sys.platform == "darwin":
        return (
            "install a loopback driver (brew install blackhole-2ch), make a Multi-Output Device "
            "with your speakers and BlackHole, and pick BlackHole as the device"
        )
    if sys.platform == "win32":
        return (
            "use a WASAPI loopback input ('... [Loopback]' in avatarforcing devices; "
            "pip install -U sounddevice) or enable 'Stereo Mix' in the Sound control panel"
        )
    return "use a loopback input device of your sound system"


# -- resolving names -------------------------------------------------------------------------------
def _match(devices: list[AudioDevice], wanted: str) -> list[AudioDevice]:
    exact = [d for d in devices if d.name == wanted]
    if exact:
        return exact
    lowered = wanted.lower()
    return [d for d in devices if lowered in d.name.lower() or lowered in d.description.lower()]


def _describe(devices: list[AudioDevice]) -> str:
    names = sorted({d.name for d in devices})
    return ", ".join(repr(n) for n in names) if names else "none"


def _pulse_portaudio_device(inputs: list[AudioDevice]) -> int | str | None:
    """PortAudio's ALSA device that goes through the sound server (``pulse``, else ``default``)."""
    for name in ("pulse", "default"):
        for device in inputs:
            if device.api == "ALSA" and device.name == name:
                return device.index
    return None


def plan_input(device: str, loopback: bool, sd=None) -> OpenPlan:
    """How to open input `device` (a name, a case-insensitive substring of a name or
    description, or a PortAudio index as digits; ``""`` = the default input, or for
    `loopback` the monitor of the default output).

    Raises `AudioDeviceError` naming the candidates when nothing (or more than one thing)
    matches, or when no loopback exists (with how to get one)."""
    sd = sd or import_sounddevice()
    inputs = [d for d in portaudio_devices(sd) if d.kind == "input"]
    pulse_inputs = [d for d in pulse_devices() if d.kind == "input"]
    via_pulse = _pulse_portaudio_device(inputs)
    if via_pulse is None and pulse_inputs and sys.platform.startswith("linux"):
        # the sound server came up after PortAudio listed its devices: list them again
        rescan_portaudio(sd)
        inputs = [d for d in portaudio_devices(sd) if d.kind == "input"]
        via_pulse = _pulse_portaudio_device(inputs)
    if device.strip().isdigit():
        index = int(device)
        if not any(d.index == index for d in inputs):
            raise AudioDeviceError(f"no input device with index {index} (inputs: {_describe(inputs)})")
        return OpenPlan(index, f"PortAudio input #{index}")
    if device == "":
        if not loopback:
            return OpenPlan(None, "the default input")
        return _default_loopback_plan(sd, inputs, pulse_inputs, via_pulse)
    matches = _match(pulse_inputs, device) if via_pulse is not None else []
    if loopback and len(matches) > 1:
        matches = [d for d in matches if d.is_loopback] or matches
    if len(matches) == 1:
        return OpenPlan(via_pulse, f"sound-server source {matches[0].name!r}", env={"PULSE_SOURCE": matches[0].name})
    if len(matches) > 1:
        raise AudioDeviceError(f"device {device!r} matches several sources: {_describe(matches)}")
    matches = _match(inputs, device)
    if len(matches) > 1:
        exact_api = [d for d in matches if d.is_loopback] if loopback else []
        matches = exact_api if len(exact_api) == 1 else matches
    if len(matches) == 1:
        return OpenPlan(matches[0].index, f"input {matches[0].description!r}")
    if len(matches) > 1:
        raise AudioDeviceError(f"device {device!r} matches several inputs: {_describe(matches)}")
    raise AudioDeviceError(
        f"no input device matches {device!r} (inputs: {_describe(inputs + pulse_inputs)}; see avatarforcing devices)"
    )


def _default_loopback_plan(sd, inputs, pulse_inputs, via_pulse) -> OpenPlan:
    if via_pulse is not None:  # Linux with a PulseAudio/PipeWire server behind ALSA
        return OpenPlan(via_pulse, "the monitor of the default output", env={"PULSE_SOURCE": PULSE_DEFAULT_MONITOR})
    wasapi = _wasapi_loopback_plan(sd, inputs)
    if wasapi is not None:
        return wasapi
    candidates = loopback_candidates(inputs)
    if candidates:
        return OpenPlan(candidates[0].index, f"loopback input {candidates[0].description!r}")
    raise AudioDeviceError(f"no loopback input found: {how_to_get_loopback()}")


def _wasapi_loopback_plan(sd, inputs: list[AudioDevice]) -> OpenPlan | None:
    """Windows: the ``[Loopback]`` input of the default output, or WASAPI's loopback flag on the
    default output where this sounddevice supports it."""
    if sys.platform != "win32":
        return None
    outputs = [d for d in portaudio_devices(sd) if d.kind == "output" and "WASAPI" in d.api]
    default_out = next((d for d in outputs if d.is_default), outputs[0] if outputs else None)
    loopbacks = [d for d in inputs if "WASAPI" in d.api and "[loopback]" in d.name.lower()]
    if default_out is not None:
        for device in loopbacks:
            if device.name.lower().startswith(default_out.name.lower()):
                return OpenPlan(device.index, f"WASAPI loopback of {default_out.name!r}")
    if loopbacks:
        return OpenPlan(loopbacks[0].index, f"WASAPI loopback {loopbacks[0].name!r}")
    if default_out is not None and "loopback" in inspect.signature(sd.WasapiSettings).parameters:
        return OpenPlan(
            default_out.index,
            f"WASAPI loopback of {default_out.name!r}",
            extra_settings=sd.WasapiSettings(loopback=True),
        )
    return None
