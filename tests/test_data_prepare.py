"""`avatarforcing data prepare`: real two-party videos built from the sample media with ffmpeg,
prepared in both spaces, then trained on and evaluated (default space)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from safetensors.numpy import load_file

from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING, audio_width
from avatarforcing.engine.embedded.audio_features import LOG_MEL_DIM, log_mel_features
from avatarforcing.engine.training.dataset import ConversationDataset, read_manifest
from avatarforcing.plugin.app.cli import main
from avatarforcing.plugin.app.data_prepare import attribute_mono_speech, frame_rms, heldout_ids, mouth_activity
from avatarforcing.schemas.motion_space import MOTION_SPACE

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg builds the test videos")

SECONDS = 4
AUDIO_WIDTH = audio_width(DEFAULT_VOICING)  # the default space's audio rows (the packaged model's layout)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(samples_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Test conversations (256 px faces, SECONDS long) and the raw audio of each party."""
    root = tmp_path_factory.mktemp("media")
    user, avatar, portrait = samples_dir / "user.mp4", samples_dir / "avatar.wav", samples_dir / "rumi.jpg"
    t = str(SECONDS)
    paths = {
        name: root / name
        for name in (
            "sbs_stereo.mp4",
            "sbs_mono.mp4",
            "party_a.mp4",
            "party_b.mp4",
            "silent.mp4",
            "noface.mp4",
            "left.wav",
            "right.wav",
            "short_sbs.mp4",
        )
    }
    enc = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    # left: the user video; right: its mirror image; stereo: left = user's voice, right = avatar.wav
    _ffmpeg(
        "-t",
        t,
        "-i",
        str(user),
        "-t",
        t,
        "-i",
        str(avatar),
        "-filter_complex",
        "[0:v]scale=256:256,split[a][b];[b]hflip[m];[a][m]hstack[v];[0:a][1:a]join=inputs=2:channel_layout=stereo[s]",
        "-map",
        "[v]",
        "-map",
        "[s]",
        *enc,
        str(paths["sbs_stereo.mp4"]),
    )
    _ffmpeg(
        "-i",
        str(paths["sbs_stereo.mp4"]),
        "-filter_complex",
        "[0:a]channelsplit=channel_layout=stereo[l][r]",
        "-map",
        "[l]",
        str(paths["left.wav"]),
        "-map",
        "[r]",
        str(paths["right.wav"]),
    )
    # left: the speaking user; right: a still portrait (a mouth that never moves); mono: the user's voice
    _ffmpeg(
        "-t",
        t,
        "-i",
        str(user),
        "-loop",
        "1",
        "-framerate",
        "25",
        "-t",
        t,
        "-i",
        str(portrait),
        "-filter_complex",
        "[0:v]scale=256:256[a];[1:v]scale=256:256,format=yuv420p[b];[a][b]hstack[v]",
        "-map",
        "[v]",
        "-map",
        "0:a",
        "-ac",
        "1",
        *enc,
        str(paths["sbs_mono.mp4"]),
    )
    # two tracks: party A the user video with its voice, party B the portrait speaking avatar.wav
    _ffmpeg("-t", t, "-i", str(user), "-vf", "scale=256:256", *enc, str(paths["party_a.mp4"]))
    _ffmpeg(
        "-loop",
        "1",
        "-framerate",
        "25",
        "-t",
        t,
        "-i",
        str(portrait),
        "-t",
        t,
        "-i",
        str(avatar),
        "-vf",
        "scale=256:256",
        "-shortest",
        *enc,
        str(paths["party_b.mp4"]),
    )
    _ffmpeg(
        "-t",
        "1",
        "-i",
        str(user),
        "-an",
        "-vf",
        "scale=256:256",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        str(paths["silent.mp4"]),
    )
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:s=512x256:r=25:d=1",
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:d=1:sample_rate=16000",
        "-ac",
        "2",
        *enc,
        "-shortest",
        str(paths["noface.mp4"]),
    )
    _ffmpeg("-t", "0.6", "-i", str(paths["sbs_stereo.mp4"]), *enc, str(paths["short_sbs.mp4"]))
    return paths


@pytest.fixture(scope="module")
def default_dataset(media, tmp_path_factory) -> Path:
    """Side-by-side stereo (train) + two tracks (held out) in one default-space dataset."""
    out = tmp_path_factory.mktemp("data") / "dataset"
    assert main(["data", "prepare", str(media["sbs_stereo.mp4"]), "--out", str(out), "--heldout-fraction", "0"]) == 0
    assert (
        main(
            [
                "data",
                "prepare",
                "--layout",
                "two-tracks",
                str(media["party_a.mp4"]),
                str(media["party_b.mp4"]),
                "--out",
                str(out),
                "--heldout-fraction",
                "0.5",
            ]
        )
        == 0
    )
    return out


def _item(root: Path, item_id: str) -> dict[str, np.ndarray]:
    return load_file(str(root / "items" / f"{item_id}.safetensors"))


def _wav(path: Path) -> np.ndarray:
    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 16000
    return samples


def test_default_space_manifest_and_shapes(default_dataset: Path) -> None:
    manifest = read_manifest(default_dataset)
    assert (manifest["space"], manifest["fps"], manifest["dim_a"], manifest["dim_w"]) == (
        "default",
        25,
        AUDIO_WIDTH,
        13,
    )
    splits = {item["id"]: item["split"] for item in manifest["items"]}
    assert splits == {
        "sbs_stereo-a": "train",
        "sbs_stereo-b": "train",
        "party_a--party_b-a": "heldout",
        "party_a--party_b-b": "heldout",
    }
    for item in manifest["items"]:
        assert SECONDS * 25 - 2 <= item["frames"] <= SECONDS * 25
        tensors = _item(default_dataset, item["id"])
        frames = item["frames"]
        assert tensors["avatar_audio"].shape == tensors["user_audio"].shape == (frames, AUDIO_WIDTH)
        assert tensors["avatar_motion"].shape == tensors["user_motion"].shape == (frames, 13)
        assert tensors["reference"].shape == (13,) and tensors["avatar_energy"].shape == (frames,)
        # every frame shows a face: motion is not the null (all-zero) condition, and stays in range
        assert (np.abs(tensors["avatar_motion"]).sum(axis=1) > 0).all()
        assert np.abs(tensors["avatar_motion"]).max() <= 1.0 + 1e-5
    assert len(ConversationDataset(default_dataset, "train")) == 2
    assert len(ConversationDataset(default_dataset, "heldout")) == 2


def test_sides_are_swapped_views_of_one_conversation(default_dataset: Path) -> None:
    a, b = _item(default_dataset, "sbs_stereo-a"), _item(default_dataset, "sbs_stereo-b")
    np.testing.assert_array_equal(a["avatar_motion"], b["user_motion"])
    np.testing.assert_array_equal(a["user_audio"], b["avatar_audio"])
    # the right half is the left half mirrored: yaw and roll flip sign, jaw opening is the same
    names = MOTION_SPACE.names
    yaw, roll, jaw = names.index("yaw"), names.index("roll"), MOTION_SPACE.jaw_index
    left, right = MOTION_SPACE.denormalize(a["avatar_motion"]), MOTION_SPACE.denormalize(b["avatar_motion"])
    assert np.mean(np.abs(left[:, yaw] + right[:, yaw])) < 0.5 * np.mean(np.abs(left[:, yaw] - right[:, yaw]))
    assert np.mean(np.abs(left[:, roll] + right[:, roll])) < 0.5 * np.mean(np.abs(left[:, roll] - right[:, roll]))
    assert np.corrcoef(left[:, jaw], right[:, jaw])[0, 1] > 0.9
    np.testing.assert_allclose(a["reference"], a["avatar_motion"].mean(axis=0), atol=1e-5)


def test_stereo_channels_give_each_party_its_audio(default_dataset: Path, media) -> None:
    a = _item(default_dataset, "sbs_stereo-a")
    frames = len(a["avatar_energy"])
    left, right = _wav(media["left.wav"]), _wav(media["right.wav"])
    np.testing.assert_allclose(a["avatar_energy"], frame_rms(left, frames), atol=1e-3)
    np.testing.assert_allclose(a["avatar_audio"][:, :LOG_MEL_DIM], log_mel_features(left)[:frames], atol=0.05)
    np.testing.assert_allclose(a["user_audio"][:, :LOG_MEL_DIM], log_mel_features(right)[:frames], atol=0.05)
    assert np.corrcoef(a["avatar_energy"], frame_rms(left, frames))[0, 1] > 0.99
    assert np.corrcoef(a["avatar_energy"], frame_rms(right, frames))[0, 1] < 0.5


def test_mono_audio_goes_to_the_moving_mouth(media, tmp_path: Path) -> None:
    out = tmp_path / "mono"
    assert main(["data", "prepare", str(media["sbs_mono.mp4"]), "--out", str(out), "--heldout-fraction", "0"]) == 0
    speaker, still = _item(out, "sbs_mono-a"), _item(out, "sbs_mono-b")
    total = speaker["avatar_energy"] + still["avatar_energy"]
    assert speaker["avatar_energy"].sum() > 3 * still["avatar_energy"].sum()
    assert total.max() > 0.01
    # the still portrait's face is found on every frame, but its mouth does not move
    assert (np.abs(still["avatar_motion"]).sum(axis=1) > 0).all()


def test_attribution_rules() -> None:
    frames = 50
    samples = np.ones(frames * 640, np.float32)
    moving = mouth_activity(np.tile([0.0, 0.6], frames // 2), np.ones(frames, bool))
    still = mouth_activity(np.full(frames, 0.2), np.ones(frames, bool))
    left, right, share = attribute_mono_speech(samples, moving, still)
    assert share.min() > 0.95 and np.allclose(left + right, samples)
    _, _, share = attribute_mono_speech(samples, still, still)
    np.testing.assert_allclose(share, 0.5)
    hidden = mouth_activity(np.tile([0.0, 0.6], frames // 2), np.zeros(frames, bool))
    assert (hidden == 0).all()


def test_heldout_choice_is_deterministic() -> None:
    ids = [f"conv{i}" for i in range(20)]
    chosen = heldout_ids(ids, 0.1)
    assert len(chosen) == 2 and chosen == heldout_ids(list(reversed(ids)), 0.1)
    assert heldout_ids(ids, 0.0) == set()
    assert len(heldout_ids(ids[:3], 0.1)) == 1


def test_bad_inputs_get_one_clear_error(media, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "bad")
    cases = [
        (["--layout", "two-tracks", str(media["party_a.mp4"])], "in pairs"),
        ([str(tmp_path / "missing.mp4")], "not found"),
        ([str(media["silent.mp4"])], "no audio track"),
        ([str(media["noface.mp4"])], "no face found"),
        ([str(media["sbs_stereo.mp4"]), "--heldout-fraction", "1.5"], "heldout-fraction"),
        ([str(media["sbs_stereo.mp4"]), "--model", "formula:fixture_small"], "--space official"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(["data", "prepare", *extra, "--out", out]) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_official_space_uses_the_engine_encoders(media, tmp_path: Path) -> None:
    import torch

    from avatarforcing.engine.official.audio_encoder import normalize_utterance
    from avatarforcing.plugin.app.model_loading import load_model_from_spec

    out = tmp_path / "official"
    assert (
        main(
            [
                "data",
                "prepare",
                str(media["short_sbs.mp4"]),
                "--out",
                str(out),
                "--space",
                "official",
                "--model",
                "formula:fixture_small",
                "--heldout-fraction",
                "0",
            ]
        )
        == 0
    )
    manifest = read_manifest(out)
    assert (manifest["space"], manifest["dim_a"], manifest["dim_w"]) == ("official", 512, 512)
    a = _item(out, "short_sbs-a")
    frames = len(a["avatar_energy"])
    assert 13 <= frames <= 15 and a["avatar_motion"].shape == (frames, 512)
    assert (np.abs(a["avatar_motion"]).sum(axis=1) > 0).all()
    np.testing.assert_array_equal(a["reference"], a["avatar_motion"][0])  # first face crop = r_s of that crop
    model, _ = load_model_from_spec("formula:fixture_small", device="cpu")
    clip = normalize_utterance(_wav(media["left.wav"])[: frames * 640])
    with torch.no_grad():
        expected = model.audio_encoder(torch.from_numpy(clip)[None], frames)[0].numpy()
    assert np.corrcoef(expected.ravel(), a["avatar_audio"].ravel())[0, 1] > 0.9


def test_eval_reports_lip_sync_on_prepared_default_data(default_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = json.dumps({"dim_h": 32, "num_heads": 4, "transformer_depth": 1, "sec": 1, "num_frames_per_block": 5})
    assert (
        main(
            [
                "train",
                "--data",
                str(default_dataset),
                "--out",
                str(run),
                "--model-config",
                config,
                "--steps",
                "3",
                "--batch",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table_file = tmp_path / "table.json"
    assert (
        main(
            [
                "eval",
                "--data",
                str(default_dataset),
                "--checkpoint",
                str(run / "checkpoint"),
                "--json",
                str(table_file),
                "--nfe",
                "3",
            ]
        )
        == 0
    )
    table = json.loads(table_file.read_text())
    assert {"rPCC_expression", "rPCC_pose", "lip_sync_pcc"} <= set(table)
    lip = table["lip_sync_pcc"]
    assert np.isfinite(lip["generated"]) and -1.0 <= lip["ground_truth"] <= 1.0
