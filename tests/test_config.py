from pathlib import Path

import pytest

from vid3d.config import (
    STAGE_SETTINGS,
    Layer,
    Settings,
    describe,
    load_settings,
    read_config,
    read_preset,
    read_toml,
    set_layer,
    tomllib,
)
from vid3d.demo import GENERATED_CONFIG, VIDEO_CONFIG
from vid3d.errors import UserError

DEFAULT_TOML = Path(__file__).parents[1] / "configs" / "default.toml"


def test_default_toml_documents_every_setting_with_its_default():
    table = tomllib.loads(DEFAULT_TOML.read_text())
    text = DEFAULT_TOML.read_text()
    for stage in STAGE_SETTINGS:
        keys = [key for key, _, _ in describe(stage) if key not in ("input", "image")]  # no default
        assert list(table[stage]) == keys, stage
        for key, default, help in describe(stage):
            assert table[stage].get(key, default) == default, f"{stage}.{key}"
            assert help in " ".join(line.lstrip("# ") for line in text.splitlines()), f"{stage}.{key}"
    assert load_settings(read_toml(DEFAULT_TOML)) == Settings()


def test_layers_and_overrides_apply_in_order(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[frames]\ncount = 40\nmax_side = 320\n[poses]\nmatcher = "exhaustive"\n')
    settings = load_settings(
        ({"frames": {"count": 10}}, "project.toml"),
        read_toml(config),
        overrides=["frames.count=25", "poses.min_registered=0.9", "poses.mapper=global"],
    )
    assert settings.frames.count == 25
    assert settings.frames.max_side == 320
    assert settings.poses.matcher == "exhaustive"
    assert settings.poses.min_registered == 0.9
    assert settings.poses.mapper == "global"


@pytest.mark.parametrize(
    "override, words",
    [
        ("frames.cont=3", ["frames.cont", "count", "max_side"]),
        ("frame.count=3", ["[frame]", "frames", "poses"]),
        ("poses.matcher=fast", ["poses.matcher", "auto", "sequential", "exhaustive"]),
        ("frames.count=many", ["frames.count", "whole number"]),
        ("frames.count=1", ["frames.count", "at least 2"]),
        ("poses.min_registered=1.5", ["poses.min_registered", "between 0.0 and 1.0"]),
        ("frames.count", ["stage.key=value"]),
    ],
)
def test_bad_settings_name_the_key_and_what_is_allowed(override, words):
    with pytest.raises(UserError) as info:
        load_settings(overrides=[override])
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_config_files_are_named(tmp_path):
    with pytest.raises(UserError, match="missing.toml: config file not found"):
        read_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[frames\ncount = ")
    with pytest.raises(UserError, match="broken.toml: not valid TOML"):
        read_toml(broken)
    typo = tmp_path / "typo.toml"
    typo.write_text("[poses]\nmatchr = 'auto'\n")
    with pytest.raises(UserError, match=r"typo.toml: unknown setting poses.matchr"):
        load_settings(read_toml(typo))


def test_a_flag_layer_is_named_as_typed_and_set_wins_over_it():
    flag = Layer({"generate": {"frames": 1}}, "--frames 1", flag=True)
    with pytest.raises(UserError, match=r"^--frames 1: must be at least 2$"):
        load_settings(flag)
    with pytest.raises(UserError, match=r"^--set: generate.frames = 1: must be at least 2$"):
        load_settings(Layer({"generate": {"frames": 30}}, "--frames 30", flag=True), set_layer("generate.frames=1"))
    assert load_settings(flag, set_layer("generate.frames=30")).generate.frames == 30


def test_the_demo_layers_are_settings_files_beside_the_presets():
    for name in (VIDEO_CONFIG, GENERATED_CONFIG):
        assert load_settings(read_preset("fast"), read_config(name)) != load_settings(read_preset("fast"))
