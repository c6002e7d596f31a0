"""segdino.volumes.postprocess: the largest component and the minimum component size."""

import numpy as np
import pytest

from segdino.errors import ConfigError
from segdino.volumes.postprocess import postprocess_labels, remove_small_components


def _labels() -> np.ndarray:
    lab = np.zeros((6, 12, 12), dtype=np.uint8)
    lab[1:4, 1:5, 1:5] = 1  # 48 voxels
    lab[0, 10, 10] = 1  # 1 voxel, one slice
    lab[2:4, 8:10, 1:3] = 2  # 8 voxels of class 2
    lab[5, 0:2, 8:10] = 2  # 4 voxels
    return lab


def test_small_components_of_each_class_are_removed_and_the_rest_kept():
    lab = _labels()
    out = remove_small_components(lab, 5)
    assert out[0, 10, 10] == 0 and not out[5].any()
    assert (out == 1).sum() == 48 and (out == 2).sum() == 8
    assert lab[0, 10, 10] == 1  # the input is left as it was
    assert remove_small_components(lab, 1) is lab


def test_the_minimum_size_is_a_volume_in_cubic_millimetres_on_the_voxel_grid():
    lab = _labels()
    spacing = (2.5, 0.8, 0.8)  # 1.6 mm^3 per voxel: 4 voxels = 6.4 mm^3, 8 voxels = 12.8 mm^3
    assert (postprocess_labels(lab, num_classes=3, min_size_mm3=6.4, spacing=spacing) == 2).sum() == 12
    kept = postprocess_labels(lab, num_classes=3, min_size_mm3=6.5, spacing=spacing)
    assert (kept == 2).sum() == 8 and (kept == 1).sum() == 48
    # Binary tasks treat every non-zero label as one class; with the largest component as well.
    both = postprocess_labels(lab != 0, largest_component=True, num_classes=1, min_size_mm3=1.0, spacing=spacing)
    assert both.sum() == 48
    for bad in (-1, float("nan"), "x"):
        with pytest.raises(ConfigError, match="--min-size must be a volume in mm"):
            postprocess_labels(lab, num_classes=3, min_size_mm3=bad, spacing=spacing)
