"""The ``puppet`` built-in plugin (renderer + VMC sink) and the example renderer plugin, through
a real PluginHost."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from test_vmc import Receiver  # a real python-osc server

from avatarforcing.plugin.api.errors import ConfigError, PluginError
from avatarforcing.plugin.api.types import MotionBlock, SessionInfo
from avatarforcing.plugin.app.config import AppConfig, load_config
from avatarforcing.plugin.builtins.renderers import puppet
from avatarforcing.plugin.builtins.sinks import vmc
from avatarforcing.plugin.host import build_plugin_host
from avatarforcing.schemas.motion_space import MOTION_SPACE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "renderer_plugin"


def host_with(*plugins):
    return build_plugin_host({}, load_entry_points=False, plugins=plugins)


def config(*overrides):
    return load_config(overrides=list(overrides), environ={})


def motion_block(num_frames: int = 5, first_frame: int = 50) -> MotionBlock:
    rows = np.zeros((num_frames, MOTION_SPACE.dim), np.float32)
    rows[:, MOTION_SPACE.jaw_index] = np.linspace(0.0, 1.0, num_frames)
    rows[:, 0] = np.linspace(-20.0, 20.0, num_frames)
    return MotionBlock(index=1, first_frame=first_frame, num_frames=num_frames, latents=rows)


def test_puppet_renderer_through_the_plugin_host():
    host = host_with(puppet)
    assert [e.spec.name for e in host.provided("renderers")] == ["puppet"]
    renderer = host.create_renderer(config("render.use=puppet", "render.look=night", "render.size=128"))
    renderer.open(SessionInfo("s", AppConfig(), frame_size=(256, 256)))
    block = motion_block()
    frames = renderer.render(block)
    renderer.close()
    assert [f.index for f in frames] == [50, 51, 52, 53, 54]
    assert [f.timestamp for f in frames] == pytest.approx([i / 25 for i in range(50, 55)])
    assert all(f.image.shape == (128, 128, 4) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].image[0, 0, 3] == 0 and frames[0].image[64, 64, 3] == 255
    assert frames[-1].metadata["motion"]["jaw_open"] == 1.0 and frames[0].metadata["motion"]["yaw"] == -20.0
    assert set(frames[0].metadata["motion"]) == set(MOTION_SPACE.names)
    assert not np.array_equal(frames[0].image, frames[-1].image)


def test_puppet_backgrounds_sizes_and_errors():
    host = host_with(puppet)
    green = host.create_renderer(config("render.use=puppet", "render.background=green"))
    green.open(SessionInfo("s", AppConfig(), frame_size=(96, 160)))
    frame = green.render(motion_block(1))[0]
    assert frame.image.shape == (96, 160, 3) and tuple(frame.image[0, 0]) == (0, 177, 64)
    backdrop = host.create_renderer(config("render.use=puppet", "render.background=look", "render.look=mono"))
    backdrop.open(SessionInfo("s", AppConfig(), frame_size=(64, 64)))
    assert tuple(backdrop.render(motion_block(1))[0].image[0, 0]) == (255, 255, 255)
    with pytest.raises(
        PluginError, match=r"latents must be default-motion-space parameters of shape \(5, 13\), got \(5, 512\)"
    ):
        green.render(MotionBlock(0, 0, 5, np.zeros((5, 512), np.float32)))
    with pytest.raises(ConfigError, match=r"render.look"):
        host.create_renderer(config("render.use=puppet", "render.look=neon"))


def test_vmc_sink_sends_the_rendered_motion_to_a_real_receiver():
    host = host_with(puppet, vmc)
    receiver = Receiver()
    try:
        overrides = ["sinks.use=vmc", f"sinks.vmc.port={receiver.port}", "sinks.vmc.rate=12.5"]
        [(spec, sink)] = host.create_sinks(config("render.use=puppet", *overrides))
        assert spec.name == "vmc" and not spec.accepts_audio
        renderer = host.create_renderer(config("render.use=puppet", "render.size=64"))
        session = SessionInfo("s", AppConfig())
        renderer.open(session)
        sink.open(session)
        frames = renderer.render(motion_block(6, first_frame=0))
        for frame in frames:
            sink.write_frame(frame)
        sink.write_frame(type(frames[0])(image=frames[0].image, index=6, timestamp=6 / 25))  # no motion: skipped
        assert sink.sender.sent == 3  # rate 12.5 Hz from 25 fps frames: every other frame
        sink.close()
        jaw = [args[1] for args in receiver.wait_for("/VMC/Ext/Blend/Val", 3 * 24) if args[0] == "jawOpen"]
        assert sorted(jaw) == pytest.approx([0.0, 0.4, 0.8])
        assert sink.skipped_without_motion == 1
    finally:
        receiver.close()


def load_example():
    name = "circle_renderer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_example_renderer_plugin_works_on_a_plugin_host():
    text = (EXAMPLE / "pyproject.toml").read_text()
    assert 'circle = "circle_renderer"' in text and "[project.entry-points.avatarforcing]" in text
    host = host_with(load_example())
    renderer = host.create_renderer(config("render.use=circle", "render.colour=00ff00"))
    renderer.open(SessionInfo("s", AppConfig(), frame_size=(100, 100)))
    closed, opened = renderer.render(MotionBlock(0, 0, 2, np.array([[0.0] * 13, [0.0] * 5 + [1.0] + [0.0] * 7])))
    assert tuple(opened.image[50, 50]) == (0, 255, 0) and opened.timestamp == pytest.approx(0.04)
    assert (opened.image[..., 1] > 128).sum() > 3 * (closed.image[..., 1] > 128).sum()
    with pytest.raises(ConfigError, match="render.colour: expected six hex digits"):
        host.create_renderer(config("render.use=circle", "render.colour=green"))


def test_puppet_doctor_check_reports_face_params():
    host = host_with(puppet)
    [results] = host.hook.doctor_checks(config=config())
    assert [r.name for r in results] == ["face-params"]
    expected = "ok" if importlib.util.find_spec("mediapipe") else "warn"
    assert results[0].status == expected and (results[0].fix == "") == (expected == "ok")
