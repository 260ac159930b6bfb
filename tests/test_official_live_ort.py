"""The official engine on ONNX Runtime runs every per-block graph there — the streaming audio
window, the motion encoder, the generator and the decoder — and produces what eager PyTorch
produces within the tolerances of docs/acceleration.md. Formula weights (fixture_small), the
sample media of ../shared/reference/samples, ticks of 1 and 3 frames (the graphs take 10).

A graph that silently ran in PyTorch fails here twice: the engine's per-graph report would say
so, and its outputs would equal eager PyTorch bit for bit (ONNX Runtime's fused kernels round
differently, so every compared quantity must differ from PyTorch, a little)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatarforcing.engine.export.graph_specs import ExportSettings
from avatarforcing.engine.export.live_backend import (
    LIVE_GRAPHS,
    PYTORCH,
    BackendUnavailable,
    choose_live_backend,
    graph_cache_dir,
)
from avatarforcing.engine.export.onnx_graphs import ExportManifest, export_all
from avatarforcing.engine.export.onnx_runtime import DEFAULT_TOLERANCES
from avatarforcing.engine.export.runners import GENERATOR_GRAPHS
from avatarforcing.engine.stream import LatentBlock
from avatarforcing.integrations.face_crop import load_image_rgb
from avatarforcing.integrations.media import frames_at_rate, iter_video_frames, load_audio
from avatarforcing.plugin.api.types import InputTick, SessionInfo
from avatarforcing.plugin.app.config import load_config
from avatarforcing.plugin.builtins.engines import official as official_engine
from avatarforcing.plugin.host import build_plugin_host
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME

pytest.importorskip("onnxruntime", reason="ONNX Runtime is part of the 'export' extra")

NFE = 4
FRAMES = 60  # the first clip (50) and one block
TICKS = [1, 1, 3] * 12  # live ticks carry any count; 60 frames in all
DECODED = slice(47, 60)  # 13 frames across the first clip's end: one full call and one padded


def engine_on(backend: str, portrait: np.ndarray):
    """An opened official engine (fixture_small formula weights, nfe 4, 1 thread) on `backend`."""
    host = build_plugin_host({}, load_entry_points=False, plugins=[official_engine])
    cfg = load_config(
        overrides=[
            "model.engine=official",
            "engines.official.model=formula:fixture_small",
            f"model.nfe={NFE}",
            "model.threads=1",
            "model.device=cpu",
            f"model.backend={backend}",
        ],
        environ={},
    )
    _, engine = host.create_engine(cfg)
    engine.open(SessionInfo("s", cfg, portrait=portrait))
    return engine


def drive(engine, avatar: np.ndarray, user: np.ndarray, frames: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Ticks of the sample media through extract/generate, then finish; the per-tick outputs
    concatenated, the generated latents and 13 decoded frames."""
    outputs: dict[str, list] = {"avatar": [], "user": [], "motion": [], "motion_counts": [], "latents": []}
    start = 0
    for count in TICKS:
        span = slice(start * SAMPLES_PER_FRAME, (start + count) * SAMPLES_PER_FRAME)
        tick = InputTick(start, count, avatar[span], user[span], frames[start : start + count])
        features = engine.extract(tick)
        for key in ("avatar", "user", "motion"):
            outputs[key].append(getattr(features, key))
        outputs["motion_counts"].append(int(features.motion.shape[0]))
        outputs["latents"] += [b.latents for b in engine.generate(features)]
        start += count
    outputs["latents"] += [b.latents for b in engine.finish()]
    result = {key: torch.cat(outputs[key]) for key in ("avatar", "user", "motion", "latents")}
    result["decoded"] = engine.decode(LatentBlock(DECODED.start, result["latents"][DECODED][None]))
    result["motion_counts"] = outputs["motion_counts"]
    return result


@pytest.fixture(scope="module")
def media(samples_dir: Path):
    """(portrait, avatar audio, user audio, user video frames) of the first 60 frames."""
    avatar = load_audio(samples_dir / "avatar.wav")[: FRAMES * SAMPLES_PER_FRAME]
    user = load_audio(samples_dir / "user.mp4")[: FRAMES * SAMPLES_PER_FRAME]
    video = []
    for frame in frames_at_rate((t, f) for _, t, f in iter_video_frames(samples_dir / "user.mp4")):
        video.append(frame)
        if len(video) == FRAMES:
            break
    assert len(avatar) == len(user) == FRAMES * SAMPLES_PER_FRAME and len(video) == FRAMES
    return load_image_rgb(samples_dir / "rumi.jpg"), avatar, user, video


@pytest.fixture(scope="module")
def sessions(media, tmp_path_factory):
    """Eager PyTorch, then ONNX Runtime on a cache that an older start left with only the
    generator graphs; returns (eager outputs, ORT outputs, ORT engine, cache folder, stamps of
    the older start's files, ORT open log)."""
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        portrait, avatar, user, video = media
        eager_engine = engine_on("torch_cpu", portrait)
        try:
            eager = drive(eager_engine, avatar, user, video)
            model = eager_engine.model
        finally:
            eager_engine.close()
        # an older start exported the generator graphs only
        folder, _ = graph_cache_dir(cache / "avatarforcing" / "graphs", model, ExportSettings(nfe=NFE))
        export_all(model, folder, ExportSettings(nfe=NFE), graphs=GENERATOR_GRAPHS)
        stamps = {g: (folder / f"{g}.onnx").stat().st_mtime_ns for g in GENERATOR_GRAPHS}
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger(official_engine.__name__)
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.INFO)
        try:
            ort_engine = engine_on("onnxruntime_cpu", portrait)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous)
        try:
            ort = drive(ort_engine, avatar, user, video)
        finally:
            ort_engine.close()
    lines = [r.getMessage() for r in records]
    return eager, ort, ort_engine, folder, stamps, lines, model


def _relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max(1, max |want|) (the scale of docs/acceleration.md)."""
    return float((got.double() - want.double()).abs().max()) / max(1.0, float(want.abs().max()))


def test_every_graph_runs_on_onnx_runtime_and_is_reported(sessions):
    _, _, engine, _, _, lines, _ = sessions
    assert engine.backend == "onnxruntime_cpu"
    assert engine.backend_graphs == dict.fromkeys(LIVE_GRAPHS, "onnxruntime")
    opened = [line for line in lines if line.startswith("engine official:")]
    assert len(opened) == 1 and "backend: onnxruntime_cpu" in opened[0]
    assert f"graphs: {', '.join(LIVE_GRAPHS)} on onnxruntime" in opened[0]
    pipeline = engine.pipeline
    assert pipeline.motion_frames_per_call == pipeline.decoder_frames_per_call == 10


def test_an_older_cache_with_the_generator_graphs_only_is_completed(sessions):
    _, _, _, folder, stamps, lines, _ = sessions
    assert {p.name for p in folder.glob("*.onnx")} == {f"{g}.onnx" for g in LIVE_GRAPHS}
    # the older start's files are kept, not exported again
    assert stamps == {g: (folder / f"{g}.onnx").stat().st_mtime_ns for g in GENERATOR_GRAPHS}
    assert any("exporting the graphs audio_window, motion_encoder, decoder to ONNX once" in line for line in lines)


def test_onnx_runtime_matches_eager_pytorch_per_stage(sessions):
    eager, ort, *_ = sessions
    assert eager["avatar"].shape == ort["avatar"].shape == (FRAMES - 10, 512)  # 3 frames lookahead: 5 hops
    assert eager["motion"].shape == ort["motion"].shape == (FRAMES, 512)
    assert eager["latents"].shape == ort["latents"].shape == (FRAMES, 512)
    size = sessions[-1].cfg.input_size
    assert ort["decoded"].shape == eager["decoded"].shape == (13, 3, size, size)
    assert torch.count_nonzero(eager["motion"].abs().sum(1)) > 0  # faces were found: the encoder ran
    limits = {
        "avatar": DEFAULT_TOLERANCES["audio_window"],
        "user": DEFAULT_TOLERANCES["audio_window"],
        "motion": DEFAULT_TOLERANCES["motion_encoder"],
        "latents": DEFAULT_TOLERANCES["rollout"],
        "decoded": DEFAULT_TOLERANCES["decoder"],
    }
    for key, limit in limits.items():
        diff = _relative_diff(ort[key], eager[key])
        # nonzero: ONNX Runtime, not PyTorch, computed it
        assert 0.0 < diff <= limit, (key, diff, limit)


def test_the_fixed_size_motion_encoder_gets_whole_calls(sessions):
    """1- and 3-frame ticks: ONNX Runtime encodes the user's frames 10 at a time (no padding
    frames), eager PyTorch per tick; the latents are the same frames'."""
    eager, ort, *_ = sessions
    assert eager["motion_counts"] == TICKS
    assert set(ort["motion_counts"]) <= {0, 10} and sum(ort["motion_counts"]) == FRAMES


def test_a_user_export_folder_missing_a_graph(sessions, tmp_path):
    """``auto``: that graph runs in PyTorch and the line says which and why; a requested
    backend refuses, naming the file."""
    _, _, _, folder, _, _, model = sessions
    mine = tmp_path / "mine"
    shutil.copytree(folder, mine)
    # exports of some graphs only (as `engine_export_main(..., graphs=...)` writes them)
    manifest = ExportManifest.load(mine)
    manifest.graphs = [g for g in manifest.graphs if g.name != "decoder"]
    manifest.save(mine)
    (mine / "decoder.onnx").unlink()
    settings = ExportSettings(nfe=NFE)
    backend = choose_live_backend(model, settings, "auto", tmp_path / "unused", export_dir=mine)
    assert backend.name == "onnxruntime_cpu"
    assert backend.graphs == {**dict.fromkeys(LIVE_GRAPHS, "onnxruntime"), "decoder": PYTORCH}
    line = backend.graphs_line()
    assert line.startswith(
        "graphs: first_clip, block_step, audio_window, motion_encoder on onnxruntime; decoder on pytorch"
    )
    assert f"decoder in PyTorch: ONNX exports in {mine} lack decoder.onnx" in line
    with pytest.raises(BackendUnavailable, match=r"onnxruntime_cpu cannot run every graph: .*lack decoder\.onnx"):
        choose_live_backend(model, settings, "onnxruntime_cpu", tmp_path / "unused", export_dir=mine)
    assert not (tmp_path / "unused").exists()  # nothing exported: the user's folder is read only
    assert not (mine / "decoder.onnx").exists()
