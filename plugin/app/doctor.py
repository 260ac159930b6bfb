"""``avatarforcing doctor``: what works on this machine, and how to fix what doesn't.

Each check returns `CheckResult`s (``ok``/``warn``/``fail`` + detail + fix). A check never
raises: a crash becomes a ``fail`` naming the check. Plugins add checks with the
``doctor_checks`` hook. Checks are fast and side-effect free (the OBS probe is a plain TCP
connect with a short timeout).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatarforcing.integrations import pulseaudio
from avatarforcing.plugin.api.types import CheckResult
from avatarforcing.plugin.app.paths import weight_paths
from avatarforcing.plugin.host import PluginHost, callers_per_plugin

LOOPBACK_WORDS = ("monitor", "loopback", "stereo mix", "blackhole", "soundflower", "what u hear")


@dataclass
class DoctorContext:
    """What checks may look at."""

    config: Any  # AppConfig
    host: PluginHost | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    # filled by the torch check, read by later checks
    cuda_available: bool = False


@dataclass(frozen=True)
class DoctorReport:
    checks: list[CheckResult]

    @property
    def exit_code(self) -> int:
        """1 if any check failed, else 0 (warnings do not fail)."""
        return 1 if any(c.status == "fail" for c in self.checks) else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("ok", "warn", "fail")}

    def to_dict(self) -> dict[str, Any]:
        return {"checks": [c.to_dict() for c in self.checks], "summary": self.counts()}


def _linux() -> bool:
    return sys.platform.startswith("linux")


def _apt_or(linux: str, mac: str, windows: str = "") -> str:
    if _linux():
        return linux
    if sys.platform == "darwin":
        return mac
    return windows or linux


# -- checks ----------------------------------------------------------------------------------
def check_python(ctx: DoctorContext) -> CheckResult:
    version = platform.python_version()
    detail = f"Python {version} ({sys.executable})"
    if sys.version_info < (3, 10):  # noqa: UP036 - doctor also runs under an older interpreter to say so
        return CheckResult("python", "fail", detail, "install Python 3.10 or newer")
    return CheckResult("python", "ok", detail)


def nvidia_gpus() -> list[str]:
    """GPU names from ``nvidia-smi -L`` (the driver's view, independent of PyTorch); [] when
    there is no NVIDIA driver or it finds no GPU."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    return [
        line.split(":", 1)[1].split("(UUID")[0].strip()
        for line in listing.stdout.splitlines()
        if line.startswith("GPU ") and ":" in line
    ]


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_torch(ctx: DoctorContext) -> list[CheckResult]:
    try:
        import torch
    except Exception as error:
        return [
            CheckResult(
                "torch",
                "fail",
                f"PyTorch cannot be imported ({type(error).__name__}: {error})",
                "run the installer (installer/), or pip install torch first, then avatarforcing",
            ),
            CheckResult("cuda", "fail", "no PyTorch, so no CUDA", "install PyTorch first"),
        ]
    results = [CheckResult("torch", "ok", f"PyTorch {torch.__version__}")]
    cuda_build = torch.version.cuda
    if torch.cuda.is_available():
        ctx.cuda_available = True
        names = []
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            names.append(f"cuda:{index} {torch.cuda.get_device_name(index)} (sm_{major}{minor})")
        results.append(CheckResult("cuda", "ok", f"CUDA {cuda_build}: " + "; ".join(names)))
    elif _mps_available(torch):
        results.append(
            CheckResult("cuda", "ok", f"no CUDA; Apple Metal (MPS) is available to PyTorch {torch.__version__}")
        )
    elif cuda_build is None and nvidia_gpus():
        results.append(
            CheckResult(
                "cuda",
                "fail",
                f"this machine has an NVIDIA GPU ({', '.join(nvidia_gpus())}) but PyTorch "
                f"{torch.__version__} is the CPU-only build, so the engine runs on the CPU",
                "re-run the installer (it picks the CUDA build when nvidia-smi works), or "
                "pip install torch --index-url https://download.pytorch.org/whl/cu128",
            )
        )
    elif cuda_build is None:
        results.append(
            CheckResult(
                "cuda",
                "warn",
                f"CPU-only PyTorch build ({torch.__version__}); the engine runs on the CPU",
                "on a machine with an NVIDIA GPU, install a CUDA build of PyTorch "
                "(https://pytorch.org/get-started/locally/) and re-run the installer",
            )
        )
    else:
        results.append(
            CheckResult(
                "cuda",
                "warn",
                f"PyTorch built for CUDA {cuda_build}, but no usable GPU is visible",
                "check the NVIDIA driver with nvidia-smi, and CUDA_VISIBLE_DEVICES",
            )
        )
    return results


def check_tensorrt(ctx: DoctorContext) -> CheckResult:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as error:
        need = "needed for the fastest GPU backend" if ctx.cuda_available else ("only used with an NVIDIA GPU")
        return CheckResult(
            "tensorrt",
            "warn",
            f"TensorRT not importable ({type(error).__name__}); {need}",
            "pip install tensorrt-cu12 --extra-index-url https://pypi.nvidia.com (NVIDIA GPU and driver required)",
        )
    return CheckResult("tensorrt", "ok", f"TensorRT {getattr(trt, '__version__', '?')}")


def check_onnxruntime(ctx: DoctorContext) -> CheckResult:
    try:
        ort = importlib.import_module("onnxruntime")
    except Exception as error:
        return CheckResult(
            "onnxruntime",
            "warn",
            f"ONNX Runtime not importable ({type(error).__name__}); needed for ONNX export checks",
            "pip install 'avatarforcing[export]'",
        )
    providers = list(ort.get_available_providers())
    detail = f"ONNX Runtime {ort.__version__}; providers: {', '.join(providers)}"
    if ctx.cuda_available and not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(providers):
        return CheckResult(
            "onnxruntime",
            "warn",
            detail + " (no GPU provider although a GPU is present)",
            "pip install onnxruntime-gpu (instead of onnxruntime)",
        )
    return CheckResult("onnxruntime", "ok", detail)


def check_pyav(ctx: DoctorContext) -> CheckResult:
    try:
        av = importlib.import_module("av")
    except Exception as error:
        return CheckResult(
            "pyav",
            "fail",
            f"PyAV not importable ({type(error).__name__}: {error}); file sources and renders need it",
            "pip install av",
        )
    return CheckResult("pyav", "ok", f"PyAV {av.__version__} (bundled FFmpeg libraries)")


def check_weights(ctx: DoctorContext) -> CheckResult:
    from avatarforcing.plugin.app.weights import active_weights_dir

    active = active_weights_dir(ctx.config.model, ctx.environ)
    settings = dataclasses.replace(ctx.config.model, checkpoint_dir=str(active.path))
    paths = weight_paths(settings, ctx.environ)
    found = [(name, path) for name, path in paths.items() if path.exists()]
    missing = [(name, path) for name, path in paths.items() if not path.exists()]
    fix = (
        "avatarforcing weights fetch (official weights, CC BY-NC 4.0), or point "
        "$AVATARFORCING_WEIGHTS / [model] checkpoint_dir at a copy"
    )
    if not missing:
        return CheckResult("weights", "ok", f"official weights found in {paths.directory}")
    listing = ", ".join(str(path) for _, path in missing)
    if not found:
        return CheckResult(
            "weights",
            "warn",
            f"official weights not found (looked for {listing}); models with formula or embedded weights still run",
            fix,
        )
    return CheckResult("weights", "fail", f"incomplete official weights: missing {listing}", fix)


def _import_sounddevice() -> tuple[Any, CheckResult | None]:
    try:
        import sounddevice
    except ModuleNotFoundError:
        return None, CheckResult(
            "audio devices",
            "fail",
            "sounddevice is not installed; microphone and loopback sources need it",
            "pip install sounddevice",
        )
    except OSError as error:  # the PortAudio shared library is missing
        return None, CheckResult(
            "audio devices",
            "fail",
            f"sounddevice cannot load PortAudio ({error})",
            _apt_or(
                "sudo apt-get install libportaudio2 (Debian/Ubuntu; on Fedora: sudo dnf install portaudio)",
                "brew install portaudio",
                "pip install --force-reinstall sounddevice (its Windows wheel bundles PortAudio)",
            ),
        )
    return sounddevice, None


def check_audio(ctx: DoctorContext) -> list[CheckResult]:
    sd, failure = _import_sounddevice()
    monitors = pulseaudio.monitor_sources() if _linux() else None
    if failure is not None:
        return [failure, _loopback_result([], monitors, sounddevice_ok=False)]
    try:
        devices = list(sd.query_devices())
    except Exception as error:
        return [
            CheckResult(
                "audio devices",
                "fail",
                f"PortAudio cannot list devices ({error})",
                _apt_or("check that PulseAudio/PipeWire runs: pactl info", "check System Settings > Sound"),
            ),
            _loopback_result([], monitors, sounddevice_ok=False),
        ]
    inputs = [d["name"] for d in devices if d.get("max_input_channels", 0) > 0]
    outputs = [d["name"] for d in devices if d.get("max_output_channels", 0) > 0]
    try:
        portaudio = sd.get_portaudio_version()[1].split(",")[0]
    except Exception:  # pragma: no cover - very old sounddevice
        portaudio = "PortAudio"
    if inputs:
        audio = CheckResult(
            "audio devices",
            "ok",
            f"{portaudio}: {len(inputs)} input and {len(outputs)} output "
            "devices: " + ", ".join(inputs[:6]) + (" ..." if len(inputs) > 6 else ""),
        )
    else:
        audio = CheckResult(
            "audio devices",
            "warn",
            f"{portaudio} lists no audio input device ({len(outputs)} output devices)",
            _apt_or(
                "plug in a microphone; in containers: sudo apt-get install libasound2-plugins "
                "and run PulseAudio or PipeWire",
                "plug in a microphone and allow microphone access for the terminal",
            ),
        )
    loopback_inputs = [n for n in inputs if any(w in n.lower() for w in LOOPBACK_WORDS)]
    return [audio, _loopback_result(loopback_inputs, monitors, sounddevice_ok=True)]


def _loopback_result(devices: list[str], monitors: list[str] | None, sounddevice_ok: bool) -> CheckResult:
    found = list(devices) + [m for m in (monitors or []) if m not in devices]
    if found:
        how = "" if sounddevice_ok else " (but sounddevice cannot open them, see audio devices)"
        status = "ok" if sounddevice_ok else "warn"
        return CheckResult(
            "loopback capture",
            status,
            "loopback/monitor sources: " + ", ".join(found) + how,
            "" if sounddevice_ok else "fix the audio devices check first",
        )
    if _linux():
        detail = "no PulseAudio/PipeWire monitor source found" + (
            "" if monitors is not None else " (pactl missing or no sound server running)"
        )
        fix = (
            "run PulseAudio or PipeWire (every output sink has a '<sink>.monitor' source); "
            "sudo apt-get install pulseaudio-utils libasound2-plugins"
        )
    elif sys.platform == "darwin":
        detail = "no loopback device (e.g. BlackHole) found"
        fix = "brew install blackhole-2ch and route the meeting's output through it"
    else:
        detail = "no loopback device found"
        fix = "use WASAPI loopback of the speaker output, or enable 'Stereo Mix' in Sound settings"
    return CheckResult("loopback capture", "warn", detail, fix)


def default_avatar_weights() -> tuple[Path, list[Path]]:
    """The embedded default avatar's package folder and the weight files shipped in it."""
    import avatarforcing.engine.embedded as package

    folder = Path(package.__file__).resolve().parent
    return folder, sorted(folder.glob("*.safetensors"))


def check_default_avatar(ctx: DoctorContext) -> CheckResult:
    folder, files = default_avatar_weights()
    if files:
        size = sum(f.stat().st_size for f in files) / 1e6
        return CheckResult(
            "default avatar", "ok", f"embedded weights: {', '.join(f.name for f in files)} ({size:.1f} MB) in {folder}"
        )
    registered = False
    if ctx.host is not None:
        try:
            registered = any(p.spec.name == "default" for p in ctx.host.provided("engines"))
        except Exception:
            registered = False
    detail = f"no embedded default-avatar weights (*.safetensors) in {folder}"
    fix = "reinstall avatarforcing (bash installer/install.sh); the package ships these weights"
    if registered:
        return CheckResult("default avatar", "fail", detail + "; the default engine cannot start", fix)
    return CheckResult("default avatar", "warn", detail + " (the default engine is not registered in this build)", fix)


def check_ffmpeg(ctx: DoctorContext) -> CheckResult:
    tools = {name: shutil.which(name) for name in ("ffmpeg", "ffprobe")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        return CheckResult(
            "ffmpeg",
            "warn",
            f"{' and '.join(missing)} not on PATH (decoding/encoding uses PyAV's bundled "
            "libraries; the tools are only needed to inspect outputs)",
            _apt_or("sudo apt-get install ffmpeg", "brew install ffmpeg", "winget install ffmpeg"),
        )
    return CheckResult("ffmpeg", "ok", ", ".join(f"{k}: {v}" for k, v in tools.items()))


def check_plugins(ctx: DoctorContext) -> list[CheckResult]:
    host = ctx.host
    if host is None:
        return []
    results = []
    names = [name for name, plugin in host.pm.list_name_plugin() if plugin is not None]
    restricted = (
        "" if host.requested is None else f" (restricted by AVATARFORCING_PLUGINS={','.join(host.requested)!r})"
    )
    results.append(
        CheckResult("plugins", "ok", f"{len(names)} loaded: {', '.join(sorted(names)) or 'none'}{restricted}")
    )
    for name, error in sorted(host.load_errors.items()):
        results.append(
            CheckResult(
                f"plugin {name}",
                "fail",
                f"failed to load: {error}",
                "reinstall or upgrade the plugin's package, or leave it out with AVATARFORCING_PLUGINS",
            )
        )
    from avatarforcing.plugin.app.commands import builtin_commands, plugin_commands

    builtins, command_errors = builtin_commands()
    for module, error in sorted(command_errors.items()):
        results.append(
            CheckResult(f"command module {module}", "fail", f"failed to load: {error}", "please report this bug")
        )
    try:
        _, refused = plugin_commands(host, {c.name for c in builtins})
        for registry in ("avatar_audio", "user_audio", "user_video", "avatar_video", "renderers", "sinks"):
            host.provided(registry)
    except Exception as error:  # a plugin returned garbage from a register_* hook
        results.append(
            CheckResult(
                "plugin registries",
                "fail",
                f"{type(error).__name__}: {error}",
                "report this to the plugin's author, or leave it out with AVATARFORCING_PLUGINS",
            )
        )
        refused = []
    for line in refused:
        results.append(CheckResult("plugin commands", "warn", line, "rename the plugin's command"))
    if host.missing:
        results.append(
            CheckResult(
                "plugins requested",
                "warn",
                f"AVATARFORCING_PLUGINS names plugins that are not installed: {', '.join(host.missing)}",
                "check the names against `avatarforcing plugins` (entry-point names)",
            )
        )
    return results


BUILTIN_CHECKS: tuple[Callable[[DoctorContext], CheckResult | list[CheckResult]], ...] = (
    check_python,
    check_torch,
    check_tensorrt,
    check_onnxruntime,
    check_pyav,
    check_weights,
    check_audio,
    check_default_avatar,
    check_ffmpeg,
    check_plugins,
)


def _as_list(value: Any) -> list[CheckResult]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_doctor(config: Any, host: PluginHost | None = None, environ: Mapping[str, str] | None = None) -> DoctorReport:
    """Run the built-in checks, then every plugin's ``doctor_checks``."""
    ctx = DoctorContext(config=config, host=host, environ=dict(os.environ if environ is None else environ))
    checks: list[CheckResult] = []
    for check in BUILTIN_CHECKS:
        try:
            checks.extend(_as_list(check(ctx)))
        except Exception as error:
            name = check.__name__.removeprefix("check_")
            checks.append(
                CheckResult(
                    name, "fail", f"the check itself crashed: {type(error).__name__}: {error}", "please report this bug"
                )
            )
    if host is not None:
        for plugin_name, caller in callers_per_plugin(host.pm, "doctor_checks"):
            try:
                for result in caller(config=config):
                    for item in _as_list(result):
                        if not isinstance(item, CheckResult):
                            raise TypeError(f"returned {type(item).__name__}, expected CheckResult")
                        checks.append(item)
            except Exception as error:
                checks.append(
                    CheckResult(
                        f"plugin {plugin_name}",
                        "fail",
                        f"doctor_checks failed: {type(error).__name__}: {error}",
                        "report this to the plugin's author",
                    )
                )
    return DoctorReport(checks)
