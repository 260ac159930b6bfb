"""Your own face drives the avatar: the ``avatar_video`` source kind and the ``mirror`` engine.

Real media (the shared samples; skipped with a reason when ../shared is absent): the engine on
frames of user.mp4 against `FaceParamsExtractor`, grey frames decaying to neutral, a live
``run`` from the file, an offline ``render`` checked with ffprobe, and the session's choice of
renderer (a stub ``portrait`` renderer stands in for the real one). No timed assertions.
"""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from avatarforcing.integrations.face_params import FaceParamsExtractor
from avatarforcing.integrations.media import VideoWriter, ffprobe, ffprobe_available, iter_video_frames, load_audio
from avatarforcing.plugin import EngineSpec, Frame, InputTick, RendererSpec, SessionInfo, SinkSpec, hookimpl
from avatarforcing.plugin.api.types import FACE_PARAMS_SPACE
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.config import load_config
from avatarforcing.plugin.app.session import Session
from avatarforcing.plugin.app.session.runner import choose_renderer
from avatarforcing.plugin.builtins.engines import embedded, mirror
from avatarforcing.plugin.builtins.renderers import puppet
from avatarforcing.plugin.builtins.sources import files
from avatarforcing.plugin.host import build_plugin_host
from avatarforcing.schemas.motion_space import MOTION_SPACE

RATE = 16000
SILENCE = np.zeros(640, np.float32)


# ============================================================================================
# inputs
# ============================================================================================
@pytest.fixture(scope="module")
def face_frames(samples_dir) -> list[np.ndarray]:
    """The first 50 frames (2 s) of user.mp4, RGB."""
    frames = []
    for index, _, rgb in iter_video_frames(samples_dir / "user.mp4"):
        if index >= 50:
            break
        frames.append(rgb)
    return frames


def write_clip(source: Path, path: Path, seconds: float, with_audio: bool = True) -> Path:
    """The first `seconds` of `source` (frames and, optionally, audio) as a new mp4."""
    audio = load_audio(source)[: int(seconds * RATE)] if with_audio else None
    with VideoWriter(path, 25, audio_sample_rate=RATE if with_audio else None) as writer:
        for index, _, rgb in iter_video_frames(source):
            if index >= int(round(seconds * 25)):
                break
            writer.write_frame(rgb)
        if audio is not None:
            writer.write_audio(audio)
    return path


def reference_params(frames) -> list[np.ndarray | None]:
    """What `FaceParamsExtractor` (filtered, 25 fps) reads from `frames`, one by one."""
    with FaceParamsExtractor() as extractor:
        return [extractor.extract(frame) for frame in frames]


class Recorder:
    """A ``memory`` sink that keeps every frame, and the session hooks' view of the session and
    of each block (first frame, latents, whether the engine saw a face)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.blocks: list[tuple[int, np.ndarray, bool]] = []
        self.session: SessionInfo | None = None

    @hookimpl
    def register_sinks(self):
        recorder = self

        class Memory:
            def open(self, session):
                pass

            def write_frame(self, frame):
                recorder.frames.append(frame)

            def close(self):
                pass

        return [SinkSpec("memory", "keeps the frames", Memory)]

    @hookimpl
    def session_started(self, session):
        self.session = session

    @hookimpl
    def block_generated(self, block):
        self.blocks.append((block.first_frame, np.array(block.latents), bool(block.metadata.get("face"))))


def cli(host, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), host, out, err, environ={})
    return status, out.getvalue(), err.getvalue()


def host_with(*plugins):
    """The installed plugins (entry points) plus `plugins`."""
    host = build_plugin_host({})
    for plugin in plugins:
        host.register(plugin)
    return host


# ============================================================================================
# the engine
# ============================================================================================
def open_mirror(*overrides: str):
    config = load_config(overrides=["model.engine=mirror", *overrides], environ={})
    spec, engine = build_plugin_host({}).create_engine(config)
    engine.open(SessionInfo("mirror-test", config))
    return spec, engine


def step(engine, frame_index: int, image) -> tuple:
    """One 1-frame tick with `image` as the avatar frame: (its block, whether a face was seen)."""
    tick = InputTick(frame_index, 1, SILENCE, SILENCE, [None], avatar_frames=[image])
    [block] = engine.generate(engine.extract(tick))
    assert (block.first_frame, block.num_frames) == (frame_index, 1)
    assert block.latents.dtype == np.float32 and block.latents.shape == (1, MOTION_SPACE.dim)
    return block.latents[0], block.metadata["face"]


def test_mirror_copies_the_face_of_each_frame(face_frames):
    spec, engine = open_mirror()
    try:
        assert spec.default_renderer == "puppet" and spec.motion_space == FACE_PARAMS_SPACE
        assert engine.first_block_frames == engine.block_frames == 1
        [warm] = engine.warm_up()  # a neutral frame to show before the first live one
        assert warm.num_frames == 1 and not warm.latents.any()
        got = [step(engine, k, frame) for k, frame in enumerate(face_frames)]
    finally:
        engine.close()
    expected = reference_params(face_frames)
    assert all(p is not None for p in expected) and all(face for _, face in got)
    np.testing.assert_allclose(np.stack([p for p, _ in got]), np.stack(expected), atol=1e-4)
    assert np.ptp(np.stack(expected), axis=0).max() > 0.5  # the face moves, and so does the avatar


def test_without_a_face_the_avatar_drifts_back_to_neutral(face_frames):
    _, engine = open_mirror()
    grey = np.full((256, 256, 3), 128, np.uint8)
    try:
        for k, frame in enumerate(face_frames[:10]):
            last, face = step(engine, k, frame)
        assert face and np.abs(last).max() > 0.1
        faceless = [step(engine, 10 + k, grey.copy()) for k in range(40)]
        back, face_again = step(engine, 50, face_frames[10])
        [first, second] = engine.generate(
            engine.extract(InputTick(51, 2, np.zeros(1280, np.float32), np.zeros(1280, np.float32), [None] * 2))
        )  # no avatar video at all (avatar_frames left out): the same drift
        assert engine.finish() == []
    finally:
        engine.close()
    assert not any(face for _, face in faceless)
    norms = [float(np.abs(p).max()) for p, _ in faceless]
    # never the last expression held: each faceless frame is closer to neutral than the one before ...
    assert norms[0] < 0.95 * float(np.abs(last).max())
    assert all(b < a for a, b in itertools.pairwise(norms[:25])), norms[:25]
    np.testing.assert_allclose(faceless[0][0], last * math.exp(-0.04 / (1.0 / 3)), rtol=1e-5, atol=1e-6)
    # ... and exactly neutral within a second (neutral_after_s = 1.0)
    assert all(n == 0.0 for n in norms[24:]), norms
    assert face_again and np.abs(back).max() > 0.1  # the face takes over again at once
    assert (first.first_frame, second.first_frame) == (51, 52)
    assert first.metadata["face"] is False and np.abs(first.latents).max() < np.abs(back).max()


def test_neutral_after_s_sets_how_long_the_drift_takes(face_frames):
    _, engine = open_mirror("engines.mirror.neutral_after_s=0.2")
    grey = np.full((64, 64, 3), 128, np.uint8)
    try:
        step(engine, 0, face_frames[0])
        norms = [float(np.abs(step(engine, 1 + k, grey.copy())[0]).max()) for k in range(6)]
    finally:
        engine.close()
    assert norms[3] > 0.0 and norms[4:] == [0.0, 0.0]  # 5 frames = 0.2 s


# ============================================================================================
# live and offline sessions through the CLI
# ============================================================================================
def test_live_run_drives_the_avatar_from_the_avatar_video(samples_dir, tmp_path):
    recorder = Recorder()
    status, out, err = cli(
        host_with(recorder),
        "run",
        "--preset",
        "demo",
        "--engine",
        "mirror",
        "--avatar-video",
        str(samples_dir / "user.mp4"),
        "--sink",
        "memory",
        "--duration",
        "3",
    )
    assert status == 0, err
    assert "session ended:" in out and "renderer puppet: the default renderer of engine mirror" in err
    assert recorder.session.sources["avatar_video"] == "video-file"
    assert recorder.frames and recorder.frames[0].image.shape[:2] == (512, 512)
    assert len(recorder.blocks) > 10 and all(len(latents) == 1 for _, latents, _ in recorder.blocks)
    faces = [latents[0] for _, latents, face in recorder.blocks if face]
    assert len(faces) > len(recorder.blocks) // 2  # the file's face reached the engine
    assert np.ptp(np.stack(faces), axis=0).max() > 0.1


@pytest.fixture(scope="module")
def clips(samples_dir, tmp_path_factory) -> dict[str, Path]:
    """2 s of user.mp4 with its audio, and 1 s without."""
    folder = tmp_path_factory.mktemp("mirror-clips")
    return {
        "face_2s": write_clip(samples_dir / "user.mp4", folder / "face_2s.mp4", 2.0),
        "silent_1s": write_clip(samples_dir / "user.mp4", folder / "silent_1s.mp4", 1.0, with_audio=False),
    }


def test_render_with_the_mirror_engine_takes_the_avatar_video_s_own_audio(clips, tmp_path):
    if not ffprobe_available():
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    recorder = Recorder()
    out = tmp_path / "x.mp4"
    status, stdout, stderr = cli(
        host_with(recorder), "render", "--engine", "mirror", "--avatar-video", str(clips["face_2s"]), "--out", str(out)
    )
    assert status == 0, stderr
    frames = math.ceil(len(load_audio(clips["face_2s"])) * 25 / RATE)  # the length of that audio
    assert f"wrote {out}: {frames} frames" in stdout and "engine mirror, renderer puppet" in stdout
    probe = ffprobe(out)
    video = [s for s in probe["streams"] if s["codec_type"] == "video"]
    audio = [s for s in probe["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 1 and int(video[0]["nb_frames"]) == frames
    assert len(audio) == 1 and float(audio[0]["duration"]) > frames / 25 - 0.1
    # the motion is the clip's face, frame by frame (offline nothing is dropped or repeated)
    decoded = [rgb for _, _, rgb in iter_video_frames(clips["face_2s"])]
    motion = np.stack([latents[0] for _, latents, _ in sorted(recorder.blocks, key=lambda b: b[0])])
    np.testing.assert_allclose(motion[: len(decoded)], np.stack(reference_params(decoded)), atol=1e-4)


def test_render_without_avatar_audio_is_one_clear_error(clips, tmp_path):
    host = build_plugin_host({})
    out = tmp_path / "x.mp4"
    status, _, err = cli(
        host, "render", "--engine", "mirror", "--avatar-video", str(clips["silent_1s"]), "--out", str(out)
    )
    assert status == 2 and err.splitlines() == [
        f"avatarforcing: error: no avatar audio: --avatar-video {clips['silent_1s']} has no audio track; "
        "give --avatar-audio"
    ]
    status, _, err = cli(host, "render", "--out", str(out))
    assert status == 2 and err.splitlines() == [
        "avatarforcing: error: no avatar audio: give --avatar-audio, or an --avatar-video with an audio track"
    ]
    assert not out.exists()


# ============================================================================================
# which renderer runs
# ============================================================================================
class StubPortraitPlugin:
    """A renderer named ``portrait`` (flat frames; records what it rendered), standing in for
    the real portrait renderer."""

    def __init__(self) -> None:
        self.rendered: list[int] = []

    @hookimpl
    def register_renderers(self):
        plugin = self

        class Stub:
            def open(self, session):
                assert session.portrait is not None  # it draws the portrait

            def render(self, block):
                plugin.rendered.extend(range(block.first_frame, block.first_frame + block.num_frames))
                return [
                    Frame(np.zeros((16, 16, 3), np.uint8), block.first_frame + k, (block.first_frame + k) / 25)
                    for k in range(block.num_frames)
                ]

            def close(self):
                pass

        return [RendererSpec("portrait", "stub of the portrait renderer", Stub)]


def test_choose_renderer_prefers_the_portrait_renderer_for_face_parameters(samples_dir):
    portrait = str(samples_dir / "rumi.jpg")
    face = EngineSpec("mirror", "", object, default_renderer="puppet", motion_space=FACE_PARAMS_SPACE)
    latent = EngineSpec("official", "", object, default_renderer="motion-autoencoder")
    every = {"puppet", "portrait", "motion-autoencoder"}

    def choose(spec, *overrides, renderers=every):
        return choose_renderer(load_config(overrides=list(overrides), environ={}), spec, renderers)

    chosen = choose(face, f"session.portrait={portrait}")
    assert chosen.name == "portrait" and chosen.reason == "a portrait is given and engine mirror emits face parameters"
    assert choose(face).name == "puppet" and "no portrait given" in choose(face).reason
    missing = choose(face, f"session.portrait={portrait}", renderers={"puppet"})
    assert missing.name == "puppet" and "no renderer named 'portrait' is installed" in missing.reason
    explicit = choose(face, f"session.portrait={portrait}", "render.use=puppet")
    assert (explicit.name, explicit.reason) == ("puppet", "chosen by [render] use")
    assert choose(latent, f"session.portrait={portrait}").name == "motion-autoencoder"  # not face parameters
    for engine in (embedded, mirror):
        [spec] = engine.register_engines()
        assert spec.motion_space == FACE_PARAMS_SPACE, spec.name


@pytest.mark.parametrize(
    "overrides, renderer, reason",
    [
        (["session.portrait={portrait}"], "portrait", "a portrait is given and engine mirror emits face parameters"),
        ([], "puppet", "the default renderer of engine mirror (no portrait given)"),
        (["session.portrait={portrait}", "render.use=puppet"], "puppet", "chosen by [render] use"),
    ],
)
def test_session_runs_and_logs_the_chosen_renderer(samples_dir, overrides, renderer, reason):
    stub = StubPortraitPlugin()
    host = build_plugin_host({}, load_entry_points=False, plugins=[files, mirror, puppet, stub])
    portrait = samples_dir / "rumi.jpg"
    base = [
        "model.engine=mirror",
        "sources.avatar_audio.use=silence",
        "sources.avatar_audio.seconds=0.2",
        "sources.avatar_audio.realtime=false",
        "sources.user_audio.use=",
        "sources.user_video.use=",
        "session.stats_interval=0",
    ]
    config = load_config(overrides=[*base, *(o.format(portrait=portrait) for o in overrides)], environ={})
    lines: list[str] = []
    stats = Session(host, config, offline=True, console_log=lines.append).run()
    assert stats["error"] is None and stats["renderer"] == renderer and stats["frames"] == 5
    assert f"renderer {renderer}: {reason}" in lines
    assert stub.rendered == (list(range(5)) if renderer == "portrait" else [])


def test_existing_engines_get_no_avatar_frames_unless_a_source_is_chosen():
    tick = InputTick(0, 3, np.zeros(1920, np.float32), np.zeros(1920, np.float32), [None] * 3)
    assert tick.avatar_frames == [None, None, None]
    assert load_config(environ={}).sources.avatar_video.use == ""


def test_webcam_and_video_file_are_avatar_video_sources():
    from avatarforcing.plugin.api.errors import ConfigError
    from avatarforcing.plugin.builtins.sources import live

    assert [s.name for s in files.register_avatar_video_sources()] == ["video-file"]
    [webcam] = live.register_avatar_video_sources()
    assert webcam.name == "webcam"
    with pytest.raises(ConfigError, match=r"^sources\.avatar_video\.index: no camera at index 7"):
        webcam.factory(index=7, width=0, height=0, fps=0.0)
