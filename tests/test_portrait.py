"""The ``portrait`` renderer: a photo animated by the 13 motion parameters (real media, ../shared).

The rig's frames are read back with mediapipe FaceMesh (`FaceParamsExtractor`) to check that
they show what the parameters ask for; bad portraits (not an image, no face, a tiny face) give one
clear error; unusual ones (two faces, grayscale, very large) work with a warning; prepared
portraits are cached; the plugin renders through a real PluginHost and ``portrait check`` runs
through the CLI. No timing assertions: speed is measured by ``docs/portrait_eval.py``.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarforcing.engine.embedded import portrait_rig
from avatarforcing.engine.embedded.portrait_rig import PortraitRig, RigConfig, sheet_params
from avatarforcing.integrations.face_params import FaceParamsExtractor
from avatarforcing.integrations.portrait_analysis import PortraitError, analyse_portrait, frame_portrait
from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.types import MotionBlock, SessionInfo
from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.config import AppConfig, load_config
from avatarforcing.plugin.builtins.renderers import portrait as portrait_plugin
from avatarforcing.plugin.builtins.renderers.portrait import PortraitCache
from avatarforcing.plugin.host import build_plugin_host
from avatarforcing.schemas.motion_space import MOTION_SPACE

pytest.importorskip("mediapipe")

SIZE = 512
P = {name: MOTION_SPACE.index(name) for name in MOTION_SPACE.names}


@pytest.fixture(scope="module")
def rumi_path(samples_dir: Path) -> Path:
    return samples_dir / "rumi.jpg"


@pytest.fixture(scope="module")
def rumi_framed(rumi_path: Path):
    analysis = analyse_portrait(rumi_path)
    return analysis, frame_portrait(analysis, (SIZE, SIZE))


@pytest.fixture(scope="module")
def rig(rumi_framed) -> PortraitRig:
    _, (image, landmarks, matte) = rumi_framed
    return PortraitRig(image, landmarks, matte)


@pytest.fixture(scope="module")
def reader():
    with FaceParamsExtractor(filter=False, static_images=True) as extractor:
        yield extractor


def read_back(reader: FaceParamsExtractor, rig: PortraitRig, **values: float) -> dict[str, float]:
    """Render the rig with named parameters and read the frame's parameters with FaceMesh."""
    frame = rig.render(sheet_params({P[name]: value for name, value in values.items()}))
    params = reader.extract(frame)
    assert params is not None, f"FaceMesh found no face in the frame rendered with {values}"
    return MOTION_SPACE.to_dict(params)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


# -- the rig -----------------------------------------------------------------------------------
def test_rig_module_imports_nothing_from_plugins_or_integrations():
    """The rig is compute: numpy, OpenCV and the standard library only."""
    source = Path(portrait_rig.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not [name for name in imported if name.startswith(("avatarforcing.plugin", "avatarforcing.integrations"))]
    assert {name.split(".")[0] for name in imported} <= {"__future__", "math", "dataclasses", "cv2", "numpy"}


def test_neutral_parameters_reproduce_the_photo(rumi_framed, rig):
    analysis, (image, _, _) = rumi_framed
    frame = rig.render(np.zeros(MOTION_SPACE.dim, np.float32))
    assert frame.shape == image.shape and frame.dtype == np.uint8
    x0, y0, x1, y1 = analysis.face_box
    error = np.mean((frame[y0:y1, x0:x1].astype(np.float64) - image[y0:y1, x0:x1]) ** 2)
    psnr = np.inf if error == 0 else 10 * np.log10(255.0**2 / error)
    assert psnr >= 35.0


def test_constant_parameters_give_identical_frames(rig):
    still = sheet_params({P["yaw"]: 12.0, P["jaw_open"]: 0.5, P["gaze_x"]: 0.6, P["blink_left"]: 0.3})
    first = rig.render(still)
    rig.render(sheet_params({P["pitch"]: -10.0, P["gaze_y"]: 1.0}))  # something else in between
    again = rig.render(still)
    assert first is not again and np.array_equal(first, again)
    assert not np.array_equal(first, rig.render(np.zeros(MOTION_SPACE.dim, np.float32)))


def test_rendered_face_follows_the_parameters(rig, reader):
    """FaceMesh reads back, from the rendered frames, what the parameters asked for."""
    base = read_back(reader, rig)
    half, full = read_back(reader, rig, jaw_open=0.5), read_back(reader, rig, jaw_open=1.0)
    assert base["jaw_open"] < 0.1 < half["jaw_open"] < full["jaw_open"] and full["jaw_open"] > 0.7
    assert read_back(reader, rig, yaw=20.0)["yaw"] > base["yaw"] + 8.0
    assert read_back(reader, rig, yaw=-20.0)["yaw"] < base["yaw"] - 8.0
    assert read_back(reader, rig, pitch=12.0)["pitch"] > base["pitch"] + 5.0
    assert read_back(reader, rig, pitch=-12.0)["pitch"] < base["pitch"] - 5.0
    assert read_back(reader, rig, roll=15.0)["roll"] > base["roll"] + 10.0
    left = read_back(reader, rig, blink_left=1.0)
    assert left["blink_left"] > 0.7 and left["blink_right"] < 0.4
    right = read_back(reader, rig, blink_right=1.0)
    assert right["blink_right"] > 0.7 and right["blink_left"] < 0.4
    assert read_back(reader, rig, smile=1.0)["smile"] > base["smile"] + 0.5
    assert read_back(reader, rig, pucker=1.0)["pucker"] > base["pucker"] + 0.5
    assert read_back(reader, rig, brow_raise=1.0)["brow_raise"] > base["brow_raise"] + 0.5
    assert read_back(reader, rig, brow_raise=-1.0)["brow_raise"] < base["brow_raise"] - 0.5
    assert read_back(reader, rig, gaze_x=1.0)["gaze_x"] > base["gaze_x"] + 0.3
    assert read_back(reader, rig, gaze_x=-1.0)["gaze_x"] < base["gaze_x"] - 0.3


def test_closed_lids_hide_the_eye(rig):
    """With both eyes shut, no pixel inside the photo's eye openings keeps the eye's dark iris
    or bright white: the lids' skin covers them."""
    closed = rig.render(sheet_params({P["blink_left"]: 1.0, P["blink_right"]: 1.0})).astype(np.float32)
    photo = rig.render(np.zeros(MOTION_SPACE.dim, np.float32)).astype(np.float32)
    landmarks = rig.landmarks
    for upper, lower in (
        (portrait_rig.EYE_LEFT_UPPER, portrait_rig.EYE_LEFT_LOWER),
        (portrait_rig.EYE_RIGHT_UPPER, portrait_rig.EYE_RIGHT_LOWER),
    ):
        mask = np.zeros(closed.shape[:2], np.uint8)
        polygon = landmarks[[*upper, *lower[-2:0:-1]], :2]
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        mask = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
        # the closed eye's middle band (lashes aside) is skin-coloured: close to the lid skin above
        skin = photo[int(polygon[:, 1].min()) - 6, int(polygon[:, 0].mean())]
        middle = closed[mask]
        assert np.median(np.abs(middle - skin).max(axis=1)) < np.median(np.abs(photo[mask] - skin).max(axis=1))


def test_backgrounds(rumi_framed):
    _, (image, landmarks, matte) = rumi_framed
    transparent = PortraitRig(image, landmarks, matte, RigConfig(background="transparent"))
    for params in (np.zeros(MOTION_SPACE.dim, np.float32), sheet_params({P["yaw"]: 20.0, P["shift_x"]: 0.1})):
        frame = transparent.render(params)
        assert frame.shape == (SIZE, SIZE, 4) and frame.dtype == np.uint8
        assert frame[5, 5, 3] == 0 and frame[5, SIZE - 6, 3] == 0  # the wall behind her
        assert frame[250, 260, 3] == 255  # her face
    green = PortraitRig(image, landmarks, matte, RigConfig(background=(0, 177, 64))).render(np.zeros(13))
    assert green.shape == (SIZE, SIZE, 3) and tuple(green[5, 5]) == (0, 177, 64)
    with pytest.raises(ValueError, match="background"):
        RigConfig(background="purple")


# -- checking portraits ------------------------------------------------------------------------
def test_bad_portraits_give_one_clear_error(tmp_path, rumi_path):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    flat = write_rgb(tmp_path / "flat.png", np.full((400, 400, 3), 128, np.uint8))
    noise = write_rgb(tmp_path / "noise.png", rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))
    rumi = cv2.cvtColor(cv2.imread(str(rumi_path)), cv2.COLOR_BGR2RGB)
    canvas = np.full((800, 800, 3), 200, np.uint8)
    canvas[340:460, 340:460] = cv2.resize(rumi, (120, 120), interpolation=cv2.INTER_AREA)
    tiny = write_rgb(tmp_path / "tiny.png", canvas)
    cases = {
        garbage: "not an image",
        flat: "no face",
        noise: "no face",
        tiny: "too small",
        tmp_path / "missing.jpg": "not found",
    }
    for path, reason in cases.items():
        with pytest.raises(PortraitError) as caught:
            analyse_portrait(path)
        message = str(caught.value)
        assert str(path) in message and reason in message and "use" in message, message
        assert "\n" not in message


def test_unusual_portraits_work_with_a_warning(tmp_path, rumi_path):
    rumi = cv2.cvtColor(cv2.imread(str(rumi_path)), cv2.COLOR_BGR2RGB)
    two = analyse_portrait(write_rgb(tmp_path / "two.png", np.hstack([rumi, rumi])))
    assert len(two.faces) == 2 and any("2 faces found" in w for w in two.warnings)
    gray_path = tmp_path / "gray.png"
    cv2.imwrite(str(gray_path), cv2.cvtColor(rumi, cv2.COLOR_RGB2GRAY))
    gray = analyse_portrait(gray_path)
    assert gray.image.shape == (512, 512, 3) and np.array_equal(gray.image[..., 0], gray.image[..., 2])
    assert any("grayscale" in w for w in gray.warnings)
    large = analyse_portrait(write_rgb(tmp_path / "large.jpg", cv2.resize(rumi, (3000, 2400))))
    assert max(large.image.shape[:2]) == 1280 and large.original_size == (2400, 3000)
    assert any("downscaled" in w for w in large.warnings)
    assert large.face_height > 200  # the face is found in the downscaled image


# -- the plugin --------------------------------------------------------------------------------
def test_renderer_through_the_plugin_host(tmp_path, rumi_path):
    host = build_plugin_host({}, load_entry_points=False, plugins=[portrait_plugin])
    assert [e.spec.name for e in host.provided("renderers")] == ["portrait"]
    config = load_config(overrides=["render.use=portrait", "render.size=256"], environ={})
    renderer = host.create_renderer(config)
    renderer.open(SessionInfo("s", AppConfig(), frame_size=(512, 512), portrait_path=str(rumi_path)))
    rows = np.zeros((4, MOTION_SPACE.dim), np.float32)
    rows[:, P["jaw_open"]] = np.linspace(0.0, 1.0, 4)
    rows[:, P["yaw"]] = np.linspace(-15.0, 15.0, 4)
    frames = renderer.render(MotionBlock(index=1, first_frame=50, num_frames=4, latents=rows))
    renderer.close()
    assert [f.index for f in frames] == [50, 51, 52, 53]
    assert [f.timestamp for f in frames] == pytest.approx([i / 25 for i in range(50, 54)])
    assert all(f.image.shape == (256, 256, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[-1].metadata["motion"]["jaw_open"] == 1.0 and frames[0].metadata["motion"]["yaw"] == -15.0
    assert set(frames[0].metadata["motion"]) == set(MOTION_SPACE.names)
    assert not np.array_equal(frames[0].image, frames[-1].image)


def test_renderer_errors_are_one_line(tmp_path):
    host = build_plugin_host({}, load_entry_points=False, plugins=[portrait_plugin])
    renderer = host.create_renderer(load_config(overrides=["render.use=portrait"], environ={}))
    flat = write_rgb(tmp_path / "flat.png", np.full((300, 300, 3), 90, np.uint8))
    for session, expected in (
        (SessionInfo("s", AppConfig(), portrait_path=str(flat)), f"{flat}: no face found"),
        (SessionInfo("s", AppConfig()), "no portrait is set"),
    ):
        with pytest.raises(PluginError) as caught:
            renderer.open(session)
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(PluginError, match="render\\(\\) before open"):
        renderer.render(MotionBlock(index=0, first_frame=0, num_frames=1, latents=np.zeros((1, 13), np.float32)))


def test_prepared_portraits_are_cached_by_content(tmp_path, rumi_path):
    copy = shutil.copy(rumi_path, tmp_path / "same_picture.jpg")
    cache = PortraitCache(tmp_path / "cache")
    first = cache.prepare(rumi_path, (256, 256))
    second = cache.prepare(copy, (256, 256))  # same bytes under another name
    assert first.cache == "" and second.cache == "memory" and second.rig is first.rig
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    fresh = PortraitCache(tmp_path / "cache").prepare(copy, (256, 256))  # a new process: from disk
    assert fresh.cache == "disk"
    assert np.array_equal(fresh.rig.render(np.zeros(13)), first.rig.render(np.zeros(13)))
    other_size = cache.prepare(rumi_path, (128, 128))
    assert other_size.cache == "disk" and other_size.rig.size == (128, 128)


def test_renderer_takes_the_session_array_when_there_is_no_file(rumi_path):
    renderer = portrait_plugin.PortraitRenderer(background="transparent", size=128, cache_dir="")
    rumi = cv2.cvtColor(cv2.imread(str(rumi_path)), cv2.COLOR_BGR2RGB)
    renderer.open(SessionInfo("s", AppConfig(), portrait=rumi))
    frames = renderer.render(MotionBlock(index=0, first_frame=0, num_frames=1, latents=np.zeros((1, 13), np.float32)))
    assert frames[0].image.shape == (128, 128, 4)


# -- the command -------------------------------------------------------------------------------
def run_command(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), build_plugin_host({}, load_entry_points=False), out, err, environ={})
    return status, out.getvalue(), err.getvalue()


def test_portrait_check_command(tmp_path, rumi_path):
    sheet = tmp_path / "sheet.png"
    status, out, err = run_command(
        "portrait", "check", str(rumi_path), "--json", "--sheet", str(sheet), "--size", "256"
    )
    assert status == 0, err
    report = json.loads(out)
    assert report["ok"] and report["faces_found"] == 1 and report["size"] == [512, 512]
    x0, y0, x1, y1 = report["face_box"]
    assert 100 < x0 < x1 < 420 and 100 < y0 < y1 < 420
    assert abs(report["pose_deg"]["yaw"]) < 10 and 0.2 < report["matte_coverage"] < 0.9
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[1] == 6 * 256
    status, out, _ = run_command("portrait", "check", str(rumi_path))
    assert status == 0 and "face_box" in out and "ok" in out
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a picture at all")
    status, _, err = run_command("portrait", "check", str(garbage))
    assert status == 1 and err.count("\n") == 1 and f"{garbage}: not an image" in err
