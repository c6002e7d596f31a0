"""Resampling images and label maps to a voxel spacing, and onto another grid, for 2D and 3D.

One implementation serves 2D images (``(H, W)`` arrays, optionally with a trailing channel axis)
and volumes (``(I, J, K)``): every function works on the leading ``len(spacing)`` axes of an
array. The interpolation itself is scipy's (:mod:`scipy.ndimage`).

Geometry. Resampling keeps the field of view: the outer edges of the first and last voxels stay
where they were (``grid_mode=True`` in scipy's terms), so a voxel centre moves by at most the
rounding of the new shape. A new voxel ``j`` along an axis of ``n`` old and ``m`` new voxels sits
at old index ``(j + 0.5) * n / m - 0.5``; :func:`resampled_affine` writes that into an affine.

Labels are resampled as one-hot maps, each interpolated linearly and the largest taken per voxel
(as nnU-Net does), so small structures are neither shifted nor dropped by nearest-neighbour
aliasing when the grid shrinks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from .errors import ConfigError, DataError


def check_spacing(spacing: Sequence[float], where: str = "input") -> tuple[float, ...]:
    """Voxel sizes as floats; DataError naming ``where`` unless every one is finite and > 0."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise DataError(f"{where}: voxel spacing must be numbers in mm, got {spacing!r}") from None
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise DataError(f"{where}: voxel spacing {list(values)} mm is not usable "
                        "(every voxel size must be a finite number > 0; check the file's header)")
    return values


def parse_spacing(text: str | Sequence[float] | None) -> str | tuple[float, ...] | None:
    """``--spacing``: ``auto``, ``X,Y`` (mm; one number means both), a sequence, or None."""
    if text is None:
        return None
    if isinstance(text, str):
        t = text.strip().lower()
        if t == "auto":
            return "auto"
        try:
            values = tuple(float(v) for v in t.replace("x", ",").split(","))
        except ValueError:
            raise ConfigError(f"--spacing must be auto or X,Y in mm, got {text!r}") from None
    else:
        values = tuple(float(v) for v in text)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--spacing must be auto or two positive numbers X,Y in mm, got {text!r}")
    return values


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float | None]) -> tuple[int, ...]:
    """Shape of the leading axes after resampling from ``spacing`` to ``target`` (None keeps an axis)."""
    out = []
    for n, s, t in zip(shape, spacing, target):
        out.append(int(n) if t is None else max(1, int(round(int(n) * float(s) / float(t)))))
    return tuple(out)


def resample_to_shape(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample the leading ``len(shape)`` axes of ``array`` to ``shape``, keeping the field of view.

    Args:
        array: (A0, A1, ..., [C...]) float or integer data.
        shape: the new sizes of the leading axes.
        order: spline order (0 nearest, 1 linear, 3 cubic).

    Returns:
        float32 array of shape ``shape + array.shape[len(shape):]`` (the input dtype for order 0).
    """
    a = np.asarray(array)
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    if n > a.ndim or any(s < 1 for s in shape):
        raise DataError(f"cannot resample an array of shape {a.shape} to {shape}")
    if tuple(a.shape[:n]) == shape:
        return a if order == 0 else a.astype(np.float32, copy=False)
    zoom = [shape[i] / a.shape[i] for i in range(n)] + [1.0] * (a.ndim - n)
    data = a if order == 0 else a.astype(np.float32, copy=False)
    out = ndimage.zoom(data, zoom, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if tuple(out.shape[:n]) != shape:  # scipy rounds the output shape itself; it agrees, but be sure
        raise DataError(f"resampling gave shape {out.shape}, expected {shape}")
    return out


def resample_image(array: np.ndarray, spacing: Sequence[float], target: Sequence[float | None],
                   order: int = 1, where: str = "image") -> np.ndarray:
    """An image's leading axes from voxel size ``spacing`` to ``target`` (mm; None keeps an axis)."""
    spacing = check_spacing(spacing, where)
    return resample_to_shape(array, resampled_shape(np.shape(array), spacing, target), order=order)


def resample_labels_to_shape(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A label map's leading axes to ``shape``: one-hot, linear, largest value wins (dtype kept)."""
    lab = np.asarray(labels)
    shape = tuple(int(s) for s in shape)
    if tuple(lab.shape[: len(shape)]) == shape:
        return lab
    values = np.unique(lab)
    if len(values) == 1:
        return np.full(shape + lab.shape[len(shape):], values[0], dtype=lab.dtype)
    best = None
    out = np.zeros(shape + lab.shape[len(shape):], dtype=lab.dtype)
    for v in values:
        score = resample_to_shape((lab == v).astype(np.float32), shape, order=1)
        if best is None:
            best = score
            out[...] = v
        else:
            win = score > best
            out[win] = v
            best = np.where(win, score, best)
    return out


def resample_labels(labels: np.ndarray, spacing: Sequence[float], target: Sequence[float | None],
                    where: str = "labels") -> np.ndarray:
    """A label map from voxel size ``spacing`` to ``target`` (see :func:`resample_labels_to_shape`)."""
    spacing = check_spacing(spacing, where)
    return resample_labels_to_shape(labels, resampled_shape(np.shape(labels), spacing, target))


def resampled_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The affine of a 3D grid of ``shape`` resampled to ``new_shape`` over the same field of view."""
    aff = np.asarray(affine, dtype=np.float64)
    scale = np.asarray([n / m for n, m in zip(shape, new_shape)], dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0  # new index 0 sits at old index (0.5 * n / m - 0.5)
    return aff @ step


def resample_to_grid(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                     target_shape: Sequence[int], order: int = 0) -> np.ndarray:
    """A 3D array on grid ``affine`` sampled onto another grid (``target_affine``, ``target_shape``).

    Voxel centres of the target grid are mapped into the source grid through the two affines;
    places outside the source get 0. ``order`` 0 (nearest) is for label maps.
    """
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    data = np.asarray(array)
    if order > 0:
        data = data.astype(np.float32, copy=False)
    return ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in target_shape),
                                    order=order, mode="constant", cval=0, prefilter=order > 1)


__all__ = [
    "check_spacing", "parse_spacing", "resampled_shape", "resample_to_shape", "resample_image",
    "resample_labels", "resample_labels_to_shape", "resampled_affine", "resample_to_grid",
]
