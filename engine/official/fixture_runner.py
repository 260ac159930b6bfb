"""Reference runner: reproduce a fixture of the official implementation from its inputs alone.

`run_reference(fixture_dir, out_path)` reads `fixture_meta.json` (`model_config`, optional
`wav2vec2_config_full`, `run`: init_seed, nfe, a_cfg_scale, u_cfg_scale, optional T) and
`inputs.npz`, builds the model with the formula weights, feeds the stored noise in order and
writes the fixture's arrays: avatar_wa, user_wa, user_r_d, s_r, r_s, latents_kv, frames_kv.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.pipeline import images_to_model
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream, StoredNoise, generate


@dataclass(frozen=True)
class ReferenceRun:
    """Run settings of a fixture (`fixture_meta.json` -> `run`)."""

    init_seed: int = 0
    nfe: int = 10
    a_cfg_scale: float = 2.0
    u_cfg_scale: float = 1.0
    num_frames: int | None = None  # T; derived from the audio lengths when absent


def load_meta(fixture_dir: Path) -> tuple[ModelConfig, object, ReferenceRun]:
    meta = json.loads((fixture_dir / "fixture_meta.json").read_text())
    cfg = ModelConfig.from_dict(meta["model_config"])
    w2v = None
    if "wav2vec2_config_full" in meta:
        from transformers import Wav2Vec2Config

        w2v = Wav2Vec2Config(
            **{
                k: v
                for k, v in meta["wav2vec2_config_full"].items()
                if k not in ("transformers_version", "architectures")
            }
        )
    run = meta.get("run", {})
    settings = ReferenceRun(
        init_seed=int(run.get("init_seed", 0)),
        nfe=int(run.get("nfe", meta["model_config"].get("nfe", 10))),
        a_cfg_scale=float(run.get("a_cfg_scale", 2.0)),
        u_cfg_scale=float(run.get("u_cfg_scale", 1.0)),
        num_frames=int(run["T"]) if "T" in run else None,
    )
    return cfg, w2v, settings


def stored_noise(inputs: dict[str, np.ndarray]) -> StoredNoise:
    tensors = [torch.from_numpy(inputs["noise_first_clip"])]
    if "noise_blocks" in inputs:
        tensors += [torch.from_numpy(block) for block in inputs["noise_blocks"]]
    return StoredNoise(tensors)


@torch.no_grad()
def run_reference(fixture_dir: Path | str, out_path: Path | str | None = None) -> dict[str, np.ndarray]:
    """Compute a fixture's outputs from its inputs; optionally save them as npz."""
    fixture_dir = Path(fixture_dir)
    cfg, w2v, run = load_meta(fixture_dir)
    with np.load(fixture_dir / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    model = AvatarForcingModel.with_formula_weights(cfg, run.init_seed, w2v)

    avatar_audio = torch.from_numpy(inputs["avatar_audio"]).reshape(1, -1)
    user_audio = torch.from_numpy(inputs["user_audio"]).reshape(1, -1)
    longest = max(avatar_audio.shape[1], user_audio.shape[1])
    num_frames = run.num_frames or math.ceil(longest * cfg.fps / cfg.sampling_rate)

    avatar_wa = model.audio_encoder(avatar_audio, num_frames)
    user_wa = model.audio_encoder(user_audio, num_frames)
    mae = model.motion_autoencoder
    identity = mae.encode_reference(torch.from_numpy(inputs["ref_image"]))
    user_frames = images_to_model(inputs["user_frames_uint8"])
    user_r_d = torch.cat([mae.encode_motion(chunk) for chunk in user_frames.split(50)])[None]

    stream = MotionStream(
        model.flow_transformer,
        identity.r_s,
        FlowMatchingEulerSampler(run.nfe, cfg.num_train_timestep),
        GuidanceScales(run.a_cfg_scale, run.u_cfg_scale),
        noise=stored_noise(inputs),
    )
    latents = generate(stream, avatar_wa, user_wa, user_r_d)
    frames = torch.cat([mae.decode(chunk, identity) for chunk in latents[0].split(cfg.block_frames)])
    outputs = {
        "avatar_wa": avatar_wa,
        "user_wa": user_wa,
        "user_r_d": user_r_d,
        "s_r": identity.s_r,
        "r_s": identity.r_s,
        "latents_kv": latents,
        "frames_kv": frames,
    }
    result = {k: v.float().cpu().numpy() for k, v in outputs.items()}
    if out_path is not None:
        np.savez(out_path, **result)
    return result
