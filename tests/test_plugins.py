"""The plugin system: hookspecs documented and tested, loading, registries, events, example.

Every hookspec has a test named ``test_hook_<name>`` that calls the hook through a real
plugin manager with a real plugin (the meta-test below enforces it).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
import wave
from importlib import metadata
from pathlib import Path

import numpy as np
import pluggy
import pytest

from avatarforcing.plugin import (
    AudioChunk,
    CheckResult,
    CommandSpec,
    EngineSpec,
    Frame,
    InputTick,
    MotionBlock,
    OptionSpec,
    RendererSpec,
    SessionInfo,
    SinkSpec,
    SourceSpec,
    hookimpl,
)
from avatarforcing.plugin.api import hookspecs
from avatarforcing.plugin.api.errors import ConfigError, PluginError
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.config import AppConfig, load_config
from avatarforcing.plugin.app.doctor import run_doctor
from avatarforcing.plugin.builtins.sources import files as files_plugin
from avatarforcing.plugin.events import SessionEvents
from avatarforcing.plugin.host import ENTRY_POINT_GROUP, build_plugin_host

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "plugins.md"
EXAMPLE_DIR = REPO / "examples" / "avatarforcing-example-plugin"


# ============================================================================================
# helpers
# ============================================================================================
def hookspec_functions() -> dict[str, object]:
    return {
        name: func for name, func in vars(hookspecs).items() if callable(func) and hasattr(func, "avatarforcing_spec")
    }


def signature_text(func) -> str:
    """``def name(a: T, b: U) -> R:`` with the annotations as written in hookspecs.py."""
    sig = inspect.signature(func)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {func.__name__}({params}) -> {sig.return_annotation}:"


def load_example_module():
    """The example plugin's module, imported from the source tree (not installed)."""
    name = "avatarforcing_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name,
        EXAMPLE_DIR / name / "__init__.py",
        submodule_search_locations=[str(EXAMPLE_DIR / name)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def host_with(*plugins, **named):
    """A real plugin host with only `plugins` (and `named` plugins under their keyword names)
    registered; no entry points."""
    host = build_plugin_host({}, load_entry_points=False, plugins=plugins)
    for name, plugin in named.items():
        host.register(plugin, name=name)
    return host


def write_wav(path: Path, signal: np.ndarray, rate: int = 16000) -> Path:
    pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


def write_video(path: Path, levels, fps: int, size=(48, 64), audio: np.ndarray | None = None) -> Path:
    """An MP4 (MPEG-4 part 2 video, optional AAC audio at 16 kHz) whose frame i is the flat
    gray level ``levels[i]``."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.height, video.width = size
        video.pix_fmt = "yuv420p"
        stream_audio = None
        if audio is not None:
            stream_audio = container.add_stream("aac", rate=16000)
            stream_audio.layout = "mono"
        for level in levels:
            image = np.full((*size, 3), level, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if stream_audio is not None:
            for start in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(
                    audio[None, start : start + 1024].astype(np.float32), format="fltp", layout="mono"
                )
                frame.sample_rate = 16000
                frame.pts = start
                for packet in stream_audio.encode(frame):
                    container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream_audio is not None:
            for packet in stream_audio.encode():
                container.mux(packet)
    return path


def sine(seconds: float, hz: float = 440.0, amplitude: float = 0.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def decode_png(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


# -- real plugins used by the tests ------------------------------------------------------------
class GrayRenderer:
    """Renders each latent row as a flat gray frame: level = clip(mean(row) * 255)."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (height, width)
        self.session = None
        self.closed = False

    def open(self, session):
        self.session = session

    def render(self, block):
        frames = []
        for row, latent in enumerate(np.asarray(block.latents)):
            level = int(np.clip(latent.mean() * 255, 0, 255))
            index = block.first_frame + row
            frames.append(Frame(np.full((*self.size, 3), level, np.uint8), index, index / self.session.fps))
        return frames

    def close(self):
        self.closed = True


class GrayRendererPlugin:
    @hookimpl
    def register_renderers(self):
        return [
            RendererSpec(
                "gray",
                "flat gray frames from latent means",
                GrayRenderer,
                options=(
                    OptionSpec("height", int, 16, "frame height", minimum=1),
                    OptionSpec("width", int, 24, "frame width", minimum=1),
                ),
            )
        ]


class MemorySink:
    def __init__(self):
        self.frames = []
        self.audio = []
        self.opened = self.closed = False

    def open(self, session):
        self.opened = True

    def write_frame(self, frame):
        self.frames.append(frame)

    def write_audio(self, chunk):
        self.audio.append(chunk)

    def close(self):
        self.closed = True


class MemorySinkPlugin:
    @hookimpl
    def register_sinks(self):
        return [SinkSpec("memory", "keeps frames and audio in memory", MemorySink, accepts_audio=True)]


class Recorder:
    """Records every lifecycle hook call it sees."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def session_started(self, session):
        self.calls.append(("started", session.session_id))

    @hookimpl
    def block_generated(self, session, block):
        self.calls.append(("block", block.index, block.first_frame, block.num_frames))

    @hookimpl
    def frame_rendered(self, session, frame):
        self.calls.append(("frame", frame.index, int(frame.image[0, 0, 0])))

    @hookimpl
    def session_stopped(self, session, stats):
        self.calls.append(("stopped", stats["frames"]))


def run_mini_session(host, config, blocks, session_id="s1"):
    """What a session does with the hooks: renderer + sinks from the config, events in order.
    `blocks` are latent arrays (n, d); returns (session, sinks, stats, stop errors)."""
    renderer = host.create_renderer(config)
    sinks = host.create_sinks(config)
    session = SessionInfo(session_id=session_id, config=config, renderer=config.render.use, sinks=config.sinks.use)
    events = SessionEvents(host.pm)
    renderer.open(session)
    for _, sink in sinks:
        sink.open(session)
    events.started(session)
    first = 0
    frames = 0
    for index, latents in enumerate(blocks):
        block = MotionBlock(index, first, len(latents), latents)
        events.block(session, block)
        for frame in renderer.render(block):
            frame = events.frame(session, frame)
            for _, sink in sinks:
                sink.write_frame(frame)
            frames += 1
        first += len(latents)
    renderer.close()
    for _, sink in sinks:
        sink.close()
    stats = {"frames": frames, "error": None}
    errors = events.stopped(session, stats)
    return session, sinks, stats, errors


def gray_config(*extra):
    return load_config(overrides=["render.use=gray", *extra], environ={})


# ============================================================================================
# meta-tests: documentation and tests of every hook
# ============================================================================================
def test_hookspecs_are_documented_with_matching_signatures():
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    documented = {}
    for block in blocks:
        for line in block.splitlines():
            match = re.match(r"def (\w+)\(", line)
            if match:
                documented.setdefault(match.group(1), []).append(line.strip())
    specs = hookspec_functions()
    assert len(specs) >= 13
    for name, func in specs.items():
        assert name in documented, f"hook {name} is not documented in docs/plugins.md"
        assert signature_text(func) in documented[name], (
            f"docs/plugins.md documents {documented[name]} but hookspecs.py has {signature_text(func)}"
        )
        assert f"#### {name}\n" in text, f"docs/plugins.md has no section for {name}"


def test_every_hookspec_has_its_own_test():
    tests = {name for name in globals() if name.startswith("test_hook_")}
    missing = [name for name in hookspec_functions() if f"test_hook_{name}" not in tests]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"
    stale = [t for t in tests if t.removeprefix("test_hook_") not in hookspec_functions()]
    assert not stale, f"tests named after hooks that do not exist: {stale}"


def test_hookspec_docstrings_state_parameters_returns_and_call_semantics():
    for name, func in hookspec_functions().items():
        doc = inspect.getdoc(func) or ""
        opts = func.avatarforcing_spec
        assert "Parameters:" in doc and "Returns:" in doc, name
        expected_first = "yes" if opts["firstresult"] else "no"
        expected_hist = "yes" if opts["historic"] else "no"
        assert re.search(rf"Firstresult: {expected_first}\b", doc), name
        assert re.search(rf"Historic: {expected_hist}\b", doc), name
        for param in inspect.signature(func).parameters:
            assert f"``{param}``" in doc, f"{name}: parameter {param} is not described"


def test_hookspecs_are_empty_functions():
    tree = ast.parse(Path(hookspecs.__file__).read_text(encoding="utf-8"))
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert {f.name for f in functions} == set(hookspec_functions())
    for func in functions:
        assert len(func.body) == 1 and isinstance(func.body[0], ast.Expr), func.name
        assert isinstance(func.body[0].value, ast.Constant), func.name


def test_plugin_authors_need_only_hookimpl():
    assert isinstance(hookimpl, pluggy.HookimplMarker) and hookimpl.project_name == "avatarforcing"

    class Bad:
        @hookimpl
        def frame_rendered(self, session, frame, surprise):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="surprise"):
        host_with(Bad())

    class Unknown:
        @hookimpl
        def no_such_hook(self):
            pass

    host = host_with(Unknown())
    with pytest.raises(pluggy.PluginValidationError, match="no_such_hook"):
        host.pm.check_pending()


# ============================================================================================
# loading: entry points, AVATARFORCING_PLUGINS, AVATARFORCING_TRACE
# ============================================================================================
def test_builtin_plugin_registers_through_its_entry_point():
    points = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert points.get("files") == "avatarforcing.plugin.builtins.sources.files"
    host = build_plugin_host({})
    assert host.pm.get_plugin("files") is files_plugin
    info = {i.name: i for i in host.plugin_infos()}["files"]
    assert info.distribution == "avatarforcing" and info.version
    assert info.provides["user_video"] == ("video-file",)
    assert info.provides["avatar_video"] == ("video-file",)


def test_plugins_environment_variable_restricts_loading():
    assert build_plugin_host({"AVATARFORCING_PLUGINS": ""}).plugin_infos() == []
    host = build_plugin_host({"AVATARFORCING_PLUGINS": "files"})
    assert [i.name for i in host.plugin_infos()] == ["files"]
    host = build_plugin_host({"AVATARFORCING_PLUGINS": " files , nope "})
    assert host.requested == ("files", "nope") and host.missing == ("nope",)
    with pytest.raises(PluginError, match="AVATARFORCING_PLUGINS"):
        build_plugin_host({"AVATARFORCING_PLUGINS": ""}).lookup("user_video", "video-file")


def test_trace_environment_variable_traces_hook_calls():
    stream = io.StringIO()
    host = build_plugin_host({"AVATARFORCING_TRACE": "1", "AVATARFORCING_PLUGINS": "files"}, trace_stream=stream)
    host.provided("user_video")
    text = stream.getvalue()
    assert "register_user_video_sources" in text and "video-file" in text
    quiet = io.StringIO()
    build_plugin_host({"AVATARFORCING_TRACE": "0"}, trace_stream=quiet).provided("sinks")
    assert quiet.getvalue() == ""


def test_broken_plugin_is_reported_and_skipped(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[avatarforcing]\nbroken = no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = build_plugin_host({})
    assert "broken" in host.load_errors and "no_such_module_anywhere" in host.load_errors["broken"]
    assert host.pm.get_plugin("files") is files_plugin  # the others still load
    checks = run_doctor(AppConfig(), host, environ={})
    assert any(c.name == "plugin broken" and c.status == "fail" for c in checks.checks)


def test_import_package_links_to_the_top_level_folders():
    """avatarforcing/ is a folder of links to the top-level folders, so tools and IDEs resolve
    avatarforcing.* imports to the files under engine/, plugin/, integrations/; setuptools finds
    the packages through the links (every subpackage with an __init__.py ends up in the wheel)."""
    import tomllib

    package = REPO / "avatarforcing"
    for folder in ("engine", "plugin", "integrations"):
        link = package / folder
        assert link.is_symlink() and link.resolve() == (REPO / folder).resolve(), link
    assert (package / "__init__.py").is_file() and (package / "py.typed").is_file()
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools_cfg = project["tool"]["setuptools"]
    assert "package-dir" not in setuptools_cfg
    assert setuptools_cfg["packages"]["find"]["include"] == ["avatarforcing", "avatarforcing.*"]
    import avatarforcing.engine.stream
    import avatarforcing.plugin.app.session.runner

    for module in (avatarforcing.engine.stream, avatarforcing.plugin.app.session.runner):
        assert Path(module.__file__).is_relative_to(package), module.__file__  # the editable install


# ============================================================================================
# registries
# ============================================================================================
def test_hook_register_avatar_audio_sources(tmp_path):
    class TonePlugin:
        @hookimpl
        def register_avatar_audio_sources(self):
            return [
                SourceSpec(
                    "tone",
                    "a test tone",
                    lambda hz: [AudioChunk(sine(0.1, hz), 16000, 0.0, 0)],
                    options=(OptionSpec("hz", float, 440.0, "frequency"),),
                )
            ]

    host = host_with(files=files_plugin, tone=TonePlugin())
    names = {(e.plugin, e.spec.name) for e in host.provided("avatar_audio")}
    assert names == {("files", "audio-file"), ("files", "silence"), ("tone", "tone")}

    signal = sine(1.0, 440.0)
    wav = write_wav(tmp_path / "voice.wav", signal)
    config = load_config(
        overrides=["sources.avatar_audio.use=audio-file", f"sources.avatar_audio.path={wav}"], environ={}
    )
    source = host.create_source("avatar_audio", config)
    chunks = list(source)
    assert [c.index for c in chunks] == list(range(25))
    assert all(len(c.samples) == 640 and c.sample_rate == 16000 for c in chunks)
    assert [c.timestamp for c in chunks] == pytest.approx([i * 0.04 for i in range(25)])
    np.testing.assert_allclose(np.concatenate([c.samples for c in chunks]), signal, atol=1.0 / 32767 + 1e-6)

    config = load_config(overrides=["sources.avatar_audio.use=tone", "sources.avatar_audio.hz=220"], environ={})
    [chunk] = host.create_source("avatar_audio", config)
    np.testing.assert_allclose(chunk.samples, sine(0.1, 220.0))

    with pytest.raises(
        PluginError, match=r"no avatar-audio source named 'mic' \(available: audio-file, silence, tone\)"
    ):
        host.create_source("avatar_audio", load_config(overrides=["sources.avatar_audio.use=mic"], environ={}))
    with pytest.raises(ConfigError, match=r"sources.avatar_audio.path: file not found"):
        host.create_source(
            "avatar_audio",
            load_config(
                overrides=["sources.avatar_audio.use=audio-file", "sources.avatar_audio.path=nope.wav"], environ={}
            ),
        )
    with pytest.raises(ConfigError, match=r"sources.avatar_audio.path: required"):
        host.create_source("avatar_audio", load_config(overrides=["sources.avatar_audio.use=audio-file"], environ={}))
    assert host.create_source("avatar_audio", load_config(overrides=["sources.avatar_audio.use="], environ={})) is None


def test_hook_register_user_audio_sources(tmp_path):
    host = host_with(files_plugin)
    assert {e.spec.name for e in host.provided("user_audio")} == {"audio-file", "silence"}
    video = write_video(tmp_path / "call.mp4", [0, 50, 100, 150, 200], 5, audio=sine(1.0, 440.0))
    config = load_config(
        overrides=[
            "sources.user_audio.use=audio-file",
            f"sources.user_audio.path={video}",
            "sources.user_audio.chunk_ms=100",
        ],
        environ={},
    )
    chunks = list(host.create_source("user_audio", config))
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 16000 <= len(samples) <= 16000 + 2048  # AAC adds priming/padding samples
    spectrum = np.abs(np.fft.rfft(samples[2048:14048]))
    assert np.argmax(spectrum) * 16000 / 12000 == pytest.approx(440.0, abs=2.0)
    assert np.sqrt(np.mean(samples[2048:14048] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)

    config = load_config(
        overrides=[
            "sources.user_audio.use=silence",
            "sources.user_audio.seconds=0.1",
            "sources.user_audio.realtime=false",
        ],
        environ={},
    )
    chunks = list(host.create_source("user_audio", config))
    assert [len(c.samples) for c in chunks] == [640, 640, 320]
    assert not any(c.samples.any() for c in chunks)


def test_hook_register_user_video_sources(tmp_path):
    host = host_with(files_plugin)
    assert [e.spec.name for e in host.provided("user_video")] == ["video-file"]
    levels = [20 + 20 * i for i in range(10)]
    video = write_video(tmp_path / "face.mp4", levels, fps=10)
    base = ["sources.user_video.use=video-file", f"sources.user_video.path={video}"]

    frames = list(host.create_source("user_video", load_config(overrides=base, environ={})))
    assert len(frames) == 25  # 1 s at 25 fps
    for k, frame in enumerate(frames):
        assert frame.index == k and frame.timestamp == pytest.approx(k / 25)
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        assert frame.image.mean() == pytest.approx(levels[int(k * 10 / 25 + 1e-9)], abs=6)

    native = list(
        host.create_source("user_video", load_config(overrides=[*base, "sources.user_video.fps=0"], environ={}))
    )
    assert [round(f.timestamp, 3) for f in native] == [round(i / 10, 3) for i in range(10)]

    looping = host.create_source(
        "user_video", load_config(overrides=[*base, "sources.user_video.loop=true"], environ={})
    )
    iterator = iter(looping)
    first_60 = [next(iterator) for _ in range(60)]
    looping.close()
    assert [f.index for f in first_60] == list(range(60))
    assert first_60[25].timestamp == pytest.approx(1.0)
    assert first_60[25].image.mean() == pytest.approx(levels[0], abs=6)
    assert list(iterator) == []  # closed


def test_hook_register_avatar_video_sources(tmp_path):
    class StillPlugin:
        """A video source of `count` copies of one grey level (the user's face, for the test)."""

        @hookimpl
        def register_avatar_video_sources(self):
            def still(level, count):
                image = np.full((8, 8, 3), level, np.uint8)
                return [Frame(image, i, i / 25) for i in range(count)]

            options = (OptionSpec("level", int, 128, "grey level"), OptionSpec("count", int, 3, "frames"))
            return [SourceSpec("still", "one grey frame, repeated", still, options)]

    host = host_with(files=files_plugin, still=StillPlugin())
    names = {(e.plugin, e.spec.name) for e in host.provided("avatar_video")}
    assert names == {("files", "video-file"), ("still", "still")}
    assert load_config(environ={}).sources.avatar_video.use == ""  # no avatar video by default
    assert host.create_source("avatar_video", load_config(environ={})) is None

    levels = [40, 80, 120, 160, 200]
    video = write_video(tmp_path / "me.mp4", levels, fps=5)
    config = load_config(
        overrides=["sources.avatar_video.use=video-file", f"sources.avatar_video.path={video}"], environ={}
    )
    frames = list(host.create_source("avatar_video", config))
    assert len(frames) == 25  # 1 s at 25 fps
    assert [f.index for f in frames] == list(range(25))
    assert frames[-1].image.mean() == pytest.approx(levels[-1], abs=6)

    config = load_config(overrides=["sources.avatar_video.use=still", "sources.avatar_video.count=2"], environ={})
    assert [f.image.mean() for f in host.create_source("avatar_video", config)] == [128, 128]
    with pytest.raises(PluginError, match=r"no avatar-video source named 'cam' \(available: still, video-file\)"):
        host.create_source("avatar_video", load_config(overrides=["sources.avatar_video.use=cam"], environ={}))
    with pytest.raises(ConfigError, match=r"sources.avatar_video.path: required"):
        host.create_source("avatar_video", load_config(overrides=["sources.avatar_video.use=video-file"], environ={}))


def test_realtime_source_stops_when_closed_from_another_thread():
    source = files_plugin.SilenceSource(seconds=0.0, sample_rate=16000, chunk_ms=40, realtime=True)
    received = []
    worker = threading.Thread(target=lambda: received.extend(source), daemon=True)
    worker.start()
    while not received:
        worker.join(0.01)
    source.close()
    worker.join(10)
    assert not worker.is_alive()


def test_hook_register_renderers():
    host = host_with(GrayRendererPlugin())
    assert [e.spec.name for e in host.provided("renderers")] == ["gray"]
    renderer = host.create_renderer(gray_config("render.height=8", "render.width=4"))
    session = SessionInfo("s", AppConfig())
    renderer.open(session)
    latents = np.linspace(0, 1, 5 * 3, dtype=np.float32).reshape(5, 3)
    frames = renderer.render(MotionBlock(2, 50, 5, latents))
    assert [f.index for f in frames] == [50, 51, 52, 53, 54]
    assert [f.timestamp for f in frames] == pytest.approx([i / 25 for i in range(50, 55)])
    assert frames[0].image.shape == (8, 4, 3)
    assert [int(f.image[0, 0, 0]) for f in frames] == [int(np.clip(r.mean() * 255, 0, 255)) for r in latents]
    with pytest.raises(ConfigError, match=r"render.height: expected an integer >= 1, got 'tall'"):
        host.create_renderer(gray_config("render.height=tall"))
    with pytest.raises(ConfigError, match=r"render.colour: unknown option"):
        host.create_renderer(gray_config("render.colour=red"))

    class AnotherGray:
        @hookimpl
        def register_renderers(self):
            return [RendererSpec("gray", "a second gray", GrayRenderer)]

    host.register(AnotherGray(), name="another")
    with pytest.raises(PluginError, match=r"renderer 'gray' is provided by several plugins \('another', '\d+'\)"):
        host.create_renderer(gray_config())

    class Garbage:
        @hookimpl
        def register_renderers(self):
            return ["gray"]

    with pytest.raises(
        PluginError, match=r"plugin 'garbage': register_renderers\(\) returned str, expected RendererSpec"
    ):
        h = host_with()
        h.register(Garbage(), name="garbage")
        h.provided("renderers")


class LoudnessEngine:
    """A motion engine whose latent per frame is the RMS loudness of that frame's avatar audio,
    emitted in blocks of `block` frames."""

    fps, sample_rate = 25, 16000

    def __init__(self, block):
        self.first_block_frames = self.block_frames = block
        self.pending, self.emitted, self.scales = [], 0, None

    def open(self, session):
        self.session = session

    def warm_up(self):
        pass

    def extract(self, tick):
        audio = tick.avatar_audio.reshape(tick.num_frames, 640)
        return np.sqrt((audio**2).mean(axis=1))

    def set_guidance(self, avatar_scale, user_scale):
        self.scales = (avatar_scale, user_scale)

    def generate(self, features):
        self.pending.extend(features.tolist())
        blocks = []
        while len(self.pending) >= self.block_frames:
            latents = np.asarray(self.pending[: self.block_frames], dtype=np.float32)[:, None]
            del self.pending[: self.block_frames]
            blocks.append(MotionBlock(self.emitted // self.block_frames, self.emitted, len(latents), latents))
            self.emitted += len(latents)
        return blocks

    def finish(self):
        return []

    def close(self):
        pass


class LoudnessEnginePlugin:
    @hookimpl
    def register_engines(self):
        option = OptionSpec("block", int, 4, "frames per block", minimum=1)
        return [EngineSpec("loudness", "latents = loudness", LoudnessEngine, (option,), default_renderer="gray")]


def test_hook_register_engines():
    host = host_with(LoudnessEnginePlugin())
    assert [e.spec.name for e in host.provided("engines")] == ["loudness"]
    config = load_config(overrides=["model.engine=loudness", "engines.loudness.block=2"], environ={})
    spec, engine = host.create_engine(config)
    assert spec.default_renderer == "gray" and engine.block_frames == 2
    engine.open(SessionInfo("s", config))
    loud = np.full(3 * 640, 0.5, dtype=np.float32)
    tick = InputTick(0, 3, loud, np.zeros_like(loud), [None] * 3, avatar_voice=1.0)
    blocks = engine.generate(engine.extract(tick))
    assert [(b.index, b.first_frame, b.num_frames) for b in blocks] == [(0, 0, 2)]
    assert blocks[0].latents[:, 0] == pytest.approx([0.5, 0.5])
    with pytest.raises(ConfigError, match=r"engines.loudness.block: expected an integer >= 1, got '0'"):
        host.create_engine(load_config(overrides=["model.engine=loudness", "engines.loudness.block=0"], environ={}))
    with pytest.raises(PluginError, match=r"no engine named 'nope' \(available: loudness\)"):
        host.create_engine(load_config(overrides=["model.engine=nope"], environ={}))
    with pytest.raises(ValueError, match="engine name 'Bad'"):
        EngineSpec("Bad", "", LoudnessEngine)


def test_hook_register_sinks(tmp_path):
    example = load_example_module()
    host = host_with(example, MemorySinkPlugin())
    assert {e.spec.name: e.spec.accepts_audio for e in host.provided("sinks")} == {"png-dir": False, "memory": True}
    out = tmp_path / "png"
    config = load_config(
        overrides=["sinks.use=png-dir,memory", f"sinks.png-dir.dir={out}", "sinks.png-dir.every=2"], environ={}
    )
    sinks = host.create_sinks(config)
    assert [spec.name for spec, _ in sinks] == ["png-dir", "memory"]
    session = SessionInfo("s", config)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 20, 3), dtype=np.uint8) for _ in range(5)]
    for _, sink in sinks:
        sink.open(session)
        for i, image in enumerate(images):
            sink.write_frame(Frame(image, i, i / 25))
        sink.close()
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000002.png", "frame_000004.png"]
    for i in (0, 2, 4):
        np.testing.assert_array_equal(decode_png(out / f"frame_{i:06d}.png"), images[i])
    memory = sinks[1][1]
    assert memory.opened and memory.closed and [f.index for f in memory.frames] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"sinks.png-dir.every: expected an integer >= 1, got '0'"):
        host.create_sinks(load_config(overrides=["sinks.use=png-dir", "sinks.png-dir.every=0"], environ={}))


def test_hook_register_commands():
    class HelloPlugin:
        @hookimpl
        def register_commands(self):
            def configure(parser):
                parser.add_argument("--loud", action="store_true")

            def run(args, context):
                config = context.load_config([("model.nfe", 4)])
                context.stdout.write(("HELLO" if args.loud else "hello") + f" nfe={config.model.nfe}\n")
                return 3

            return [
                CommandSpec("hello", "say hello", configure, run),
                CommandSpec("doctor", "an impostor", configure, run),
            ]

    host = host_with(HelloPlugin())
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(["hello", "--loud"], host, out, err, environ={}) == 3
    assert out.getvalue() == "HELLO nfe=4\n"
    assert "command 'doctor' is already taken; ignored" in err.getvalue()
    out = io.StringIO()
    assert run_cli(["plugins", "--json"], host, out, io.StringIO(), environ={}) == 0
    [info] = json.loads(out.getvalue())["plugins"]
    assert info["provides"]["commands"] == ["hello", "doctor"]
    assert info["hooks"] == ["register_commands"]


# ============================================================================================
# configuration and diagnostics
# ============================================================================================
def test_hook_configure():
    seen = []

    class Watcher:
        @hookimpl
        def configure(self, config):
            seen.append(config.model.nfe)

    example = load_example_module()
    host = host_with(example)
    config = load_config(overrides=["model.nfe=7", "plugins.example.overlay=yes"], environ={})
    host.configure(config)
    host.register(Watcher())  # historic: registered later, still called with the config
    assert seen == [7]

    with pytest.raises(ConfigError, match=r"^plugins.example.bar_height: expected an integer in \[1, 64\], got '0'$"):
        host_with(example).configure(load_config(overrides=["plugins.example.bar_height=0"], environ={}))
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["config", "--set", "plugins.example.overlya=1"], host_with(example), out, err, environ={})
    assert status == 2 and out.getvalue() == ""
    assert err.getvalue() == (
        "avatarforcing: error: plugins.example.overlya: unknown option; did you mean 'overlay'? "
        "(known: bar_height, overlay)\n"
    )


def test_hook_doctor_checks(tmp_path):
    example = load_example_module()

    class Broken:
        @hookimpl
        def doctor_checks(self, config):
            raise RuntimeError("device exploded")

    class Wrong:
        @hookimpl
        def doctor_checks(self):
            return ["not a check"]

    class Fine:
        @hookimpl
        def doctor_checks(self, config):
            return [CheckResult("fine thing", "ok", f"nfe is {config.model.nfe}")]

    host = host_with(example)
    host.register(Broken(), name="broken")
    host.register(Wrong(), name="wrong")
    host.register(Fine(), name="fine")
    config = load_config(overrides=["sinks.use=png-dir", f"sinks.png-dir.dir={tmp_path / 'new' / 'dir'}"], environ={})
    report = run_doctor(config, host, environ={})
    by_name = {c.name: c for c in report.checks}
    assert by_name["fine thing"].detail == "nfe is 10"
    assert by_name["png-dir sink"].status == "ok"
    assert by_name["plugin broken"].status == "fail" and "device exploded" in by_name["plugin broken"].detail
    assert by_name["plugin wrong"].status == "fail" and "expected CheckResult" in by_name["plugin wrong"].detail
    assert report.exit_code == 1


# ============================================================================================
# session lifecycle
# ============================================================================================
def test_hook_session_started():
    example = load_example_module()
    recorder = Recorder()
    host = host_with(GrayRendererPlugin(), MemorySinkPlugin(), example, recorder)
    session, _, _, _ = run_mini_session(
        host, gray_config("sinks.use=memory", "plugins.example.bar_height=3"), [np.zeros((2, 4))]
    )
    assert recorder.calls[0] == ("started", "s1")
    assert session.plugin_state["example"]["settings"] == {"overlay": False, "bar_height": 3}

    class Refuses:
        @hookimpl
        def session_started(self, session):
            raise RuntimeError("not today")

    host.register(Refuses())
    with pytest.raises(RuntimeError, match="not today"):
        run_mini_session(host, gray_config("sinks.use=memory"), [np.zeros((2, 4))])


def test_hook_block_generated():
    example = load_example_module()
    recorder = Recorder()
    host = host_with(GrayRendererPlugin(), MemorySinkPlugin(), example, recorder)
    blocks = [np.zeros((5, 4)), np.zeros((2, 4)), np.zeros((2, 4))]
    session, _, _, _ = run_mini_session(host, gray_config("sinks.use=memory"), blocks)
    assert [c for c in recorder.calls if c[0] == "block"] == [
        ("block", 0, 0, 5),
        ("block", 1, 5, 2),
        ("block", 2, 7, 2),
    ]
    assert session.plugin_state["example"]["blocks"] == 3
    # the block comes before its frames
    kinds = [c[0] for c in recorder.calls]
    assert kinds[:3] == ["started", "block", "frame"]


def test_hook_filter_frame():
    example = load_example_module()

    class First:
        @hookimpl(tryfirst=True)
        def filter_frame(self, frame):
            frame.image[0, 0] = (100, 0, 0)

    class Second:
        @hookimpl(trylast=True)
        def filter_frame(self, session, frame):
            frame.image = frame.image.copy()  # replacing the array is allowed
            frame.image[0, 0, 0] += 1
            frame.metadata["second"] = int(frame.image[0, 0, 0])

    recorder = Recorder()
    host = host_with(GrayRendererPlugin(), MemorySinkPlugin(), example, Second(), First(), recorder)
    config = gray_config("sinks.use=memory", "plugins.example.overlay=true", "plugins.example.bar_height=2")
    latents = np.full((25, 4), 0.2)
    _, sinks, _, _ = run_mini_session(host, config, [latents])
    frames = sinks[0][1].frames
    assert [f.metadata["second"] for f in frames] == [101] * 25
    # example overlay: a bar on the last 2 rows, (index % fps + 1) / fps of the width
    for frame in (frames[0], frames[12], frames[24]):
        filled = max(1, round((frame.index % 25 + 1) / 25 * 24))
        assert (frame.image[-2:, :filled] == (255, 200, 0)).all()
        assert (frame.image[-2:, filled:] == int(0.2 * 255)).all()
        assert (frame.image[:-2, 1:] == int(0.2 * 255)).all()
        assert frame.metadata["example.heartbeat"] == pytest.approx((frame.index % 25 + 1) / 25)

    class Shrinks:
        @hookimpl
        def filter_frame(self, frame):
            frame.image = frame.image[:4]

    host.register(Shrinks())
    with pytest.raises(
        PluginError, match=r"a filter_frame hook left frame 0 as uint8 \(4, 24, 3\); expected uint8 16x24x3 or x4"
    ):
        run_mini_session(host, config, [latents])


def test_hook_frame_rendered():
    example = load_example_module()
    recorder = Recorder()

    class Stamp:
        @hookimpl
        def filter_frame(self, frame):
            frame.image[0, 0, 0] = 7

    host = host_with(GrayRendererPlugin(), MemorySinkPlugin(), example, recorder, Stamp())
    session, _, _, _ = run_mini_session(host, gray_config("sinks.use=memory"), [np.zeros((3, 4)), np.zeros((2, 4))])
    frames = [c for c in recorder.calls if c[0] == "frame"]
    assert frames == [("frame", i, 7) for i in range(5)]  # sees the filtered frame
    state = session.plugin_state["example"]
    assert state["frames"] == 5 and state["max_gap"] == pytest.approx(1 / 25)


def test_hook_session_stopped(caplog):
    example = load_example_module()
    recorder = Recorder()

    class Crashes:
        @hookimpl(tryfirst=True)
        def session_stopped(self, stats):
            raise RuntimeError("cleanup failed")

    host = host_with(GrayRendererPlugin(), MemorySinkPlugin(), example, recorder)
    host.register(Crashes(), name="crashes")
    with caplog.at_level(logging.INFO):
        _, _, _stats, errors = run_mini_session(host, gray_config("sinks.use=memory"), [np.zeros((4, 4))])
    assert errors == ["crashes: RuntimeError: cleanup failed"]
    assert recorder.calls[-1] == ("stopped", 4)  # later plugins still saw the stop
    assert "example telemetry: 1 blocks, 4 frames" in caplog.text


# ============================================================================================
# the example plugin, installed into a fresh virtual environment
# ============================================================================================
def test_example_plugin_installs_into_a_venv_and_is_listed(tmp_path):
    pytest.importorskip("setuptools", minversion="68", reason="building the example needs setuptools>=68")
    pytest.importorskip("pip", reason="installing the example needs pip")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The new venv sees this interpreter's packages (avatarforcing, pip, setuptools...) through
    # site.addsitedir, which also runs their .pth files (the editable install's finder).
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    parents.append(sysconfig.get_paths()["purelib"])
    lines = [f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(parents)]
    Path(purelib, "_parent_environment.pth").write_text("\n".join(lines) + "\n")

    source = shutil.copytree(EXAMPLE_DIR, tmp_path / "example-src")  # keep build files out of the repo
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARFORCING_", "PIP_", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    def plugins_json(*module):
        done = subprocess.run(
            [str(python), "-m", *module, "plugins", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return {p["name"]: p for p in json.loads(done.stdout)["plugins"]}

    for module in (("avatarforcing.plugin.app.cli",), ("avatarforcing.plugin",)):
        plugins = plugins_json(*module)
        assert {"files", "example"} <= set(plugins)
        example = plugins["example"]
        assert example["distribution"] == "avatarforcing-example-plugin" and example["version"] == "0.1.0"
        assert example["module"] == "avatarforcing_example"
        assert example["provides"] == {"sinks": ["png-dir"]}
        assert example["hooks"] == sorted(
            [
                "block_generated",
                "configure",
                "doctor_checks",
                "filter_frame",
                "frame_rendered",
                "register_sinks",
                "session_started",
                "session_stopped",
            ]
        )
    # the plugin really works there: its sink writes a PNG through the installed entry point
    out = tmp_path / "frames"
    script = (
        "import numpy as np\n"
        "from avatarforcing.plugin import Frame, SessionInfo\n"
        "from avatarforcing.plugin.app.config import load_config\n"
        "from avatarforcing.plugin.host import build_plugin_host\n"
        f"config = load_config(overrides=['sinks.use=png-dir', 'sinks.png-dir.dir={out}'])\n"
        "[(spec, sink)] = build_plugin_host().create_sinks(config)\n"
        "sink.open(SessionInfo('s', config))\n"
        "sink.write_frame(Frame(np.full((4, 6, 3), 9, np.uint8), 0, 0.0))\n"
        "sink.close()\n"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (decode_png(out / "frame_000000.png") == 9).all()
    # and the current environment, where it is not installed, does not list it
    assert "example" not in {i.name for i in build_plugin_host({}).plugin_infos()}
