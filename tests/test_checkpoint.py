"""Checkpoint loading (official files, wav2vec2 folder) and our own format, with files the tests write.

A small model (fixture_small + a 32-wide, 12-layer wav2vec2) stands in for the official one; the
official-size wav2vec2 layout has its own test. Every check compares tensors by name.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from avatarforcing.engine.checkpoint_matching import stripped_forms, weight_norm_alias
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.official.checkpoint import (
    CheckpointError,
    load_official_checkpoints,
    load_saved_model,
    load_wav2vec2_folder,
    save_model,
)
from avatarforcing.engine.official.model import AvatarForcingModel

TINY_WAV2VEC2 = dict(
    hidden_size=32,
    num_hidden_layers=12,  # the audio projection takes all 12 layer outputs
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    vocab_size=32,
)
MAE = "motion_autoencoder."
W2V = "audio_encoder.wav2vec2."
POS_CONV = "encoder.pos_conv_embed.conv."
PARAMETRIZED = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def tiny_wav2vec2_config(**overrides) -> transformers.Wav2Vec2Config:
    return transformers.Wav2Vec2Config(**{**TINY_WAV2VEC2, **overrides})


@pytest.fixture(scope="module")
def template() -> AvatarForcingModel:
    """A freshly initialised small model; tests load into copies of it."""
    torch.manual_seed(0)
    return AvatarForcingModel(ModelConfig.fixture_small(), tiny_wav2vec2_config())


@pytest.fixture(scope="module")
def source(template) -> AvatarForcingModel:
    """The model whose weights the test files hold: every parameter differs from `template`."""
    model = copy.deepcopy(template)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return model.refresh()


@pytest.fixture(scope="module")
def workspace(template) -> AvatarForcingModel:
    return copy.deepcopy(template)


@pytest.fixture
def target(workspace, template) -> AvatarForcingModel:
    """The model a test loads into, reset to the template's weights (cheaper than a new copy)."""
    reset(workspace, template)
    return workspace


def reset(model, template) -> None:
    with torch.no_grad():
        for param, initial in zip(model.parameters(), template.parameters()):
            param.copy_(initial)
    model.refresh()


@pytest.fixture(scope="module")
def source_outputs(source) -> list[torch.Tensor]:
    return model_outputs(source)


def params_with(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith(prefix)}


def legacy_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torch's weight-norm parametrisation keys to the checkpoint's weight_g/weight_v."""
    renamed = {}
    for key, value in tensors.items():
        for legacy, parametrized in PARAMETRIZED.items():
            key = key.replace(parametrized, legacy)
        renamed[key] = value
    return renamed


def official_mae_file(source) -> dict[str, torch.Tensor]:
    """motion_autoencoder.pth as the official code would save it: full names, buffers included."""
    return {k: v.clone() for k, v in source.state_dict().items() if k.startswith(MAE)}


def official_ft_file(source) -> dict[str, torch.Tensor]:
    tensors = params_with(source, "flow_transformer.") | params_with(source, "audio_encoder.audio_projection.")
    tensors["flow_transformer.alignment_mask"] = torch.ones(50, 50, dtype=torch.bool)  # official buffers
    tensors["flow_transformer.blocks.0.attn.freqs_cis"] = torch.ones(1024, 16, dtype=torch.complex64)
    return tensors


def write_hf_folder(folder: Path, config: transformers.Wav2Vec2Config, wav2vec2: dict[str, torch.Tensor]) -> Path:
    """A wav2vec2-base-960h-style folder: config.json + model.safetensors with CTC keys
    (`wav2vec2.` prefix, legacy weight-norm names, an unused `lm_head`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), default=str))
    tensors = {f"wav2vec2.{k}": v.contiguous() for k, v in legacy_names(wav2vec2).items()}
    tensors["lm_head.weight"] = torch.randn(config.vocab_size, config.hidden_size)
    tensors["lm_head.bias"] = torch.zeros(config.vocab_size)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def wav2vec2_params(model, prefix: str = W2V) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in params_with(model, prefix).items()}


@pytest.fixture(scope="module")
def official_files(source, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    torch.save(official_mae_file(source), root / "motion_autoencoder.pth")
    torch.save(official_ft_file(source), root / "flow_transformer.pth")
    write_hf_folder(root / "wav2vec2-base-960h", tiny_wav2vec2_config(), wav2vec2_params(source))
    return {
        "motion_autoencoder": root / "motion_autoencoder.pth",
        "flow_transformer": root / "flow_transformer.pth",
        "wav2vec2_dir": root / "wav2vec2-base-960h",
    }


def assert_same_parameters(model, reference, prefix: str = "") -> None:
    ours = dict(model.named_parameters())
    for name, value in reference.named_parameters():
        if name.startswith(prefix):
            torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)


@torch.no_grad()
def model_outputs(model) -> list[torch.Tensor]:
    """Outputs of every child on fixed inputs: decoded frames, audio features, fused conditions."""
    generator = torch.Generator().manual_seed(7)
    size = model.cfg.input_size
    image = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    frames = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    mae = model.motion_autoencoder
    identity = mae.encode_reference(image)
    decoded = mae.decode(mae.encode_motion(frames), identity)
    audio = torch.randn(1, 3 * 640, generator=generator)
    features = model.audio_encoder(audio, 3)
    motion = torch.randn(1, 3, 512, generator=generator)
    conditions = model.flow_transformer.guidance_conditions(features, features.flip(1), motion)
    return [identity.r_s, decoded, features, conditions]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]), f"{name} changed although the load was refused"


# -- official files ---------------------------------------------------------------------------


def test_official_files_round_trip(target, source, source_outputs, official_files):
    report = load_official_checkpoints(target, **official_files)

    assert report.ok and report.applied
    assert_same_parameters(target, source)
    assert set(report.loaded) == {name for name, _ in target.named_parameters()}
    assert {"lm_head.weight", "lm_head.bias"} <= set(report.source("wav2vec2").ignored)
    assert "flow_transformer.alignment_mask" in report.source("flow_transformer").ignored
    assert "motion_autoencoder.dec.convs.0.conv.blur.kernel" in report.source("motion_autoencoder").ignored
    # refresh() ran: the cached motion basis is the loaded one, not the template's
    torch.testing.assert_close(
        target.motion_autoencoder.dec.direction.basis, source.motion_autoencoder.dec.direction.basis, rtol=0, atol=0
    )
    for ours, theirs in zip(model_outputs(target), source_outputs):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_standalone_and_bare_key_names(target, source, tmp_path):
    mae = {k[len(MAE) :]: v for k, v in official_mae_file(source).items()}  # enc..., dec...
    ft = {
        k.removeprefix("flow_transformer.").removeprefix("audio_encoder."): v
        for k, v in official_ft_file(source).items()
    }
    ft |= {f"wav2vec2.{k}": v for k, v in legacy_names(wav2vec2_params(source)).items()}  # frozen copy
    assert "blocks.0.attn.qkv.weight" in ft and "x_embedder.proj.weight" in ft and "audio_projection.0.weight" in ft
    torch.save(mae, tmp_path / "mae.pth")
    torch.save(ft, tmp_path / "ft.pth")

    report = load_official_checkpoints(
        target, flow_transformer=tmp_path / "ft.pth", motion_autoencoder=tmp_path / "mae.pth"
    )

    assert report.ok
    assert_same_parameters(target, source)


def test_module_prefix_and_nested_state_dicts(target, source, tmp_path):
    mae = {"state_dict": {f"module.{k}": v for k, v in official_mae_file(source).items()}}
    ft = {
        "model": {f"module.{k}": v for k, v in official_ft_file(source).items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "epoch": 12,
    }
    torch.save(mae, tmp_path / "mae.pth")
    torch.save(ft, tmp_path / "ft.pth")
    folder = write_hf_folder(tmp_path / "w2v", tiny_wav2vec2_config(), wav2vec2_params(source))

    report = load_official_checkpoints(
        target, flow_transformer=tmp_path / "ft.pth", motion_autoencoder=tmp_path / "mae.pth", wav2vec2_dir=folder
    )

    assert report.ok
    assert_same_parameters(target, source)


def test_legacy_weight_norm_names_in_flow_transformer_file(target, template, source, tmp_path, official_files):
    """A frozen wav2vec2 copy inside flow_transformer.pth, under weight_g/weight_v, is enough
    without a folder; with a folder too, the file's copy overrides (official order)."""
    ft = official_ft_file(source) | {W2V + k: v for k, v in legacy_names(wav2vec2_params(source)).items()}
    assert W2V + POS_CONV + "weight_g" in ft
    torch.save(ft, tmp_path / "ft.pth")

    report = load_official_checkpoints(
        target, flow_transformer=tmp_path / "ft.pth", motion_autoencoder=official_files["motion_autoencoder"]
    )
    assert report.ok
    assert_same_parameters(target, source)

    reset(target, template)
    report = load_official_checkpoints(
        target,
        flow_transformer=tmp_path / "ft.pth",
        motion_autoencoder=official_files["motion_autoencoder"],
        wav2vec2_dir=official_files["wav2vec2_dir"],
    )
    assert W2V + POS_CONV + "parametrizations.weight.original0" in report.source("flow_transformer").overridden
    assert_same_parameters(target, source)


def test_missing_key_strict_refuses_and_non_strict_loads_the_rest(target, source, official_files, tmp_path):
    absent = "flow_transformer.blocks.1.mlp.fc2.weight"
    ft = official_ft_file(source)
    assert absent in ft
    del ft[absent]
    torch.save(ft, tmp_path / "ft.pth")
    files = dict(official_files, flow_transformer=tmp_path / "ft.pth")
    before = snapshot(target)

    with pytest.raises(CheckpointError) as caught:
        load_official_checkpoints(target, **files)
    message = str(caught.value)
    assert absent in message and "missing 1 parameter" in message and str(tmp_path / "ft.pth") in message
    assert caught.value.report.missing == [absent]
    assert_unchanged(target, before)

    report = load_official_checkpoints(target, **files, strict=False)
    assert report.missing == [absent] and not report.unexpected and not report.mismatched
    assert torch.equal(dict(target.named_parameters())[absent], before[absent])  # kept its value
    assert_same_parameters(target, source, prefix="flow_transformer.blocks.0.")
    assert_same_parameters(target, source, prefix=MAE)


def test_wrong_shape_names_key_and_both_shapes(target, source, official_files, tmp_path):
    key = "motion_autoencoder.enc.fc.4.weight"  # [dim_m=20, 512]
    mae = official_mae_file(source)
    mae[key] = torch.zeros(21, 512)
    torch.save(mae, tmp_path / "mae.pth")
    files = dict(official_files, motion_autoencoder=tmp_path / "mae.pth")
    before = snapshot(target)

    with pytest.raises(CheckpointError) as caught:
        load_official_checkpoints(target, **files)
    message = str(caught.value)
    assert f"{key}: file [21, 512] vs model [20, 512]" in message
    assert key not in caught.value.report.missing  # reported once, as a mismatch
    assert_unchanged(target, before)

    report = load_official_checkpoints(target, **files, strict=False)
    assert [m.key for m in report.mismatched] == [key]
    assert report.mismatched[0].file_shape == (21, 512) and report.mismatched[0].model_shape == (20, 512)
    assert torch.equal(dict(target.named_parameters())[key], before[key])
    assert_same_parameters(target, source, prefix="flow_transformer.")


def test_unexpected_key_is_refused(target, source, official_files, tmp_path):
    ft = official_ft_file(source)
    ft["flow_transformer.blocks.7.attn.qkv.weight"] = torch.zeros(3)  # a deeper model's block
    torch.save(ft, tmp_path / "ft.pth")

    with pytest.raises(CheckpointError) as caught:
        load_official_checkpoints(target, **dict(official_files, flow_transformer=tmp_path / "ft.pth"))
    assert caught.value.report.unexpected == ["flow_transformer.blocks.7.attn.qkv.weight"]
    assert "unexpected 1 key(s)" in str(caught.value)

    report = load_official_checkpoints(
        target, **dict(official_files, flow_transformer=tmp_path / "ft.pth"), strict=False
    )
    assert report.unexpected == ["flow_transformer.blocks.7.attn.qkv.weight"] and not report.missing
    assert_same_parameters(target, source)


def test_swapped_files_are_refused_with_a_hint(target, official_files):
    with pytest.raises(CheckpointError) as caught:
        load_official_checkpoints(
            target,
            flow_transformer=official_files["motion_autoencoder"],
            motion_autoencoder=official_files["flow_transformer"],
            wav2vec2_dir=official_files["wav2vec2_dir"],
        )
    message = str(caught.value)
    assert "motion_autoencoder.* (all" in message and "files swapped?" in message
    assert "belongs to motion_autoencoder" in message


def test_wav2vec2_weights_are_required_from_somewhere(target, official_files):
    with pytest.raises(CheckpointError, match="no wav2vec2_dir was given") as caught:
        load_official_checkpoints(
            target,
            flow_transformer=official_files["flow_transformer"],
            motion_autoencoder=official_files["motion_autoencoder"],
        )
    assert "audio_encoder.wav2vec2.* (all" in str(caught.value)


def test_weight_file_that_is_a_different_model_size(target, tmp_path):
    """A checkpoint of the official size (dim_h 1024) for the small model: every shape named."""
    big = {"flow_transformer.x_embedder.proj.weight": torch.zeros(1024, 1024)}
    torch.save(big, tmp_path / "ft.pth")
    torch.save({"enc.fc.4.bias": torch.zeros(20)}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointError) as caught:
        load_official_checkpoints(target, flow_transformer=tmp_path / "ft.pth", motion_autoencoder=tmp_path / "mae.pth")
    assert "flow_transformer.x_embedder.proj.weight: file [1024, 1024] vs model [128, 1024]" in str(caught.value)


class _Exploit:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.skipif(os.name != "posix", reason="the payload uses a POSIX shell command")
@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(target, official_files, tmp_path, writer):
    marker = tmp_path / "pwned"
    evil = tmp_path / "flow_transformer.pth"
    payload = {"flow_transformer.x_embedder.proj.bias": _Exploit(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))  # torch's legacy (non-zip) layout
    before = snapshot(target)

    with pytest.raises(CheckpointError, match="refusing to load .*flow_transformer.pth.*never unpickled") as caught:
        load_official_checkpoints(target, **dict(official_files, flow_transformer=evil))
    assert "system" in str(caught.value)  # the offending global is named
    assert not marker.exists()
    assert_unchanged(target, before)

    # the payload is live: an unrestricted unpickle does run it
    if writer == "torch.save":
        torch.load(evil, weights_only=False)
    else:
        pickle.loads(evil.read_bytes())
    assert marker.exists()


@pytest.mark.skipif(os.name != "posix", reason="the payload uses a POSIX shell command")
def test_malicious_pytorch_model_bin_in_wav2vec2_folder_is_refused(target, tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "w2v"
    folder.mkdir()
    (folder / "config.json").write_text(tiny_wav2vec2_config().to_json_string())
    torch.save({"wav2vec2.masked_spec_embed": _Exploit(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_wav2vec2_folder(target, folder)
    assert not marker.exists()


def test_not_a_checkpoint(target, official_files, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_official_checkpoints(target, **dict(official_files, flow_transformer=junk))
    with pytest.raises(CheckpointError, match="not found"):
        load_official_checkpoints(target, **dict(official_files, flow_transformer=tmp_path / "absent.pth"))


# -- wav2vec2 folders -------------------------------------------------------------------------


def test_wav2vec2_folder_written_by_transformers(target, tmp_path):
    """The folder format HF itself writes for a CTC model (`save_pretrained`)."""
    torch.manual_seed(3)
    ctc = transformers.Wav2Vec2ForCTC(tiny_wav2vec2_config())
    ctc.save_pretrained(tmp_path / "w2v")

    report = load_wav2vec2_folder(target, tmp_path / "w2v")

    assert report.ok and "lm_head.weight" in report.source("wav2vec2").ignored
    assert_same_parameters(target.audio_encoder.wav2vec2, ctc.wav2vec2)


def test_wav2vec2_folder_with_pytorch_model_bin(target, source, tmp_path):
    folder = tmp_path / "w2v"
    folder.mkdir()
    (folder / "config.json").write_text(tiny_wav2vec2_config().to_json_string())
    tensors = {f"wav2vec2.{k}": v for k, v in legacy_names(wav2vec2_params(source)).items()}
    del tensors["wav2vec2.masked_spec_embed"]  # SpecAugment's vector: unused at inference, may be absent
    torch.save(tensors | {"lm_head.weight": torch.zeros(32, 32)}, folder / "pytorch_model.bin")

    report = load_wav2vec2_folder(target.audio_encoder.wav2vec2, folder)

    assert report.ok and report.source("wav2vec2").absent_unused == ["masked_spec_embed"]
    for name, value in source.audio_encoder.wav2vec2.named_parameters():
        if name != "masked_spec_embed":
            torch.testing.assert_close(
                dict(target.audio_encoder.wav2vec2.named_parameters())[name], value, rtol=0, atol=0
            )


def test_wav2vec2_folder_with_sharded_safetensors(target, source, tmp_path):
    folder = write_hf_folder(tmp_path / "w2v", tiny_wav2vec2_config(), wav2vec2_params(source))
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    report = load_wav2vec2_folder(target, folder)

    assert report.ok
    assert_same_parameters(target, source, prefix=W2V)


def test_wav2vec2_folder_with_other_architecture_is_refused(target, source, official_files, tmp_path):
    folder = write_hf_folder(tmp_path / "w2v", tiny_wav2vec2_config(do_stable_layer_norm=True), wav2vec2_params(source))
    with pytest.raises(CheckpointError, match="do_stable_layer_norm True in config.json vs False in the model"):
        load_wav2vec2_folder(target, folder)

    wide = tiny_wav2vec2_config(hidden_size=48)
    folder = write_hf_folder(tmp_path / "wide", wide, wav2vec2_params(source))
    with pytest.raises(CheckpointError, match="hidden_size 48 in config.json vs 32 in the model"):
        load_official_checkpoints(target, **dict(official_files, wav2vec2_dir=folder))


def test_wav2vec2_folder_unexpected_keys_other_than_lm_head(target, source, tmp_path):
    folder = write_hf_folder(tmp_path / "w2v", tiny_wav2vec2_config(), wav2vec2_params(source))
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["quantizer.codevectors"] = torch.zeros(1, 640, 128)  # a pre-training checkpoint
    save_file(tensors, str(folder / "model.safetensors"))

    with pytest.raises(CheckpointError) as caught:
        load_wav2vec2_folder(target, folder)
    assert caught.value.report.unexpected == ["quantizer.codevectors"]


def test_parametrized_names_load_into_legacy_weight_norm(source, tmp_path):
    """The reverse spelling: a file with `parametrizations.weight.original0/1` into a model built
    with torch's legacy `weight_norm` (older torch/transformers expose weight_g/weight_v)."""
    folder = tmp_path / "w2v"
    folder.mkdir()
    (folder / "config.json").write_text(tiny_wav2vec2_config().to_json_string())
    save_file({f"wav2vec2.{k}": v for k, v in wav2vec2_params(source).items()}, str(folder / "model.safetensors"))
    model = transformers.Wav2Vec2Model(tiny_wav2vec2_config())
    conv = model.encoder.pos_conv_embed.conv
    torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates the legacy API; older stacks still use it
        torch.nn.utils.weight_norm(conv, name="weight", dim=2)
    assert {"weight_g", "weight_v"} <= {name for name, _ in conv.named_parameters()}

    report = load_wav2vec2_folder(model, folder)

    assert report.ok
    expected = wav2vec2_params(source)
    torch.testing.assert_close(conv.weight_g, expected[POS_CONV + PARAMETRIZED["weight_g"]], rtol=0, atol=0)
    torch.testing.assert_close(conv.weight_v, expected[POS_CONV + PARAMETRIZED["weight_v"]], rtol=0, atol=0)


@pytest.mark.slow
def test_official_size_wav2vec2_base_960h_layout(tmp_path):
    """The real base-960h layout: default config, CTC key names, weight_g/weight_v, lm_head [32, 768]."""
    config = transformers.Wav2Vec2Config()
    model = transformers.Wav2Vec2Model(config)
    generator = torch.Generator().manual_seed(5)
    expected = {k: torch.randn(v.shape, generator=generator) for k, v in model.named_parameters()}
    folder = write_hf_folder(tmp_path / "wav2vec2-base-960h", config, expected)
    keys = set(load_file(str(folder / "model.safetensors")))
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in keys and "lm_head.weight" in keys

    report = load_wav2vec2_folder(model, folder)

    assert report.ok and len(report.loaded) == len(expected)
    for name, value in model.named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


# -- our own format ---------------------------------------------------------------------------


def test_own_format_round_trip(source, source_outputs, tmp_path):
    save_model(source, tmp_path / "ours")

    stored = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert set(stored) == {name for name, _ in source.named_parameters()}  # no buffers
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["format"] == "avatarforcing" and config["format_version"] == 1
    assert config["model_config"] == ModelConfig.fixture_small().to_dict()
    assert config["wav2vec2_config"]["hidden_size"] == 32

    loaded = load_saved_model(tmp_path / "ours")

    assert loaded.cfg == source.cfg
    assert loaded.audio_encoder.wav2vec2.config.hidden_size == 32
    assert_same_parameters(loaded, source)
    for ours, theirs in zip(model_outputs(loaded), source_outputs):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_own_format_is_strict(source, tmp_path):
    folder = save_model(source, tmp_path / "ours")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["flow_transformer.final_layer.linear.bias"]
    tensors["flow_transformer.extra"] = torch.zeros(1)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as caught:
        load_saved_model(folder)
    assert caught.value.report.missing == ["flow_transformer.final_layer.linear.bias"]
    assert caught.value.report.unexpected == ["flow_transformer.extra"]

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_saved_model(folder)


# -- key spelling helpers ---------------------------------------------------------------------


def test_weight_norm_alias_both_ways():
    legacy = "encoder.pos_conv_embed.conv.weight_g"
    parametrized = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    assert weight_norm_alias(legacy) == parametrized
    assert weight_norm_alias(parametrized) == legacy
    assert weight_norm_alias("encoder.pos_conv_embed.conv.weight_v").endswith("parametrizations.weight.original1")
    assert weight_norm_alias("encoder.layer_norm.weight") is None


def test_wrapper_prefixes_are_stripped_in_order():
    assert stripped_forms("module._orig_mod.blocks.0.x", ("module.", "_orig_mod.")) == [
        "module._orig_mod.blocks.0.x",
        "_orig_mod.blocks.0.x",
        "blocks.0.x",
    ]


def test_random_bytes_are_reported_as_a_corrupt_file_not_as_a_pickle_with_code(target, official_files, tmp_path):
    junk = tmp_path / "flow_transformer.pth"
    junk.write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist())
    )
    before = snapshot(target)

    with pytest.raises(CheckpointError) as caught:
        load_official_checkpoints(target, **dict(official_files, flow_transformer=junk))
    message = str(caught.value)
    assert "neither safetensors nor a PyTorch checkpoint" in message and str(junk) in message
    assert "refers to Python objects" not in message
    assert_unchanged(target, before)
