"""``avatarforcing render``: files in, an mp4 out, through the same `Session` as a live run,
offline (nothing paced, nothing dropped).

End-to-end renders of ~3 s of the shared samples with the embedded engine (no weights) and the
official one (formula weights, fixture_small), checked with ffprobe; the session hooks and a
renderer plugin, determinism, model selection, input resampling and the one-line errors.
Inputs are trimmed copies written with `avatarforcing.integrations.media` into tmp folders.
"""

from __future__ import annotations

import io
import math
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.pipeline import PipelineConfig
from avatarforcing.integrations.face_crop import centre_square
from avatarforcing.integrations.media import (
    VideoWriter,
    ffprobe,
    ffprobe_available,
    frames_at_rate,
    iter_video_frames,
    load_audio,
)
from avatarforcing.plugin import Frame, OptionSpec, RendererSpec, hookimpl
from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.config import load_config
from avatarforcing.plugin.app.model_loading import (
    load_model_from_source,
    load_model_from_spec,
    resolve_model_source,
)
from avatarforcing.plugin.host import build_plugin_host

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLES = SHARED / "reference" / "samples"
RATE = 16000


# ============================================================================================
# inputs: trimmed copies of the samples
# ============================================================================================
def _samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is absent: the render tests need ../shared beside the repo")
    return SAMPLES


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """16-bit mono WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


def trimmed_video(source: Path, path: Path, seconds: float, with_audio: bool = True) -> Path:
    """The first `seconds` of `source` (frames and, optionally, audio) as a new mp4."""
    frames = int(round(seconds * 25))
    audio = load_audio(source)[: int(seconds * RATE)] if with_audio else None
    with VideoWriter(path, 25, audio_sample_rate=RATE if with_audio else None) as writer:
        for index, _, rgb in iter_video_frames(source):
            if index >= frames:
                break
            writer.write_frame(rgb)
        if audio is not None:
            writer.write_audio(audio)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """avatar 3 s / 2.4 s WAVs, user video 3 s with audio, user video 0.4 s (10 frames) without
    audio, user audio 2.4 s WAV, and the portrait."""
    samples = _samples()
    folder = tmp_path_factory.mktemp("clips")
    avatar = load_audio(samples / "avatar.wav")
    user = load_audio(samples / "user.mp4")
    return {
        "portrait": samples / "rumi.jpg",
        "avatar_3s": write_wav(folder / "avatar_3s.wav", avatar[: 3 * RATE]),
        "avatar_2.4s": write_wav(folder / "avatar_2.4s.wav", avatar[: int(2.4 * RATE)]),
        "user_audio_2.4s": write_wav(folder / "user_2.4s.wav", user[: int(2.4 * RATE)]),
        "user_3s": trimmed_video(samples / "user.mp4", folder / "user_3s.mp4", 3.0),
        "user_short_silent": trimmed_video(samples / "user.mp4", folder / "user_short.mp4", 0.4, with_audio=False),
    }


@pytest.fixture(scope="module")
def formula_model() -> AvatarForcingModel:
    torch.set_num_threads(2)
    return AvatarForcingModel.with_formula_weights(ModelConfig.fixture_small(), 0)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Known environment: no AVATARFORCING_* variables, empty weights dir and cache."""
    for name in list(os.environ):
        if name.startswith("AVATARFORCING_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AVATARFORCING_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def one_error(err: str) -> str:
    """The one ``avatarforcing: error:`` line of a failed command (progress lines may precede it;
    no traceback)."""
    errors = [line for line in err.splitlines() if line.startswith("avatarforcing: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def cli(*argv: str, host=None, environ=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), host or build_plugin_host({}), out, err, environ=environ)
    return status, out.getvalue(), err.getvalue()


# ============================================================================================
# end to end: the CLI on the samples, checked with ffprobe
# ============================================================================================
def expected_frames(*paths: Path) -> int:
    """The official length: the longer voice, in 25 fps frames."""
    return math.ceil(max(len(load_audio(p)) for p in paths) * 25 / RATE)


def check_mp4(out: Path, frames: int, size: tuple[int, int]) -> np.ndarray:
    """ffprobe: one H.264 stream of `frames` frames at 25 fps and `size`, one AAC stream of the
    same length; returns the decoded frames."""
    probe = ffprobe(out)
    video = [s for s in probe["streams"] if s["codec_type"] == "video"]
    audio = [s for s in probe["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 1 and len(audio) == 1
    assert video[0]["codec_name"] == "h264" and video[0]["pix_fmt"] == "yuv420p"
    assert (video[0]["width"], video[0]["height"]) == size
    assert video[0]["r_frame_rate"] == "25/1"
    assert int(video[0]["nb_frames"]) == frames
    assert abs(float(probe["format"]["duration"]) - frames / 25) <= 1 / 25 + 1e-6
    assert audio[0]["codec_name"] == "aac" and int(audio[0]["sample_rate"]) == RATE
    assert float(audio[0]["duration"]) > frames / 25 - 0.1  # the avatar's speech is muxed
    decoded = np.stack([rgb for _, _, rgb in iter_video_frames(out)])
    assert decoded.shape == (frames, size[1], size[0], 3)
    assert decoded.std() > 1.0  # real pictures, not a constant
    return decoded


def test_render_with_the_embedded_engine_needs_no_weights(clips, tmp_path):
    if not ffprobe_available():
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    out = tmp_path / "avatar.mp4"
    status, stdout, stderr = cli(
        "render", "--avatar-audio", str(clips["avatar_3s"]), "--user-video", str(clips["user_3s"]), "--out", str(out)
    )
    assert status == 0, stderr
    frames = expected_frames(clips["avatar_3s"], clips["user_3s"])
    assert f"wrote {out}: {frames} frames" in stdout and "engine default, renderer puppet" in stdout
    assert not list(tmp_path.glob(".*partial*"))  # written under a temporary name, then renamed
    check_mp4(out, frames, (512, 512))


def test_render_with_the_official_engine_and_formula_weights(clips, tmp_path):
    if not ffprobe_available():
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    out = tmp_path / "official.mp4"
    status, stdout, stderr = cli(
        "render",
        "--portrait",
        str(clips["portrait"]),
        "--avatar-audio",
        str(clips["avatar_2.4s"]),
        "--user-video",
        str(clips["user_3s"]),
        "--out",
        str(out),
        "--model",
        "formula:fixture_small",  # implies --engine official
        "--nfe",
        "3",
        "--threads",
        "2",
    )
    assert status == 0, stderr
    frames = expected_frames(clips["avatar_2.4s"], clips["user_3s"])
    assert f"wrote {out}: {frames} frames" in stdout and "engine official, renderer motion-autoencoder" in stdout
    check_mp4(out, frames, (64, 64))  # fixture_small renders S = 64


def test_user_video_without_sound_renders_with_a_silent_user(clips, tmp_path):
    out = tmp_path / "silent-user.mp4"
    status, stdout, stderr = cli(
        "render",
        "--avatar-audio",
        str(clips["avatar_2.4s"]),
        "--user-video",
        str(clips["user_short_silent"]),  # 10 frames, no audio track
        "--out",
        str(out),
    )
    assert status == 0, stderr
    assert f"wrote {out}: 60 frames" in stdout  # the avatar's 2.4 s set the length


# ============================================================================================
# the session: renderer plugin, hooks, determinism
# ============================================================================================
class ProbePlugin:
    """A renderer ``probe`` (flat grey frames of the option ``shade``) plus recorders of every
    session hook; its filter paints a white 8x8 corner."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.blocks: list[tuple[int, int, int]] = []
        self.latents: list[np.ndarray] = []
        self.session = None

    @hookimpl
    def register_renderers(self):
        plugin = self

        class Probe:
            def __init__(self, shade: int) -> None:
                self.shade = shade

            def open(self, session):
                plugin.events.append(("open", session.renderer))
                self.size = session.frame_size

            def render(self, block):
                plugin.blocks.append((block.index, block.first_frame, block.num_frames))
                return [
                    Frame(
                        np.full((*self.size, 3), self.shade, np.uint8),
                        block.first_frame + k,
                        (block.first_frame + k) / 25,
                    )
                    for k in range(block.num_frames)
                ]

            def close(self):
                plugin.events.append(("close",))

        return [
            RendererSpec(
                "probe",
                "grey frames",
                Probe,
                options=(OptionSpec("shade", int, 128, "grey level", minimum=0, maximum=255),),
            )
        ]

    @hookimpl
    def session_started(self, session):
        self.session = session
        self.events.append(("started", session.renderer, dict(session.sources)))

    @hookimpl
    def block_generated(self, block):
        self.events.append(("block", block.index, block.first_frame))
        self.latents.append(np.array(block.latents))

    @hookimpl
    def filter_frame(self, frame):
        frame.image[:8, :8] = 255

    @hookimpl
    def frame_rendered(self, frame):
        self.events.append(("frame", frame.index))

    @hookimpl
    def session_stopped(self, stats):
        self.events.append(("stopped", stats["frames"], stats["error"]))


def _host_with(*plugins):
    """The built-in plugins (engines, sources, sinks) plus `plugins`."""
    host = build_plugin_host({})
    for plugin in plugins:
        host.pm.register(plugin)
    return host


def test_render_drives_the_renderer_plugin_and_fires_the_session_hooks(clips, tmp_path):
    probe = ProbePlugin()
    out = tmp_path / "probe.mp4"
    status, _, stderr = cli(
        "render",
        "--avatar-audio",
        str(clips["avatar_2.4s"]),
        "--user-audio",
        str(clips["user_audio_2.4s"]),
        "--user-video",
        str(clips["user_short_silent"]),  # 10 frames: shorter than the audio, the last one is held
        "--out",
        str(out),
        "--renderer",
        "probe",
        "--set",
        "render.shade=200",
        host=_host_with(probe),
    )
    assert status == 0, stderr
    total = 60
    # every frame 0 .. T-1 reached the renderer exactly once, in order, block by block
    starts = [first for _, first, _ in probe.blocks]
    assert starts[0] == 0 and sum(n for *_, n in probe.blocks) == total
    assert all(a + n == b for (_, a, n), b in zip(probe.blocks, starts[1:]))
    assert probe.events[0] == ("open", "probe")
    assert probe.events[1] == (
        "started",
        "probe",
        {"avatar_audio": "audio-file", "user_audio": "audio-file", "user_video": "video-file", "avatar_video": ""},
    )
    assert [e for e in probe.events if e[0] == "frame"] == [("frame", i) for i in range(total)]
    assert probe.events[-1] == ("stopped", total, None)
    assert probe.session.offline is True
    frames = np.stack([rgb for _, _, rgb in iter_video_frames(out)])
    assert frames.shape == (total, 512, 512, 3)
    assert abs(float(frames[:, 16:, 16:].mean()) - 200) < 4  # the shade option reached the factory
    assert float(frames[:, :6, :6].mean()) > 240  # the filter_frame corner


def test_render_is_deterministic_for_a_seed(clips, tmp_path):
    """Offline nothing depends on timing: the same inputs and seed give the same motion."""
    runs = []
    for name in ("a", "b"):
        probe = ProbePlugin()
        argv = ["render", "--avatar-audio", str(clips["avatar_2.4s"]), "--user-video", str(clips["user_3s"])]
        argv += ["--out", str(tmp_path / f"{name}.mp4"), "--renderer", "probe", "--seed", "7"]
        status, _, stderr = cli(*argv, host=_host_with(probe))
        assert status == 0, stderr
        runs.append(np.concatenate(probe.latents))
    assert runs[0].shape[0] == expected_frames(clips["avatar_2.4s"], clips["user_3s"])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_a_failing_renderer_stops_the_render_and_leaves_no_file(clips, tmp_path):
    class Broken:
        def __init__(self):
            self.stops = []

        @hookimpl
        def register_renderers(self):
            class Renderer:
                def open(self, session):
                    pass

                def render(self, block):
                    raise RuntimeError(f"boom at block {block.index}")

                def close(self):
                    pass

            return [RendererSpec("broken", "fails", Renderer)]

        @hookimpl
        def session_stopped(self, stats):
            self.stops.append(stats)

    plugin = Broken()
    out = tmp_path / "broken.mp4"
    status, _, err = cli(
        "render", "--avatar-audio", str(clips["avatar_2.4s"]), "--out", str(out), "--renderer", "broken",
        host=_host_with(plugin),
    )  # fmt: skip
    assert status == 1 and "render failed: renderer: RuntimeError: boom at block 0" in one_error(err)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    assert len(plugin.stops) == 1 and plugin.stops[0]["error"] == "renderer: RuntimeError: boom at block 0"


def test_motion_autoencoder_renderer_decodes_with_the_engine(clips, formula_model):
    """The built-in renderer (registered through its entry point) returns the engine's own
    decoder output mapped per frame to uint8."""
    from avatarforcing.engine.official.pipeline import AvatarPipeline, images_to_model
    from avatarforcing.engine.stream import LatentBlock
    from avatarforcing.integrations.media import to_uint8_frame
    from avatarforcing.plugin import MotionBlock, SessionInfo

    host = build_plugin_host({})
    entry = host.lookup("renderers", "motion-autoencoder")
    assert entry.plugin == "motion_autoencoder"
    renderer = host.create_renderer(load_config(overrides=[("render.batch_frames", "3")], environ={}))
    portrait = centre_square(np.asarray(load_rgb(clips["portrait"])), 64)
    pipeline = AvatarPipeline(formula_model, images_to_model(portrait), PipelineConfig())
    session = SessionInfo("s", load_config(environ={}), frame_size=(64, 64), portrait=portrait, engine=pipeline)
    renderer.open(session)
    latents = torch.randn(7, 512, generator=torch.Generator().manual_seed(0)) * 0.1
    frames = renderer.render(MotionBlock(4, 120, 7, latents))
    expected = to_uint8_frame(pipeline.decode(LatentBlock(120, latents[None])))
    assert [f.index for f in frames] == list(range(120, 127))
    assert [f.timestamp for f in frames] == pytest.approx([i / 25 for i in range(120, 127)])
    images = np.stack([f.image for f in frames])
    assert images.shape == expected.shape == (7, 64, 64, 3) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # batches of 3 vs one of 7
    renderer.close()
    with pytest.raises(Exception, match="needs the official engine"):
        renderer.open(SessionInfo("t", load_config(environ={})))


def load_rgb(path: Path) -> np.ndarray:
    from avatarforcing.integrations.face_crop import load_image_rgb

    return load_image_rgb(path)


# ============================================================================================
# errors: one line, the right exit status, before any heavy work
# ============================================================================================
def test_render_missing_files_and_bad_options_are_one_line_errors(clips, tmp_path):
    common = ["--avatar-audio", str(clips["avatar_2.4s"]), "--out", str(tmp_path / "x.mp4")]
    missing = tmp_path / "nope.jpg"
    status, _, err = cli("render", *common, "--user-audio", str(tmp_path / "u.wav"))
    assert status == 2 and err == f"avatarforcing: error: --user-audio: file not found: {tmp_path / 'u.wav'}\n"
    status, _, err = cli("render", "--avatar-audio", str(clips["avatar_2.4s"]), "--out", str(tmp_path / "no" / "x.mp4"))
    assert status == 2 and "--out: folder does not exist" in err
    status, _, err = cli("render", "--avatar-audio", str(clips["avatar_2.4s"]), "--out", str(tmp_path / "x.avi"))
    assert status == 2 and "must end in .mp4" in err
    status, _, err = cli("render", *common, "--nfe", "lots")
    assert status == 2 and err.startswith("avatarforcing: error: model.nfe: expected an integer")
    status, _, err = cli("render", *common, "--renderer", "crayons")
    assert status == 1 and "no renderer named 'crayons' (available: " in err and "puppet" in err
    status, _, err = cli("render", *common, "--engine", "nope")
    assert status == 1 and "no engine named 'nope'" in err
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    status, _, err = cli("render", "--avatar-audio", str(text), "--out", str(tmp_path / "x.mp4"))
    assert status == 1 and "cannot open media file" in err and str(text) in err and len(err.splitlines()) == 1
    status, _, err = cli("render", *common, "--portrait", str(missing))
    assert status == 2 and one_error(err) == f"avatarforcing: error: --portrait: file not found: {missing}"
    # --debug shows the traceback, otherwise never
    status, _, err = cli("render", *common, "--user-audio", str(tmp_path / "u.wav"), "--debug")
    assert status == 2 and "Traceback" in err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("formula:huge", "unknown model preset 'huge'"),
        ("formula:fixture_small:x", "the seed must be an integer"),
        ("formula:", "expected formula:PRESET"),
        ("{missing}", "does not exist"),
        ("{empty}", "holds no model weights"),
    ],
)
def test_render_bad_model_spec_is_one_clear_line(clips, tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    spec = spec.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
    status, _, err = cli(
        "render",
        "--portrait",
        str(clips["portrait"]),
        "--avatar-audio",
        str(clips["avatar_2.4s"]),
        "--out",
        str(tmp_path / "x.mp4"),
        "--model",
        spec,
    )
    assert status == 2 and message in one_error(err)


def test_render_official_without_weights_says_how_to_get_them(clips, tmp_path):
    status, _, err = cli(
        "render",
        "--portrait",
        str(clips["portrait"]),
        "--avatar-audio",
        str(clips["avatar_2.4s"]),
        "--out",
        str(tmp_path / "x.mp4"),
        "--engine",
        "official",
    )
    assert status == 2  # a usage error, like a bad --model
    assert f"no model weights in {tmp_path / 'no-weights'} ($AVATARFORCING_WEIGHTS)" in one_error(err)
    assert "avatarforcing weights fetch" in err


# ============================================================================================
# model selection
# ============================================================================================
def _official_files(model: AvatarForcingModel, folder: Path) -> Path:
    """Write `model` the way the official release is laid out: two .pth files with the full
    parameter names plus a HuggingFace wav2vec2 folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.save(
        {k: v for k, v in params.items() if k.startswith("motion_autoencoder.")}, folder / "motion_autoencoder.pth"
    )
    torch.save(
        {k: v for k, v in params.items() if k.startswith(("flow_transformer.", "audio_encoder.audio_projection."))},
        folder / "flow_transformer.pth",
    )
    hf = folder / "wav2vec2-base-960h"
    hf.mkdir()
    prefix = "audio_encoder.wav2vec2."
    save_file(
        {"wav2vec2." + k[len(prefix) :]: v.contiguous() for k, v in params.items() if k.startswith(prefix)},
        hf / "model.safetensors",
    )
    (hf / "config.json").write_text(model.audio_encoder.wav2vec2.config.to_json_string())
    return folder


def _same_parameters(a: AvatarForcingModel, b: AvatarForcingModel) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_model_specs_formula_official_directory_and_our_format(formula_model, tmp_path):
    from avatarforcing.engine.official.checkpoint import save_model
    from avatarforcing.plugin.app.config import ModelSettings

    source = resolve_model_source("formula:fixture_small:0")
    assert (source.kind, source.preset, source.seed) == ("formula", "fixture_small", 0)
    assert source.model_config() == ModelConfig.fixture_small()
    assert resolve_model_source("formula:official").model_config() == ModelConfig.official()

    official = _official_files(formula_model, tmp_path / "official")
    settings = ModelSettings(preset="fixture_small")
    source = resolve_model_source(str(official), settings)
    assert source.kind == "official" and source.wav2vec2 == official / "wav2vec2-base-960h"
    assert source.model_config() == ModelConfig.fixture_small()
    loaded = load_model_from_source(source)
    assert _same_parameters(loaded, formula_model)

    ours = save_model(formula_model, tmp_path / "ours")
    model, source = load_model_from_spec(str(ours), environ={})
    assert source.kind == "ours" and source.model_config() == ModelConfig.fixture_small()
    assert _same_parameters(model, formula_model)

    # the default: the weights directory in use, here $AVATARFORCING_WEIGHTS
    source = resolve_model_source(None, settings, environ={"AVATARFORCING_WEIGHTS": str(official)})
    assert source.kind == "official" and source.directory == official
    # a file that does not match the model is refused, in one line naming the source
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    os.link(official / "flow_transformer.pth", wrong / "flow_transformer.pth")
    torch.save({"motion_autoencoder.enc.no_such_layer": torch.zeros(3)}, wrong / "motion_autoencoder.pth")
    with pytest.raises(CommandError) as caught:
        load_model_from_source(resolve_model_source(str(wrong), settings))
    message = str(caught.value)
    assert message.startswith(f"cannot load official weights in {wrong} (fixture_small size): refusing to load")
    assert "missing" in message and "unexpected" in message and "\n" not in message


# ============================================================================================
# pieces
# ============================================================================================
def test_frames_at_rate_resamples_to_25_fps_without_blending():
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(20)]
    values = lambda frames: [int(f[0, 0, 0]) for f in frames]
    jitter = [0.0, 0.003, -0.004, 0.002] * 5
    at_25 = [(10.0 + i / 25 + jitter[i], im) for i, im in enumerate(images)]  # pts need not start at 0
    assert values(frames_at_rate(at_25)) == list(range(20))
    at_50 = [(i / 50, im) for i, im in enumerate(images)]
    assert values(frames_at_rate(at_50)) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    at_12_5 = [(i / 12.5, im) for i, im in enumerate(images[:5])]
    assert values(frames_at_rate(at_12_5)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert values(frames_at_rate([(3.0, images[7])])) == [7]  # a single picture: one frame


def test_centre_square_crops_the_middle():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 30:70] = 255
    crop = centre_square(image, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8 and crop.min() == 255
