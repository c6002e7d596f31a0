"""Training configuration: recipe defaults < config file < flags; bad files and options refused."""

import pytest

from segdino.errors import ConfigError
from segdino.train_config import resolve_config


def test_config_file_keys_are_flag_names_and_flags_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("recipe: paper\nimage-size: 64\nbatch_size: 2\nlr: 3.0e-4\n")
    cfg = resolve_config({"batch_size": 6}, str(f))
    assert cfg.recipe == "paper" and cfg.image_size == (64, 64)
    assert cfg.batch_size == 6  # flag beats file
    assert cfg.lr == 3e-4  # file beats recipe
    assert cfg.loss == "bce" and cfg.schedule == "constant" and cfg.precision == "fp32"  # recipe defaults
    segdino_cfg = resolve_config({})
    assert segdino_cfg.loss == "bce_dice" and segdino_cfg.schedule == "cosine"
    assert resolve_config({"num_classes": 3}).loss == "ce_dice"


@pytest.mark.parametrize("text, match", [
    ("epochs: ten\n", "epochs expects int"),
    ("learning_rate: 1\n", "unknown option"),
    ("- a\n- b\n", "mapping"),
    ("image-size: [1, 2, x]\n", "image-size"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_config_files_are_refused(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config({}, str(f))


@pytest.mark.parametrize("opts, match", [
    ({"resume": True, "overwrite": True}, "contradict"),
    ({"init": "a.safetensors", "backbone_weights": "b.pth"}, "contradict"),
    ({"freeze_backbone": True, "backbone_lr_scale": 0.5}, "contradict"),
    ({"image_size": 40}, "multiple of 16"),
    ({"foreground_ratio": 1.5}, "between 0 and 1"),
    ({"epochs": 0}, "--epochs must be >= 1"),
    ({"taps": "2,5,8"}, "--taps must be four"),
    ({"taps": "a,b,c,d"}, "--taps must be four"),
    ({"sad_blocks": 0}, "--sad-blocks must be >= 1"),
    ({"sad_blocks": 99}, "--sad-blocks must be at most"),
    ({"no_tpa": True, "no_sad": True}, "cannot both"),
])
def test_contradicting_or_invalid_options_are_refused(opts, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(opts)


def test_decoder_switches_from_flags_and_files_reach_the_model_options(tmp_path):
    cfg = resolve_config({"taps": "11,11,11,11", "no_tpa": True, "sad_blocks": 2})
    assert cfg.model_options() == dict(taps=(11, 11, 11, 11), no_tpa=True, no_sad=False, sad_blocks=2)
    f = tmp_path / "c.yaml"
    f.write_text("taps: [2, 5, 8, 11]\nno-sad: true\n")
    assert resolve_config({}, str(f)).model_options() == dict(taps=(2, 5, 8, 11), no_tpa=False, no_sad=True,
                                                              sad_blocks=1)
    f.write_text("no-sad: 'yes'\n")
    with pytest.raises(ConfigError, match="no-sad expects bool"):
        resolve_config({}, str(f))
    assert resolve_config({}).model_options() == dict(taps=None, no_tpa=False, no_sad=False, sad_blocks=1)
