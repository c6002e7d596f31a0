"""Bad model configs are refused with a ConfigError naming the field."""

import pytest

import segdino
from segdino import ConfigError


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=-2), "num_classes"),
        (dict(backbone="vitx99"), "unknown backbone"),
        (dict(decoder_dim=40), "divisible"),
        (dict(norm="layer"), "norm"),
        (dict(image_size=(100, 64)), "multiples of 16"),
        (dict(taps=(1, 2, 3)), "4 taps"),
        (dict(taps=(1, 2, 3, 12)), "outside"),
        (dict(no_such_option=1), "no_such_option"),
        (dict(sad_blocks=0), "sad_blocks"),
        (dict(sad_blocks=True), "sad_blocks"),
        (dict(sad_blocks=17), "sad_blocks"),
    ],
)
def test_bad_config_raises_config_error(kwargs, fragment):
    args = dict(backbone="vitt16", decoder_dim=32)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=fragment):
        segdino.build_model(**args)
