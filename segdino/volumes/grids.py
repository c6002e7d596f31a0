"""Whether a prediction lies on its label's voxel grid, and bringing it there.

A prediction must lie on its label's voxel grid: same shape and the same affine, voxel centres
within 1% of a voxel. A prediction stored in another axis order or direction of the same grid
(e.g. reoriented to RAS by a viewer) is brought back to the label's order exactly, without
resampling; any other grid is an error, or with ``resample`` sampled onto the label's grid
(nearest neighbour through the two affines).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from ..resample import resample_to_grid
from .io import Volume

#: Voxel centres of a prediction and its label may differ by this fraction of the smallest voxel side.
GRID_TOLERANCE = 0.01


def _corners(shape) -> np.ndarray:
    """(8, 3) voxel indices of the corner voxels of a grid of ``shape``."""
    n = np.asarray(shape, dtype=np.float64) - 1
    return np.array([[i * n[0], j * n[1], k * n[2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _grid_offset(affine_a: np.ndarray, affine_b: np.ndarray, shape) -> float:
    """Largest distance in mm between where two affines put the corner voxels of ``shape``."""
    c = _corners(shape)
    return float(np.max(np.linalg.norm(_world(affine_a, c) - _world(affine_b, c), axis=1)))


def _tolerance(label: Volume) -> float:
    return GRID_TOLERANCE * float(np.min(label.spacing))


def _reorder_to(pred: Volume, label: Volume) -> np.ndarray | None:
    """``pred``'s array in the label's axis order, when ``pred`` is the label's grid stored with
    permuted and/or flipped axes; else None."""
    t = np.linalg.solve(label.affine, pred.affine)  # pred voxel index -> label voxel index
    r = t[:3, :3]
    rr = np.round(r)
    if not np.allclose(r, rr, atol=1e-3):
        return None
    if sorted(np.abs(rr).sum(axis=0).tolist()) != [1, 1, 1] or sorted(np.abs(rr).sum(axis=1).tolist()) != [1, 1, 1]:
        return None
    order = [int(np.flatnonzero(rr[i])[0]) for i in range(3)]  # label axis i <- pred axis order[i]
    arr = np.transpose(pred.array, order)
    if arr.shape != label.shape:
        return None
    for i in range(3):
        if rr[i, order[i]] < 0:
            arr = np.flip(arr, axis=i)
    # The voxel the reordered array puts at each label corner must sit where that label voxel is.
    lab = _corners(label.shape)
    src = np.empty_like(lab)
    for i in range(3):
        j = order[i]
        src[:, j] = lab[:, i] if rr[i, j] > 0 else pred.shape[j] - 1 - lab[:, i]
    gap = np.linalg.norm(_world(pred.affine, src) - _world(label.affine, lab), axis=1)
    if float(np.max(gap)) > _tolerance(label):
        return None
    return np.ascontiguousarray(arr)


def on_label_grid(pred: Volume, label: Volume, what: str = "prediction") -> tuple[np.ndarray, bool]:
    """``pred``'s labels on ``label``'s voxel grid (``what`` names ``pred`` in messages).

    Returns:
        ``(array, reordered)``: the (I, J, K) labels indexed like ``label.array``, and whether
        the prediction's axes had to be permuted or flipped to get there.

    Raises:
        DataError naming both files when the grids differ (shape, spacing, origin or
        direction), with the largest distance between their voxel centres in mm.
    """
    if pred.shape == label.shape and _grid_offset(pred.affine, label.affine, label.shape) <= _tolerance(label):
        return np.asarray(pred.array), False
    arr = _reorder_to(pred, label)
    if arr is not None:
        return arr, True
    where = f"{pred.path or what} vs label {label.path or ''}".rstrip()
    if pred.shape != label.shape and sorted(pred.shape) != sorted(label.shape):
        raise DataError(f"{where}: the {what} has shape {pred.shape}, the label {label.shape}; "
                        f"a {what} must be on its label's voxel grid")
    off = _grid_offset(pred.affine, label.affine, label.shape) if pred.shape == label.shape else math.nan
    detail = (f"spacing {np.round(pred.spacing, 4).tolist()} vs {np.round(label.spacing, 4).tolist()} mm, "
              f"origin {np.round(pred.origin, 3).tolist()} vs {np.round(label.origin, 3).tolist()} mm")
    if math.isfinite(off):
        detail += f"; voxel centres up to {off:.3g} mm apart (tolerance {_tolerance(label):.3g} mm)"
    raise DataError(f"{where}: the {what}'s geometry (affine) differs from the label's: {detail}; "
                    f"a {what} must be on its label's voxel grid (resample it onto the label first)")


def prediction_on_label_grid(pred: Volume, label: Volume, resample: bool = False) -> tuple[np.ndarray, bool, bool]:
    """:func:`on_label_grid`, or with ``resample`` a prediction on another grid sampled onto the
    label's (nearest neighbour through the two affines). Returns ``(array, moved, resampled)``."""
    try:
        arr, moved = on_label_grid(pred, label)
        return arr, moved, False
    except DataError:
        if not resample:
            raise
    arr = resample_to_grid(pred.array, pred.affine, label.affine, label.shape, order=0)
    return arr.astype(np.asarray(pred.array).dtype, copy=False), True, True
