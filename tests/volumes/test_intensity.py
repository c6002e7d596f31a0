"""segdino.volumes.intensity: CT windows, percentiles and the settings kept in a model config."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.config import ModelConfig  # noqa: E402
from segdino.errors import ConfigError  # noqa: E402
from segdino.volumes import (  # noqa: E402
    CT_WINDOWS,
    ct_window,
    normalize_intensity,
    parse_intensity,
    percentile_window,
    read_volume_settings,
    volume_settings,
)


def test_ct_windows_and_percentiles():
    assert CT_WINDOWS["abdomen"] == (40.0, 400.0) and CT_WINDOWS["lung"] == (-600.0, 1500.0)
    spec = ct_window("abdomen")
    assert (spec["low"], spec["high"]) == (-160.0, 240.0)
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16).reshape(1, 1, 5)
    np.testing.assert_allclose(normalize_intensity(hu, spec).ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)
    assert parse_intensity("bone") == ct_window("bone") == parse_intensity("ct:bone")
    rng = parse_intensity("ct:-100,300")
    np.testing.assert_allclose(normalize_intensity(np.array([[[100.0]]]), rng), [[[0.5]]])
    mri = np.linspace(0, 1000, 1001).reshape(7, 11, 13)
    p = percentile_window(1, 99)
    out = normalize_intensity(mri, p)
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    assert abs(float(out[3, 5, 6]) - (500 - 10) / 980) < 1e-5  # centre voxel value 500
    assert parse_intensity("mri") == percentile_window(0.5, 99.5)
    nz = normalize_intensity(np.array([[[0.0, 10.0, 20.0, 30.0]]]), percentile_window(0, 100, nonzero=True))
    np.testing.assert_allclose(nz.ravel(), [0, 0, 0.5, 1])
    for bad in ("soft", "ct:1", "ct:5,1", "percentile:50,10"):
        with pytest.raises(ConfigError):
            parse_intensity(bad)


def test_volume_settings_live_in_the_model_config():
    settings = volume_settings(ct_window("liver"), axis="axial", context=2)
    cfg = ModelConfig(backbone="vitt16", decoder_dim=32, image_size=64, volume=settings)
    back = ModelConfig.from_json(cfg.to_json())
    assert read_volume_settings(back.volume) == settings
    assert back.volume["intensity"]["low"] == -45.0 and back.volume["context"] == 2
    with pytest.raises(ConfigError):
        volume_settings(ct_window("liver"), axis="diagonal")
    with pytest.raises(ConfigError):
        volume_settings(ct_window("liver"), context=-1)
    with pytest.raises(ConfigError, match="trained on 2D"):
        read_volume_settings(None)
    with pytest.raises(ConfigError):
        read_volume_settings({"intensity": {"kind": "ct", "low": 5, "high": 1}, "axis": 2, "context": 0})
