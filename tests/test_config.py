"""Configuration: defaults, TOML, overrides, one clear error per bad value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.api.options import coerce, resolve_options
from avatarforcing.plugin.api.types import OptionSpec
from avatarforcing.plugin.app.config import (
    CONFIG_ENV,
    AppConfig,
    ModelSettings,
    SessionSettings,
    load_config,
    parse_override,
    to_toml,
)
from avatarforcing.plugin.app.paths import WEIGHTS_ENV, default_weights_dir, weight_paths


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value


# -- defaults ----------------------------------------------------------------------------------
def test_every_option_has_a_default_and_help():
    for section in (ModelSettings, SessionSettings):
        for f in dataclasses.fields(section):
            assert f.default is not dataclasses.MISSING, f.name
            assert f.metadata.get("help"), f.name
    config = load_config(environ={})
    assert config == AppConfig()
    assert config.model.nfe == 10 and config.model.a_cfg_scale == 2.0
    assert config.model.u_cfg_scale == 1.0 and config.model.device == "auto"
    assert config.sources.avatar_audio.use == "microphone"
    assert config.sinks.use == ()


def test_no_file_and_no_environment_gives_defaults(tmp_path):
    assert load_config(None, environ={CONFIG_ENV: ""}) == AppConfig()


# -- TOML --------------------------------------------------------------------------------------
TOML = """
[model]
preset = "fixture_small"
nfe = 6
a_cfg_scale = 1
device = "cuda:1"
threads = 2

[session]
portrait = "me.jpg"

[sources.avatar_audio]
use = "audio-file"
path = "voice.wav"
realtime = true

[sources.user_video]
use = ""

[render]
use = "sketch"
style = "ink"

[sinks]
use = ["png-dir", "obs"]

[sinks.png-dir]
dir = "out"

[plugins.example]
overlay = true
"""


def test_toml_file_is_read_and_typed(tmp_path):
    config = load_config(write(tmp_path / "c.toml", TOML), environ={})
    assert config.model.preset == "fixture_small"
    assert config.model.nfe == 6
    assert config.model.a_cfg_scale == 1.0 and isinstance(config.model.a_cfg_scale, float)
    assert config.model.device == "cuda:1" and config.model.threads == 2
    assert config.session.portrait == "me.jpg"
    assert config.sources.avatar_audio.use == "audio-file"
    assert dict(config.sources.avatar_audio.options) == {"path": "voice.wav", "realtime": True}
    assert config.sources.user_audio.use == "loopback"  # default kept
    assert config.sources.user_video.use == ""
    assert config.render.use == "sketch" and dict(config.render.options) == {"style": "ink"}
    assert config.sinks.use == ("png-dir", "obs")
    assert dict(config.sinks.options_for("png-dir")) == {"dir": "out"}
    assert dict(config.sinks.options_for("obs")) == {}
    assert config.plugins == {"example": {"overlay": True}}
    assert config.source_file == str(tmp_path / "c.toml")


def test_environment_names_the_config_file(tmp_path):
    path = write(tmp_path / "env.toml", "[model]\nnfe = 4\n")
    assert load_config(environ={CONFIG_ENV: str(path)}).model.nfe == 4
    # an explicit path wins over the environment
    other = write(tmp_path / "other.toml", "[model]\nnfe = 8\n")
    assert load_config(other, environ={CONFIG_ENV: str(path)}).model.nfe == 8


def test_layers_file_then_set_then_flags(tmp_path):
    path = write(tmp_path / "c.toml", "[model]\nnfe = 4\nthreads = 3\n")
    config = load_config(
        path,
        ["model.nfe=6", "model.threads=5", "sources.avatar_audio.path=a.wav"],
        environ={},
    )
    assert (config.model.nfe, config.model.threads) == (6, 5)
    config = load_config(path, ["model.nfe=6", ("model.nfe", 8)], environ={})
    assert config.model.nfe == 8
    assert load_config(path, ["sinks.use=a, b"], environ={}).sinks.use == ("a", "b")
    assert load_config(path, ["sinks.use="], environ={}).sinks.use == ()


def test_set_values_are_converted_to_the_option_type():
    config = load_config(
        overrides=[
            "model.a_cfg_scale=1.5",
            "model.seed=7",
            "session.portrait=12",  # a string option keeps the text
            "render.use=sketch",
            "plugins.example.overlay=true",  # free-form: stays a string for the plugin
        ],
        environ={},
    )
    assert config.model.a_cfg_scale == 1.5 and config.model.seed == 7
    assert config.session.portrait == "12"
    assert config.plugins["example"]["overlay"] == "true"


def test_to_toml_round_trips(tmp_path):
    config = load_config(write(tmp_path / "c.toml", TOML), environ={})
    again = load_config(write(tmp_path / "again.toml", to_toml(config)), environ={})
    assert dataclasses.replace(again, source_file="") == dataclasses.replace(config, source_file="")


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, option, words",
    [
        ("model.nfe=abc", "model.nfe", "integer in [3, 1000]"),
        ("model.nfe=2", "model.nfe", "integer in [3, 1000]"),
        ("model.nfe=2.5", "model.nfe", "integer"),
        ("model.a_cfg_scale=high", "model.a_cfg_scale", "number in [0.0, 50.0]"),
        ("model.a_cfg_scale=nan", "model.a_cfg_scale", "number"),
        ("model.u_cfg_scale=-1", "model.u_cfg_scale", "number in [0.0, 50.0]"),
        ("model.preset=huge", "model.preset", "one of 'official', 'fixture_small'"),
        ("model.device=gpu", "model.device", "auto, cpu, mps, cuda or cuda:N"),
        ("model.threads=-1", "model.threads", "integer in [0, 1024]"),
        ("model.nfee=3", "model.nfee", "did you mean 'nfe'"),
        ("modle.nfe=3", "modle", "did you mean 'model'"),
        ("sources.mic.use=x", "sources.mic", "unknown source kind"),
        ("sources.avatar_audio.use=Bad Name", "sources.avatar_audio.use", "lower case"),
        ("sinks.use=a,a", "sinks.use", "listed twice"),
        ('sinks.use=["a"]', "sinks.use", "NAME,NAME"),
        ("sinks.x=1", "sinks.x", "sinks.use or sinks.NAME.KEY"),
        ("model.nfe.x=1", "model.nfe.x", "expected model.KEY"),
        ("render.a.b=1", "render.a.b", "expected render.KEY"),
        ("plugins.example=1", "plugins.example", "plugins.NAME.KEY"),
        ("model=3", "--set", "SECTION.KEY=VALUE"),
        ("model.nfe", "--set", "SECTION.KEY=VALUE"),
    ],
)
def test_bad_override_is_one_clear_error(override, option, words):
    error = config_error(overrides=[override])
    assert error.option == option
    assert str(error).startswith(f"{option}: ")
    assert words in str(error)


@pytest.mark.parametrize(
    "text, option, words",
    [
        ('[model]\nnfe = "many"\n', "model.nfe", "integer"),
        ("[model]\nnfe = true\n", "model.nfe", "integer"),
        ("[model]\nthreads = 1.5\n", "model.threads", "integer"),
        ("[session]\nportrait = 3\n", "session.portrait", "a string"),
        ('[model]\ndevice = ["cpu"]\n', "model.device", "string"),
        ("model = 3\n", "model", "expected a table"),
        ("[extra]\nx = 1\n", "extra", "unknown section"),
        ('[sources]\navatar_audio = "mic"\n', "sources.avatar_audio", "expected a table"),
        ("[sources.avatar_audio]\nuse = 3\n", "sources.avatar_audio.use", "a string"),
        ("[sources.avatar_audio.sub]\nx = 1\n", "sources.avatar_audio.sub", "got a table"),
        ('[sinks]\nuse = "png"\n', "sinks.use", None),
        ("[sinks]\nuse = [1]\n", "sinks.use", "a list of strings"),
        ("[sinks]\nBAD = {}\n", "sinks.BAD", "lower case"),
        ("[sinks]\npng = 1\n", "sinks.png", "expected a table"),
        ("[plugins]\nexample = 1\n", "plugins.example", "expected a table"),
    ],
)
def test_bad_file_value_is_one_clear_error(tmp_path, text, option, words):
    path = write(tmp_path / "c.toml", text)
    if words is None:  # a single string is accepted as a one-element list
        assert load_config(path, environ={}).sinks.use == ("png",)
        return
    error = config_error(path=path)
    assert error.option == option
    assert words in str(error)


def test_missing_and_invalid_files_are_one_clear_error(tmp_path):
    assert "not found" in str(config_error(path=tmp_path / "nope.toml"))
    assert "is a directory" in str(config_error(path=tmp_path))
    bad = write(tmp_path / "bad.toml", "[model\nnfe = 3\n")
    message = str(config_error(path=bad))
    assert "not valid TOML" in message and "line 1" in message


def test_parse_override():
    assert parse_override("model.nfe=6") == ("model.nfe", "6")
    assert parse_override("session.portrait=a=b.jpg") == ("session.portrait", "a=b.jpg")
    assert parse_override(" sinks.use = ") == ("sinks.use", " ")


# -- option specs of plugins -------------------------------------------------------------------
SPECS = (
    OptionSpec(
        "path", str, "", "file to read", required=True, check=lambda v: None if v.endswith(".wav") else "not a WAV file"
    ),
    OptionSpec("rate", int, 16000, "sample rate", minimum=8000, maximum=48000),
    OptionSpec("gain", float, 1.0, "gain"),
    OptionSpec("loop", bool, False, "loop"),
    OptionSpec("mode", str, "a", "mode", choices=("a", "b")),
)


def test_resolve_options_fills_defaults_and_converts_strings():
    values = resolve_options(
        "sources.avatar_audio", SPECS, {"path": "x.wav", "rate": "22050", "gain": 2, "loop": "yes"}
    )
    assert values == {"path": "x.wav", "rate": 22050, "gain": 2.0, "loop": True, "mode": "a"}


@pytest.mark.parametrize(
    "given, option, words",
    [
        ({}, "where.path", "required (file to read)"),
        ({"path": ""}, "where.path", "required"),
        ({"path": "x.mp3"}, "where.path", "not a WAV file"),
        ({"path": "x.wav", "rate": "fast"}, "where.rate", "integer in [8000, 48000]"),
        ({"path": "x.wav", "rate": 4000}, "where.rate", "integer in [8000, 48000]"),
        ({"path": "x.wav", "loop": "maybe"}, "where.loop", "boolean"),
        ({"path": "x.wav", "mode": "c"}, "where.mode", "one of 'a', 'b'"),
        ({"path": "x.wav", "gian": 2}, "where.gian", "did you mean 'gain'"),
    ],
)
def test_resolve_options_errors_name_the_option(given, option, words):
    with pytest.raises(ConfigError) as info:
        resolve_options("where", SPECS, given)
    assert info.value.option == option and words in str(info.value)


def test_option_spec_rejects_a_default_of_the_wrong_type():
    with pytest.raises(ValueError, match="not a int"):
        OptionSpec("n", int, "3", "count")
    with pytest.raises(ValueError, match="not a int"):
        OptionSpec("n", int, True, "count")
    with pytest.raises(ValueError, match="type must be"):
        OptionSpec("n", list, [], "count")
    assert OptionSpec("x", float, 1, "int default for a float").default == 1


def test_coerce_bool_and_tuple():
    assert coerce("o", "Off", bool) is False and coerce("o", "1", bool) is True
    assert coerce("o", ["a"], tuple) == ("a",)
    with pytest.raises(ConfigError):
        coerce("o", 1, bool)


# -- weights location --------------------------------------------------------------------------
def test_weight_paths_precedence(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert default_weights_dir(env) == tmp_path / "cache" / "avatarforcing" / "weights"
    env[WEIGHTS_ENV] = str(tmp_path / "w")
    paths = weight_paths(None, env)
    assert paths.directory == tmp_path / "w"
    assert paths.flow_transformer == tmp_path / "w" / "flow_transformer.pth"
    assert paths.motion_autoencoder == tmp_path / "w" / "motion_autoencoder.pth"
    assert paths.wav2vec2 == tmp_path / "w" / "wav2vec2-base-960h"
    model = load_config(
        overrides=[f"model.checkpoint_dir={tmp_path / 'c'}", f"model.wav2vec2={tmp_path / 'w2v'}"],
        environ={},
    ).model
    paths = weight_paths(model, env)
    assert paths.directory == tmp_path / "c"
    assert paths.flow_transformer == tmp_path / "c" / "flow_transformer.pth"
    assert paths.wav2vec2 == tmp_path / "w2v"
