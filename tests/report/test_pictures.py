"""Case pictures: contour colours, overlay thickness, the worst slice of a volume."""

import numpy as np
import pytest

from segdino import DataError
from segdino.report import BOTH_COLOUR, GT_COLOUR, PRED_COLOUR, contour, overlay, worst_slice

from tests.report.conftest import square


def test_contour_and_overlay_colours():
    gt = square((12, 12), 2, 2, 5)
    edge = contour(gt)
    assert edge.sum() == 16 and not edge[4, 4] and edge[2, 2]
    pred = square((12, 12), 2, 4, 5)
    img = np.full((12, 12, 3), 50, dtype=np.uint8)
    out = overlay(img, gt, pred)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    assert tuple(out[4, 2]) == GT_COLOUR  # GT left edge only
    assert tuple(out[4, 8]) == PRED_COLOUR  # prediction right edge only
    assert tuple(out[2, 5]) == BOTH_COLOUR  # shared top edge
    assert tuple(out[4, 5]) == (50, 50, 50)  # interior untouched
    assert tuple(img[4, 2]) == (50, 50, 50)  # input not modified
    grey = overlay(np.linspace(-1000, 400, 144).reshape(12, 12), gt, pred)
    assert grey.shape == (12, 12, 3) and grey[..., 0].max() == 255
    with pytest.raises(DataError, match="same height and width"):
        overlay(img, gt[:10], pred)


def test_overlay_thickens_on_large_images():
    gt = square((1080, 1920), 300, 300, 200)
    out = overlay(np.zeros((1080, 1920, 3), np.uint8), gt, gt)
    # A 5-pixel-wide line across the square's top edge (rows 296..304 at most).
    column = np.all(out[:, 400] == BOTH_COLOUR, axis=-1)
    assert 4 <= column[280:320].sum() <= 9


def test_worst_slice():
    gt = np.zeros((6, 8, 8), dtype=np.uint8)
    gt[1:5, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[3, 0:8, 0:3] = 1  # most wrong voxels on slice 3
    assert worst_slice(pred, gt, axis=0) == 3
    assert worst_slice(np.moveaxis(pred, 0, 2), np.moveaxis(gt, 0, 2), axis=2) == 3
    assert worst_slice(gt, gt) == 1  # no error: most foreground, lowest index
    assert worst_slice(np.zeros_like(gt), np.zeros_like(gt)) == 3
    with pytest.raises(DataError):
        worst_slice(gt[0], gt[0])
