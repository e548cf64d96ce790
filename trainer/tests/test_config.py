"""Config: defaults, overrides, and errors that name the key."""

import pytest

from dermaedge_train.config import Config, ConfigError, load_config


def test_defaults_and_overrides_round_trip(tmp_path):
    cfg = load_config(
        None, ["train.epochs=3", "data.augment.scale=[0.5, 1.0]", "model.arch=xception"]
    )
    assert cfg.train.epochs == 3 and cfg.data.augment.scale == (0.5, 1.0)
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, Config)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  epoch: 3\n", r"train.epoch: unknown key"),
        ("train:\n  epochs: three\n", r"train.epochs: expected a int"),
        ("data:\n  image_size: 100\n", r"data.image_size: must be a multiple of 32"),
        ("task: detection\n", r"task: must be classification or segmentation"),
        ("data:\n  balance: oversample\n", r"data.balance: must be weighted_loss"),
        ("- just a list\n", r"the top level must be a mapping"),
        ("data: [1, 2\n", r"not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
