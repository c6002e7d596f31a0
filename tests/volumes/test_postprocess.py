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


def _cube(lab, corner, side):
    z, y, x = corner
    lab[z:z + side, y:y + side, x:x + side] = 1


def test_the_chosen_minimum_size_removes_the_false_specks_and_keeps_every_lesion():
    from segdino.volumes.postprocess import choose_min_size

    spacing = (2.5, 0.8, 0.8)  # 1.6 mm^3 per voxel
    ref = np.zeros((12, 24, 24), dtype=np.uint8)
    _cube(ref, (1, 1, 1), 3)  # 27 voxels = 43.2 mm^3
    _cube(ref, (6, 12, 12), 4)  # 64 voxels
    pred = ref.copy()
    pred[10, 20, 2] = 1  # two specks, 1 and 2 voxels, far from both lesions
    pred[0, 20, 20:22] = 1
    choice = choose_min_size([pred], [ref], [spacing])
    # Just above the larger speck (2 voxels, 3.2 mm^3) and far below the smaller lesion (43.2 mm^3).
    assert 3.2 < choice["min_size_mm3"] < 3.3
    assert choice["removed"] == 2 and choice["lesion_f1"] == 1.0 and choice["dice"] == 1.0
    assert choice["lesion_f1_without"] == pytest.approx(2 / 3) and choice["score"] > choice["score_without"]
    kept = postprocess_labels(pred, min_size_mm3=choice["min_size_mm3"], spacing=spacing)
    assert np.array_equal(kept, ref)


def test_no_size_is_chosen_when_removing_a_false_component_costs_a_real_lesion():
    from segdino.volumes.postprocess import choose_min_size

    ref = np.zeros((12, 24, 24), dtype=np.uint8)
    _cube(ref, (1, 1, 1), 2)  # a small lesion, 8 voxels
    _cube(ref, (6, 12, 12), 4)  # 64 voxels
    pred = ref.copy()
    _cube(pred, (8, 1, 18), 3)  # a false component of 27 voxels, larger than the small lesion
    choice = choose_min_size([pred], [ref], [(1.0, 1.0, 1.0)])
    # Nothing removed: Dice 0.878, F1 0.8 (score 0.839); removing up to the false one: Dice 0.941, F1 0.667.
    assert choice["min_size_mm3"] == 0.0 and choice["removed"] == 0
    assert choice["dice"] == pytest.approx(2 * 72 / (72 + 99)) and choice["lesion_f1"] == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="one reference per prediction"):
        choose_min_size([pred], [], [])


def test_a_size_recorded_in_the_model_applies_unless_the_option_overrides_it():
    from segdino.volumes.postprocess import resolve_min_size

    settings = {"min_size_mm3": 40.0, "min_size_source": "chosen on 2 validation cases in training"}
    assert resolve_min_size(None, settings) == (40.0, "chosen on 2 validation cases in training")
    assert resolve_min_size(0, settings) == (0.0, "--min-size")
    assert resolve_min_size(12, None) == (12.0, "--min-size") and resolve_min_size(None, {}) == (None, None)
    with pytest.raises(ConfigError, match="--min-size must be a volume"):
        resolve_min_size(-3, settings)
