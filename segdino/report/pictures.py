"""Pictures of a case: contours of ground truth and prediction drawn on the image, as PNG bytes.

Shared by the report, the volume figures and ``segdino predict --overlays``: one set of colours.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import DataError

#: Contour colours of :func:`overlay` (RGB) and their meaning, shown as the report's legend.
GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 255)
BOTH_COLOUR = (255, 255, 0)
LEGEND = "green: ground truth contour, magenta: prediction contour, yellow: where the two coincide"
#: Tint of each predicted class in overlays (class k uses entry (k - 1) mod len).
CLASS_COLOURS = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 128, 255), (128, 255, 0),
                 (255, 0, 0), (0, 0, 255))
OVERLAY_ALPHA = 0.35

#: Case pictures smaller than this (longest side, pixels) are enlarged by a whole factor.
MIN_PICTURE_SIDE = 256


# ---------------------------------------------------------------------------------------------
# Overlays


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise DataError(f"overlay expects an (H, W) or (H, W, 3) image, got shape {img.shape}")
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        finite = f[np.isfinite(f)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        f = np.nan_to_num((f - lo) / (hi - lo) if hi > lo else np.zeros_like(f))
        img = np.round(np.clip(f, 0, 1) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def contour(labels: np.ndarray) -> np.ndarray:
    """Boolean (H, W) map of the pixels of non-zero labels that touch a different label.

    A pixel is on the contour when one of its 4 neighbours has another label, the outside of the
    image counting as background; so touching classes get their shared border drawn too.
    """
    lab = np.asarray(labels)
    padded = np.pad(lab, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(lab.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + lab.shape[0], dx : dx + lab.shape[1]] != centre
    return edge & (lab != 0)


def overlay(
    image_rgb_uint8: np.ndarray,
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw ground-truth and prediction contours on an image.

    Args:
        image_rgb_uint8: (H, W, 3) uint8 image; (H, W) grey and non-uint8 images (e.g. a CT
            slice) are accepted and scaled min-max to 0..255.
        gt_labels, pred_labels: (H, W) label maps (0 = background).
        thickness: contour width in pixels; default grows with the image (1 px up to 400 px).

    Returns:
        (H, W, 3) uint8 copy with the GT contour in :data:`GT_COLOUR`, the prediction contour in
        :data:`PRED_COLOUR` and pixels on both in :data:`BOTH_COLOUR` (see :data:`LEGEND`).
    """
    img = _as_rgb(image_rgb_uint8).copy()
    gt = np.asarray(gt_labels)
    pred = np.asarray(pred_labels)
    if gt.shape != img.shape[:2] or pred.shape != img.shape[:2]:
        raise DataError(
            f"overlay: image is {img.shape[:2]}, ground truth {gt.shape}, prediction {pred.shape}; "
            "all three must have the same height and width"
        )
    if thickness is None:
        thickness = max(1, int(round(max(img.shape[:2]) / 400)))
    g, p = contour(gt), contour(pred)
    if thickness > 1:
        grow = ndimage.generate_binary_structure(2, 2)
        g = ndimage.binary_dilation(g, grow, iterations=thickness - 1)
        p = ndimage.binary_dilation(p, grow, iterations=thickness - 1)
    img[g & ~p] = GT_COLOUR
    img[p & ~g] = PRED_COLOUR
    img[g & p] = BOTH_COLOUR
    return img


def overlay_prediction(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image with each class of ``mask`` (H, W) tinted and outlined in its colour."""
    out = image.astype(np.float32)
    edge = contour(mask)
    for k in np.unique(mask):
        if k == 0:
            continue
        colour = np.asarray(CLASS_COLOURS[(int(k) - 1) % len(CLASS_COLOURS)], dtype=np.float32)
        region = mask == k
        out[region] = (1 - OVERLAY_ALPHA) * out[region] + OVERLAY_ALPHA * colour
        out[region & edge] = colour
    return np.round(out).clip(0, 255).astype(np.uint8)


def worst_slice(pred: np.ndarray, gt: np.ndarray, axis: int = 0) -> int:
    """Index along ``axis`` of the slice of a volume with the most wrongly labelled voxels.

    When prediction and ground truth agree everywhere, the slice with the most ground-truth
    foreground is returned (the middle slice when both are empty), so the picture still shows
    something. Ties go to the lowest index.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise DataError(f"worst_slice expects two volumes of the same 3D shape, got {pred.shape} and {gt.shape}")
    other = tuple(a for a in range(3) if a != axis % 3)
    errors = np.count_nonzero(pred != gt, axis=other)
    if errors.any():
        return int(np.argmax(errors))
    fg = np.count_nonzero(gt, axis=other)
    if fg.any():
        return int(np.argmax(fg))
    return pred.shape[axis % 3] // 2


def _encode_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _case_picture(data: Sequence[np.ndarray]) -> tuple[np.ndarray, str]:
    """(image, gt, pred) of a case -> overlay; volumes show their worst slice along axis 0."""
    if len(data) != 3:
        raise DataError("a case for the report must be (image, ground truth, prediction)")
    image, gt, pred = (np.asarray(a) for a in data)
    note = ""
    if gt.ndim == 3:
        k = worst_slice(pred, gt, axis=0)
        if image.shape[:3] != gt.shape:
            raise DataError(f"a volume case needs an image of shape {gt.shape} (or with RGB), got {image.shape}")
        image = image[k]
        gt, pred = gt[k], pred[k]
        wrong = int(np.count_nonzero(gt != pred))
        note = f" (slice {k}: the most wrong voxels, {wrong})" if wrong else f" (slice {k}: no wrong voxels)"
    picture = overlay(image, gt, pred)
    # Small images are enlarged (nearest neighbour, whole pixels) so the contours stay visible.
    factor = max(1, MIN_PICTURE_SIDE // max(picture.shape[:2]))
    if factor > 1:
        picture = picture.repeat(factor, axis=0).repeat(factor, axis=1)
    return picture, note
