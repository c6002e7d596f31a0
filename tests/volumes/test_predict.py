"""segdino.volumes.predict: whole-volume prediction on the source grid."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import ConfigError  # noqa: E402
from segdino.volumes import (  # noqa: E402
    Volume,
    ct_window,
    resolve_axis,
    volume_settings,
)
from tests.volumes.files import synthetic_affine, _case_arrays  # noqa: E402


def test_predict_volume_lands_on_the_source_grid(tmp_path, tiny_model):
    from segdino.volumes import predict_volume

    tiny_model.config.volume = volume_settings(ct_window("abdomen"), axis="axial", context=1)
    image, _ = _case_arrays(4, shape=(20, 24, 7))
    aff = synthetic_affine()
    vol = Volume(image, aff)
    a = resolve_axis("axial", aff)
    pred = predict_volume(tiny_model, vol, batch_size=3)
    assert pred.shape == vol.shape and pred.dtype == np.uint8
    assert set(np.unique(pred)) == {0, 1}  # a random model: both labels occur, so the check below bites
    # The same voxels stored with the slice axis first: "axial" follows the affine, so each
    # slice is the same picture and the labels come back identical, voxel for voxel.
    moved = np.moveaxis(image, a, 0)
    aff2 = aff.copy()
    aff2[:3, :3] = aff[:3, [a] + [i for i in range(3) if i != a]]
    assert resolve_axis("axial", aff2) == 0
    np.testing.assert_allclose(Volume(moved, aff2).world((3, 5, 2)),
                               vol.world(np.insert([5, 2], a, 3)), atol=1e-9)
    pred2 = predict_volume(tiny_model, Volume(moved, aff2), batch_size=4)
    np.testing.assert_array_equal(np.moveaxis(pred2, 0, a), pred)
    tiny_model.config.volume = None
    with pytest.raises(ConfigError, match="trained on 2D"):
        predict_volume(tiny_model, vol)
