"""How far brightness alone gets on a segmentation task: the best single global threshold.

:func:`best_global_threshold_dice` (images) and :func:`best_volume_threshold_dice` (volumes) try
every threshold with both polarities and keep the best mean per-case Dice, chosen on the scored
data itself: an optimistic baseline that a model must beat to have learnt more than intensity.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError

def _per_case_threshold_dice(values: list[np.ndarray], fg: list[np.ndarray], nbins: int) -> np.ndarray:
    """Dice of every threshold, both polarities, for every case.

    ``values`` are integer bins in [0, nbins). Threshold j (0..nbins) sits just below bin j:
    "above" predicts bins >= j, "below" predicts bins < j. Returns (n_cases, 2, nbins + 1).
    """
    n = len(values)
    out = np.empty((n, 2, nbins + 1))
    for i, (v, g) in enumerate(zip(values, fg)):
        all_hist = np.bincount(v, minlength=nbins).astype(np.float64)
        fg_hist = np.bincount(v[g], minlength=nbins).astype(np.float64)
        # Counts of pixels in bins >= j, for j = 0..nbins (last = none).
        p_above = np.concatenate([np.cumsum(all_hist[::-1])[::-1], [0.0]])
        tp_above = np.concatenate([np.cumsum(fg_hist[::-1])[::-1], [0.0]])
        total_p, total_g = p_above[0], tp_above[0]
        for k, (p, tp) in enumerate(((p_above, tp_above), (total_p - p_above, total_g - tp_above))):
            denom = p + total_g
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 1.0)
            out[i, k] = d
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"expected an HxW or HxWx3 image, got shape {np.asarray(image).shape}")
    return np.clip(np.rint(arr), 0, 255).astype(np.int64)


def _binary(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., :3].mean(axis=2)
    if m.dtype == bool:
        return m
    # {0, 1} masks are read as such, 8-bit masks are foreground above 127 (docs/FORMATS.md).
    return m > (0 if m.max(initial=0) <= 1 else 127)


def best_global_threshold_dice(images, masks) -> tuple[float, float, str]:
    """The best mean per-image Dice that one global grey-level threshold reaches on these images.

    The grey level is the luma ``0.299 R + 0.587 G + 0.114 B`` rounded to 0..255. Every threshold
    ``t`` in -0.5, 0.5, ..., 255.5 is tried with both polarities ("above": lesion = grey > t,
    "below": lesion = grey < t), Dice is computed per image (1 when prediction and mask are both
    empty, as everywhere in the metrics) and averaged, and the best is kept: an optimistic baseline,
    since the threshold is chosen on the very images it is scored on.

    Args:
        images: a sequence of (H, W, 3) or (H, W) uint8 arrays, or one (N, H, W[, 3]) array.
        masks: matching (H, W) masks ({0, 1}, {0, 255} or bool).

    Returns:
        ``(dice, threshold, polarity)``, polarity ``"above"`` or ``"below"``.
    """
    images = list(images)
    masks = list(masks)
    if len(images) != len(masks) or not images:
        raise DataError(f"need matching, non-empty lists of images and masks, got {len(images)} and {len(masks)}")
    values, fg = [], []
    for img, m in zip(images, masks):
        g = _grey(img)
        b = _binary(m)
        if g.shape != b.shape:
            raise DataError(f"image of size {g.shape} has a mask of size {b.shape}")
        values.append(g.ravel())
        fg.append(b.ravel())
    curves = _per_case_threshold_dice(values, fg, 256).mean(axis=0)
    k, j = np.unravel_index(int(np.argmax(curves)), curves.shape)
    return float(curves[k, j]), float(j) - 0.5, ("above", "below")[k]


def best_volume_threshold_dice(volumes, labels, label: int = 2) -> tuple[float, float, str]:
    """The best mean per-volume Dice of class ``label`` that one global intensity threshold reaches.

    Intensities are binned to whole units (HU for CT); thresholds lie between bins, both polarities
    are tried and the threshold is chosen on these volumes themselves, as in
    :func:`best_global_threshold_dice`.

    Args:
        volumes: a sequence of (D, H, W) arrays.
        labels: matching (D, H, W) label arrays.
        label: the class scored.

    Returns:
        ``(dice, threshold, polarity)``, polarity ``"above"`` (class = value > threshold) or ``"below"``.
    """
    volumes = [np.asarray(v, dtype=np.float64) for v in volumes]
    labels = [np.asarray(lab) for lab in labels]
    if len(volumes) != len(labels) or not volumes:
        raise DataError(f"need matching, non-empty lists of volumes and labels, got {len(volumes)} and {len(labels)}")
    for v, lab in zip(volumes, labels):
        if v.shape != lab.shape:
            raise DataError(f"volume of shape {v.shape} has labels of shape {lab.shape}")
    lo = int(np.floor(min(float(v.min()) for v in volumes)))
    hi = int(np.floor(max(float(v.max()) for v in volumes)))
    nbins = hi - lo + 1
    values = [(np.floor(v).astype(np.int64) - lo).ravel() for v in volumes]
    fg = [(lab == label).ravel() for lab in labels]
    curves = _per_case_threshold_dice(values, fg, nbins).mean(axis=0)
    k, j = np.unravel_index(int(np.argmax(curves)), curves.shape)
    # Bin j starts at value lo + j, so the cut between bins j-1 and j is at lo + j.
    return float(curves[k, j]), float(lo + j), ("above", "below")[k]
