"""Non-official model configurations: any motion/audio width, block size and first-clip length
stream end to end; flow-transformer-only checkpoints round-trip strictly."""

from __future__ import annotations

import json

import pytest
import torch

from avatarforcing.engine.checkpoint_format import load_flow_transformer, save_flow_transformer
from avatarforcing.engine.checkpoint_io import CheckpointError
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream, generate

SMALL = dict(dim_w=16, dim_a=80, dim_h=128, num_heads=4, transformer_depth=2, sec=1, num_frames_per_block=4)


def _random_transformer(cfg: ModelConfig, seed: int = 0) -> FlowTransformer:
    torch.manual_seed(seed)
    tf = FlowTransformer(cfg).eval()
    with torch.no_grad():  # zero-initialised gates would hide bugs: randomise every parameter
        for p in tf.parameters():
            p.normal_(0, 0.2)
    return tf


def _conditions(cfg: ModelConfig, frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, frames, cfg.dim_a, generator=g)
    u = torch.randn(1, frames, cfg.dim_a, generator=g)
    r = torch.randn(1, frames, cfg.dim_w, generator=g)
    return a, u, r


def _stream(tf: FlowTransformer, seed: int = 7) -> MotionStream:
    r_s = torch.randn(1, tf.cfg.dim_w, generator=torch.Generator().manual_seed(3))
    return MotionStream(tf, r_s, FlowMatchingEulerSampler(4), GuidanceScales(2.0, 1.0), seed=seed)


def test_derived_lengths_of_a_small_config():
    cfg = ModelConfig(**SMALL)
    assert (cfg.clip_frames, cfg.block_frames, cfg.window_frames) == (25, 4, 6)
    assert (cfg.self_cache_len, cfg.cross_cache_len) == (19, 2)
    assert cfg.official_layout_problems()  # not loadable with the released weights
    assert ModelConfig.official().official_layout_problems() == []


def test_small_config_streams_many_blocks_and_resumes_bit_exactly(tmp_path):
    cfg = ModelConfig(**SMALL)
    tf = _random_transformer(cfg)
    frames = 25 + 4 * 20 + 3  # first clip, 20 blocks, a partial block
    a, u, r = _conditions(cfg, frames)
    one_shot = generate(_stream(tf), a, u, r)
    assert one_shot.shape == (1, frames, cfg.dim_w)
    assert torch.isfinite(one_shot).all()

    stream = _stream(tf)
    stream.push(a[:, :61], u[:, :61], r[:, :61])
    first = [b for b in stream.pull()]
    assert [b.start for b in first] == [0, 25, 29, 33, 37, 41, 45, 49, 53, 57]
    assert all(b.latents.shape[1:] == (4, cfg.dim_w) for b in first[1:])
    state = tmp_path / "state.safetensors"
    stream.save_state(state)
    expected_rest = torch.cat([b.latents for b in _finish(stream, a, u, r)], dim=1)

    resumed = _stream(tf, seed=999)  # the saved generator state replaces this seed
    resumed.load_state(state)
    rest = torch.cat([b.latents for b in _finish(resumed, a, u, r)], dim=1)
    assert torch.equal(rest, expected_rest)
    assert torch.equal(torch.cat([*(b.latents for b in first), rest], dim=1), one_shot)


def _finish(stream: MotionStream, a, u, r):
    stream.push(a[:, 61:], u[:, 61:], r[:, 61:])
    stream.end()
    return stream.pull()


def test_caches_keep_their_lengths_and_conditions_matter():
    cfg = ModelConfig(**SMALL)
    tf = _random_transformer(cfg)
    a, u, r = _conditions(cfg, 45)
    stream = _stream(tf)
    stream.push(a, u, r)
    stream.pull()
    st = stream.state
    assert st.self_k.shape == (cfg.transformer_depth, 3, cfg.num_heads, cfg.self_cache_len, cfg.head_dim)
    assert st.cross_k.shape == (cfg.transformer_depth, 3, cfg.num_heads, cfg.cross_cache_len, cfg.head_dim)
    assert st.context.shape == (1, cfg.context_frames, cfg.dim_w)
    other = generate(_stream(tf), a * 0, u, r)
    assert not torch.allclose(other, generate(_stream(tf), a, u, r))


@pytest.mark.parametrize("block", [1, 2, 7])
def test_any_block_size_streams(block):
    cfg = ModelConfig(**{**SMALL, "num_frames_per_block": block, "transformer_depth": 1})
    tf = _random_transformer(cfg, seed=block)
    frames = cfg.clip_frames + 3 * block + 1
    a, u, r = _conditions(cfg, frames)
    out = generate(_stream(tf), a, u, r)
    assert out.shape == (1, frames, cfg.dim_w) and torch.isfinite(out).all()


def test_block_of_one_frame_caches_the_two_condition_frames_before_the_context():
    """With M = 1 the cross cache for the next block (frames t-3, t-2) spans the old cache and
    the window; it must equal the keys a fresh window computed for the same frames would not
    (they depend on the window), so check it by position: old cache entry 1 then window token 0."""
    cfg = ModelConfig(**{**SMALL, "num_frames_per_block": 1, "transformer_depth": 1})
    tf = _random_transformer(cfg)
    a, u, r = _conditions(cfg, cfg.clip_frames + 1)
    stream = _stream(tf)
    stream.push(a[:, : cfg.clip_frames], u[:, : cfg.clip_frames], r[:, : cfg.clip_frames])
    stream.pull()
    before = stream.state.cross_k.clone()
    stream.push(a[:, cfg.clip_frames :], u[:, cfg.clip_frames :], r[:, cfg.clip_frames :])
    stream.pull()
    after = stream.state.cross_k
    t = cfg.clip_frames
    c = tf.guidance_conditions(a[:, t - 2 : t + 1], u[:, t - 2 : t + 1], r[:, t - 2 : t + 1])
    window_k, _ = tf.condition_keys_values(c)
    torch.testing.assert_close(after[:, :, :, 0], before[:, :, :, 1], rtol=0, atol=0)
    torch.testing.assert_close(after[0, :, :, 1], window_k[0][:, :, 0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dim_a": 30}, "fusion heads"),
        ({"sec": 1, "num_frames_per_block": 23}, "too short"),
        ({"dim_w": 0}, "positive integer"),
        ({"dim_h": 100, "num_heads": 3}, "divisible by num_heads"),
        ({"attention_window": 3}, "attention_window"),
    ],
)
def test_inconsistent_configs_are_refused_clearly(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**SMALL, **changes})


def test_full_model_and_official_loading_need_the_official_layout():
    with pytest.raises(ValueError, match="dim_w = dim_a = 512"):
        AvatarForcingModel(ModelConfig(**{**SMALL, "dim_h": 32, "input_size": 64}))
    with pytest.raises(ValueError, match="50-frame first clip"):
        ModelConfig(sec=1).check_official_layout()


def test_pushing_frames_of_the_wrong_width_is_an_error():
    cfg = ModelConfig(**SMALL)
    stream = _stream(_random_transformer(cfg))
    with pytest.raises(ValueError, match="dim_a = 80"):
        stream.push(avatar_audio=torch.zeros(5, cfg.dim_w))


def test_flow_checkpoint_round_trips_and_is_strict(tmp_path):
    cfg = ModelConfig(**SMALL)
    tf = _random_transformer(cfg)
    save_flow_transformer(tf, tmp_path / "ckpt", info={"space": "default"})
    loaded, info = load_flow_transformer(tmp_path / "ckpt")
    assert info == {"space": "default"} and loaded.cfg == cfg
    for (name, p), (name2, q) in zip(tf.named_parameters(), loaded.named_parameters()):
        assert name == name2 and torch.equal(p, q)
    a, u, r = _conditions(cfg, 33)
    assert torch.equal(generate(_stream(tf), a, u, r), generate(_stream(loaded), a, u, r))

    # a config that disagrees with the stored tensors is refused, naming the parameter
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_config"]["dim_w"] = 12
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="x_embedder.proj.weight"):
        load_flow_transformer(tmp_path / "ckpt")
    config["format"] = "something-else"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="expected 'avatarforcing-flow-transformer'"):
        load_flow_transformer(tmp_path / "ckpt")
