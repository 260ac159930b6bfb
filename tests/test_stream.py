"""Streaming generator: incremental pushes == one-shot, resumable state, sessions of any length."""

from __future__ import annotations

import pytest
import torch

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.official.formula_weights import apply_formula_weights
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream, StreamState, generate


@pytest.fixture(scope="module")
def transformer():
    tf = FlowTransformer(ModelConfig.fixture_small()).eval()
    apply_formula_weights(tf, 0, prefix="flow_transformer.")
    return tf


def _conditions(frames: int, seed: int = 3, user_motion_frames: int | None = None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, frames, 512, generator=g)
    u = torch.randn(1, frames, 512, generator=g)
    r = torch.randn(1, user_motion_frames or frames, 512, generator=g)
    return a, u, r


def _stream(transformer, nfe=6, seed=11, **kw):
    r_s = torch.randn(1, 512, generator=torch.Generator().manual_seed(5))
    return MotionStream(transformer, r_s, FlowMatchingEulerSampler(nfe), GuidanceScales(2.0, 1.0), seed=seed, **kw)


def test_incremental_pushes_equal_one_shot(transformer):
    a, u, r = _conditions(97)
    reference = generate(_stream(transformer), a, u, r)
    assert reference.shape == (1, 97, 512)

    stream = _stream(transformer)
    sizes = torch.Generator().manual_seed(0)
    pos = {"a": 0, "u": 0, "r": 0}
    outputs, blocks_seen = [], []
    while min(pos.values()) < 97:
        for key, src in (("a", a), ("u", u), ("r", r)):
            n = int(torch.randint(1, 9, (1,), generator=sizes))
            chunk = src[:, pos[key] : pos[key] + n]
            pos[key] += chunk.shape[1]
            if chunk.shape[1]:
                stream.push(**{{"a": "avatar_audio", "u": "user_audio", "r": "user_motion"}[key]: chunk})
        for block in stream.pull():
            blocks_seen.append((block.start, pos["a"]))
            outputs.append(block.latents)
    stream.end()
    outputs += [b.latents for b in stream.pull()]
    assert torch.equal(torch.cat(outputs, dim=1), reference)
    # blocks come out as soon as their conditions exist: never later than 10 frames after
    for start, pushed in blocks_seen:
        needed = 50 if start == 0 else start + 10
        assert pushed < needed + 9


def test_blocks_wait_for_every_condition_stream(transformer):
    a, u, r = _conditions(60)
    stream = _stream(transformer)
    stream.push(a, u, r[:, :49])
    assert stream.pull() == []  # user motion lacks frame 49
    stream.push(user_motion=r[:, 49:50])
    (block,) = stream.pull()
    assert (block.start, block.stop) == (0, 50)


def test_state_saves_and_resumes_bit_exactly(transformer, tmp_path):
    a, u, r = _conditions(90)
    reference = generate(_stream(transformer), a, u, r)

    first = _stream(transformer)
    first.push(a[:, :70], u[:, :70], r[:, :70])
    head = torch.cat([b.latents for b in first.pull()], dim=1)
    first.save_state(tmp_path / "state.safetensors")
    st = StreamState.load(tmp_path / "state.safetensors")
    assert st.next_frame == 70 and st.self_k.shape == (2, 3, 4, 38, 32)

    resumed = _stream(transformer, seed=999)  # the saved generator state overrides the seed
    resumed.load_state(tmp_path / "state.safetensors")
    resumed.push(a[:, 70:], u[:, 70:], r[:, 70:])
    resumed.end()
    tail = torch.cat([b.latents for b in resumed.pull()], dim=1)
    assert torch.equal(torch.cat((head, tail), dim=1), reference)


def test_positions_shifted_by_tens_of_thousands_give_the_same_latents(transformer):
    a, u, r = _conditions(110)
    local = generate(_stream(transformer), a, u, r)
    shifted = generate(_stream(transformer, rope_offset=40_000), a, u, r)
    absolute = generate(_stream(transformer, rope_offset=0), a, u, r)
    torch.testing.assert_close(absolute, local, atol=1e-4, rtol=0)
    torch.testing.assert_close(shifted, local, atol=1e-4, rtol=0)
    assert not torch.equal(shifted, local)  # the shifted run really used other angles


def test_session_runs_past_the_official_1024_position_table():
    tiny = FlowTransformer(ModelConfig(input_size=64, dim_h=32, num_heads=2, transformer_depth=1)).eval()
    apply_formula_weights(tiny, 1, prefix="flow_transformer.")
    frames = 1100  # 44 s at 25 fps; the official RoPE table ends at 1024 positions
    a, u, r = _conditions(frames)
    stream = _stream(tiny, nfe=3)
    latents = []
    for start in range(0, frames, 50):
        stream.push(a[:, start : start + 50], u[:, start : start + 50], r[:, start : start + 50])
        latents += [b.latents for b in stream.pull()]
    stream.end()
    latents += [b.latents for b in stream.pull()]
    out = torch.cat(latents, dim=1)
    assert out.shape == (1, frames, 512)
    assert torch.isfinite(out).all()
    assert stream.state.buffers["avatar_audio"].frames.shape[1] <= 12  # buffers stay bounded


def test_short_user_track_is_replicate_padded(transformer):
    a, u, r = _conditions(75, user_motion_frames=30)
    out = generate(_stream(transformer), a, u, r)
    assert out.shape == (1, 75, 512) and torch.isfinite(out).all()


def test_missing_user_motion_is_the_null_condition(transformer):
    a, u, _ = _conditions(55)
    stream = _stream(transformer)
    stream.push(a, u)
    stream.end()
    out = torch.cat([b.latents for b in stream.pull()], dim=1)
    explicit = generate(_stream(transformer), a, u, torch.zeros(1, 55, 512))
    assert torch.equal(out, explicit)


def test_guidance_changes_apply_from_the_next_block(transformer):
    a, u, r = _conditions(70)
    base = generate(_stream(transformer), a, u, r)
    stream = _stream(transformer)
    stream.push(a[:, :60], u[:, :60], r[:, :60])
    first = stream.pull()
    assert first[-1].stop == 60
    stream.set_guidance(GuidanceScales(0.0, 0.0))
    stream.push(a[:, 60:], u[:, 60:], r[:, 60:])
    stream.end()
    rest = stream.pull()
    out = torch.cat([b.latents for b in first + rest], dim=1)
    assert torch.equal(out[:, :60], base[:, :60])
    assert not torch.allclose(out[:, 60:], base[:, 60:])


def test_pushing_after_end_is_an_error(transformer):
    stream = _stream(transformer)
    stream.end("avatar_audio")
    with pytest.raises(RuntimeError, match="avatar_audio stream already ended"):
        stream.push(avatar_audio=torch.zeros(1, 1, 512))


def test_motion_scale_converts_motion_in_and_out(transformer):
    """With `motion_scale` s the stream divides the reference and user motion by s on the way in
    and multiplies the sampled motion by s on the way out: the same as an unscaled stream fed
    motion / s, times s."""
    import dataclasses

    scale = torch.linspace(0.05, 3.0, 512)
    scaled = FlowTransformer(dataclasses.replace(ModelConfig.fixture_small(), motion_scale=tuple(scale.tolist())))
    scaled.load_state_dict(transformer.state_dict())
    scaled.eval()
    a, u, r = _conditions(62)
    r_s = torch.randn(1, 512, generator=torch.Generator().manual_seed(5))

    def run(model, reference, user_motion):
        stream = MotionStream(model, reference, FlowMatchingEulerSampler(6), GuidanceScales(2.0, 1.0), seed=11)
        return generate(stream, a, u, user_motion)

    out = run(scaled, r_s, r)
    expected = run(transformer, r_s / scale, r / scale) * scale
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, run(transformer, r_s, r), atol=1e-3)


def test_motion_scale_must_match_the_motion_width():
    import dataclasses

    with pytest.raises(ValueError, match="motion_scale needs 512 positive numbers"):
        dataclasses.replace(ModelConfig.fixture_small(), motion_scale=(1.0, 2.0))
    cfg = dataclasses.replace(ModelConfig.fixture_small(), motion_scale=[0.5] * 512)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg and isinstance(cfg.motion_scale, tuple)
