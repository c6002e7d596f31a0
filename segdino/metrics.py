"""Segmentation metrics on label arrays (docs/FORMATS.md, "Metrics").

Pure functions over numpy label arrays of any dimension (2D images ``(H, W)``, 3D volumes
``(D, H, W)``), with an optional physical ``spacing`` per axis (e.g. millimetres per voxel).

Definitions, per foreground class, with P the predicted mask and G the ground-truth mask:

- Dice = 2|P∩G| / (|P|+|G|); IoU = |P∩G| / |P∪G|; both 1 when P and G are both empty.
- Precision = |P∩G| / |P|, recall = |P∩G| / |G|; both 1 when P and G are both empty; 0 when the
  denominator's mask is empty and the other is not.
- Boundary of a mask: its voxels that :func:`scipy.ndimage.binary_erosion` with the default
  structuring element (face neighbours only: 4-connected in 2D, 6-connected in 3D) removes,
  everything outside the array counting as background. This is MONAI's ``get_mask_edges``.
- Directed surface distances from P to G: for every boundary voxel of P, the Euclidean distance
  (with ``spacing``) between its centre and the nearest boundary voxel centre of G.
- HD95: the larger of the two directed 95th percentiles (linear interpolation between order
  statistics, as ``numpy.percentile`` and ``torch.quantile``): MONAI's
  ``compute_hausdorff_distance(percentile=95)``.
- ASD (average symmetric surface distance): the mean over the union of both directed distance
  sets, i.e. ``(sum of d(P->G) + sum of d(G->P)) / (|∂P| + |∂G|)``: MONAI's
  ``compute_average_surface_distance(symmetric=True)``.
- NSD (normalised surface Dice) at tolerance t: the fraction of both boundaries lying within t
  of the other, ``(|{d(P->G) <= t}| + |{d(G->P) <= t}|) / (|∂P| + |∂G|)``: MONAI's
  ``compute_surface_dice`` (the same boundaries and distances as above). 1 when P and G are both
  empty (as Dice; MONAI gives NaN there), 0 when exactly one is empty: defined, no failure.
- HD95 and ASD are 0 when P and G are both empty, and undefined (NaN, flagged as a failure)
  when exactly one is empty. A summary reports them over the defined cases with their count, and
  again with each failure scored as the diagonal of the image/volume (see :func:`diagonal`).

Distance transforms run only on the bounding box of P∪G grown by one voxel, which gives exactly
the values of the whole-array computation: every boundary voxel lies inside that box, and the
one-voxel margin is background, just as the outside of the array is for the erosion.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .errors import DataError
# The statistics across cases live beside these per-case functions; kept importable from here.
from .metric_stats import METRICS, SURFACE_METRICS, describe, ratio as _ratio, summarize, summarize_lesions

#: NSD's default tolerance, in the units of the spacing (mm for volumes).
NSD_TOLERANCE = 1.0


# ---------------------------------------------------------------------------------------------
# Helpers


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    """Validate ``spacing`` -> float64 array of length ``ndim``."""
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise DataError(
            f"spacing must be {ndim} positive numbers (one per axis of a {ndim}D array), "
            f"got {list(np.atleast_1d(spacing))}"
        )
    return sp


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")
    if pred.ndim < 1:
        raise DataError("prediction and ground truth must be arrays with at least one axis")
    return pred, gt


def diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """Length of the array's diagonal: ``sqrt(sum((n_i * s_i)^2))`` (pixels, or mm with spacing).

    This is the score a failed HD95/ASD case receives in the "with failures" summary: no two
    points inside the image/volume can be farther apart (up to one voxel).
    """
    sp = _spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2)))


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` and clipped to the array, or None if empty."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other) if other else mask)
        if hit.size == 0:
            return None
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def _boundary(mask: np.ndarray) -> np.ndarray:
    # scipy's default structure (face neighbours) and border_value=0, as MONAI.
    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances of two boolean masks (both non-empty).

    Args:
        pred, gt: boolean arrays of the same shape (any dimension), each with a foreground voxel.
        spacing: physical size of a voxel per axis (scalar or one per axis); default 1.

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: 1D float64 arrays, one distance per boundary voxel of
        ``pred`` (resp. ``gt``) to the nearest boundary voxel of the other mask.
    """
    pred, gt = _check_pair(np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool))
    sp = _spacing(spacing, pred.ndim)
    box = _bbox(pred | gt)
    if box is None or not pred.any() or not gt.any():
        raise DataError("surface distances need a non-empty prediction and a non-empty ground truth")
    p, g = pred[box], gt[box]
    edge_p, edge_g = _boundary(p), _boundary(g)
    # EDT of the complement gives, at every voxel, the distance to the nearest boundary voxel.
    d_pg = ndimage.distance_transform_edt(~edge_g, sampling=sp)[edge_p]
    d_gp = ndimage.distance_transform_edt(~edge_p, sampling=sp)[edge_g]
    return d_pg, d_gp


def hd95_asd(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[float, float]:
    """HD95 and ASD of two boolean masks (see the module docstring).

    Returns ``(0.0, 0.0)`` when both are empty and ``(nan, nan)`` when exactly one is empty.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 0.0, 0.0
    if has_p != has_g:
        return math.nan, math.nan
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    asd = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
    return hd95, asd


def normalized_surface_dice(
    pred: np.ndarray, gt: np.ndarray, tolerance: float, spacing: float | Sequence[float] | None = None
) -> float:
    """NSD of two boolean masks at ``tolerance`` (in the units of ``spacing``; module docstring).

    Returns 1.0 when both are empty and 0.0 when exactly one is.
    """
    tol = float(tolerance)
    if not math.isfinite(tol) or tol < 0:
        raise DataError(f"the NSD tolerance must be a distance >= 0, got {tolerance!r}")
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 1.0
    if has_p != has_g:
        return 0.0
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return float((np.count_nonzero(d_pg <= tol) + np.count_nonzero(d_gp <= tol)) / (d_pg.size + d_gp.size))



# ---------------------------------------------------------------------------------------------
# Per case


def foreground_classes(num_classes: int) -> list[int]:
    """Class ids scored for a model with ``num_classes`` outputs: [1] for binary, else 1..K-1."""
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise DataError(f"num_classes must be an integer >= 1 (1 = binary), got {num_classes!r}")
    return [1] if num_classes == 1 else list(range(1, int(num_classes)))


def _class_masks(labels: np.ndarray, num_classes: int, what: str) -> dict[int, np.ndarray]:
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataError(f"{what} must hold integer labels, found non-integer values")
    if num_classes == 1:
        # Binary: any non-zero value is foreground (masks may be stored as 0/1 or 0/255).
        return {1: labels != 0}
    if labels.size:
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi > num_classes - 1:
            found = sorted(int(v) for v in np.unique(labels) if v < 0 or v > num_classes - 1)
            raise DataError(
                f"{what} has labels {found[:10]} outside 0..{num_classes - 1} (num_classes={num_classes})"
            )
    return {c: labels == c for c in foreground_classes(num_classes)}


def dice_coefficient(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks of one shape: 2|P∩G| / (|P| + |G|), 1 when both are empty."""
    n_p, n_g = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_p + n_g == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / (n_p + n_g)


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance: float | None = None,
) -> dict[int, dict[str, Any]]:
    """All per-class metrics of one image or volume.

    Args:
        pred: predicted labels, integer or bool array ``(H, W)`` or ``(D, H, W)``.
        gt: ground-truth labels of the same shape.
        num_classes: 1 = binary (non-zero is foreground), K >= 2 = labels 0..K-1 with 0 the
            background; other label values raise :class:`DataError`.
        spacing: voxel size per axis (e.g. mm); HD95 and ASD are in these units. Default 1.
        nsd_tolerance: when given, also the normalised surface Dice at this distance (in the
            units of ``spacing``), as ``nsd``.

    Returns:
        ``{class_id: metrics}`` for each foreground class, where ``metrics`` has ``dice``, ``iou``,
        ``hd95``, ``asd``, ``precision``, ``recall`` (floats; HD95/ASD NaN when undefined),
        ``hd95_failed`` and ``asd_failed`` (True when exactly one of P, G is empty),
        ``pred_voxels`` (|P|), ``gt_voxels`` (|G|), ``intersection`` (|P∩G|) and ``diagonal``
        (the array's diagonal in the same units, the failure score of the summary).
    """
    pred, gt = _check_pair(pred, gt)
    sp = _spacing(spacing, pred.ndim)
    classes = foreground_classes(num_classes)
    pred_masks = _class_masks(pred, num_classes, "prediction")
    gt_masks = _class_masks(gt, num_classes, "ground truth")
    diag = diagonal(pred.shape, sp)
    out: dict[int, dict[str, Any]] = {}
    for c in classes:
        p, g = pred_masks[c], gt_masks[c]
        n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        inter = int(np.count_nonzero(p & g)) if n_p and n_g else 0
        union = n_p + n_g - inter
        hd95, asd = hd95_asd(p, g, sp)
        failed = (n_p == 0) != (n_g == 0)
        out[c] = {
            "dice": dice_coefficient(p, g),
            "iou": 1.0 if union == 0 else inter / union,
            **({} if nsd_tolerance is None else {"nsd": normalized_surface_dice(p, g, nsd_tolerance, sp)}),
            "hd95": hd95,
            "asd": asd,
            "precision": _ratio(inter, n_p, n_g),
            "recall": _ratio(inter, n_g, n_p),
            "hd95_failed": failed,
            "asd_failed": failed,
            "pred_voxels": n_p,
            "gt_voxels": n_g,
            "intersection": inter,
            "diagonal": diag,
        }
    return out


def case_rows(
    case: str,
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    nsd_tolerance: float | None = None,
) -> list[dict[str, Any]]:
    """:func:`case_metrics` as flat rows, one per foreground class, ready for a CSV and :func:`summarize`.

    Each row is ``{"case": case, "class": id, "class_name": name, **metrics}``. ``class_names``
    is indexed by class id (a sequence including the background at 0, or a mapping); missing
    names default to ``"class <id>"`` (``"foreground"`` for a binary task).
    """
    rows = []
    for c, m in case_metrics(pred, gt, num_classes, spacing, nsd_tolerance).items():
        rows.append({"case": str(case), "class": c, "class_name": _class_name(c, num_classes, class_names), **m})
    return rows


def _class_name(c: int, num_classes: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if isinstance(class_names, Mapping):
        if c in class_names:
            return str(class_names[c])
    elif class_names is not None and c < len(class_names):
        return str(class_names[c])
    return "foreground" if num_classes == 1 else f"class {c}"


# ---------------------------------------------------------------------------------------------
# Lesion-wise detection


# Over 80 lines for its docstring (the matching rules, stated in full) and one pass of steps that
# share the label maps; the body itself is about 70 lines.
def lesion_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    connectivity: int | None = None,
) -> dict[str, Any]:
    """Lesion-wise detection: connected components of G matched to components of P by overlap.

    Non-zero voxels are foreground; for one class of a multi-class label map pass
    ``pred == c, gt == c``. Rules:

    - A ground-truth lesion (component of G) is *found* when at least one voxel of it is
      predicted, otherwise *missed*. Its matched prediction is the union of the P components that
      overlap it.
    - A P component overlapping no G component is a *false positive*; a P component overlapping
      several G lesions is matched to each of them and is not a false positive.
    - One lesion split in two in P: the lesion is found, both P parts are matched to it, no false
      positive. Two lesions merged into one P component: both are found.
    - Per-lesion Dice = 2|g ∩ M| / (|g| + |M|), where M is the lesion's matched prediction minus
      the voxels that belong to *other* G lesions (those are credited to their own lesions; P
      voxels outside every lesion, e.g. a bridge between two merged lesions, count against each
      lesion they are attached to). A missed lesion has Dice 0.

    Args:
        pred, gt: label or boolean arrays of the same shape ``(H, W)`` or ``(D, H, W)``.
        spacing: voxel size per axis; lesion sizes in physical units are ``voxels * prod(spacing)``
            (mm^3 for volumes in mm, mm^2 for images in mm).
        connectivity: neighbourhood of the components, as in
            :func:`scipy.ndimage.generate_binary_structure`: 1 = face neighbours (4 in 2D, 6 in
            3D) up to ``ndim`` = all neighbours (8 in 2D, 26 in 3D, the default).

    Returns:
        dict with ``num_lesions``, ``num_pred_components``, ``found``, ``missed``,
        ``false_positives`` (ints); ``lesions``: one dict per G lesion with ``lesion`` (1-based
        id), ``voxels``, ``size`` (physical), ``found`` (bool), ``dice``, ``pred_components``
        (number matched) and ``bbox`` (``[start, stop)`` voxel indices per axis, to find it in a
        viewer); ``false_positive_components``: one dict per false-positive component with
        ``voxels``, ``size`` and ``bbox``.
    """
    pred, gt = _check_pair(pred, gt)
    p = pred != 0
    g = gt != 0
    sp = _spacing(spacing, p.ndim)
    voxel_size = float(np.prod(sp))
    conn = p.ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= p.ndim:
        raise DataError(f"connectivity must be between 1 and {p.ndim} for {p.ndim}D arrays, got {connectivity}")
    structure = ndimage.generate_binary_structure(p.ndim, conn)

    result: dict[str, Any] = {
        "num_lesions": 0,
        "num_pred_components": 0,
        "found": 0,
        "missed": 0,
        "false_positives": 0,
        "lesions": [],
        "false_positive_components": [],
    }
    # Labelling only the bounding box of P∪G saves time on large volumes; no component leaves it.
    box = _bbox(p | g)
    if box is None:
        return result
    p, g = p[box], g[box]
    g_lab, n_g = ndimage.label(g, structure=structure)
    p_lab, n_p = ndimage.label(p, structure=structure)
    g_sizes = np.bincount(g_lab.ravel(), minlength=n_g + 1)
    p_sizes = np.bincount(p_lab.ravel(), minlength=n_p + 1)

    # Sparse overlap table {(G lesion i, P component j): shared voxels}: a dense one could be
    # huge for a noisy prediction with thousands of components.
    both = (g_lab > 0) & (p_lab > 0)
    codes, counts = np.unique(g_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both], return_counts=True)
    pairs_i, pairs_j = np.divmod(codes, n_p + 1)
    by_lesion: dict[int, dict[int, int]] = {}
    p_in_gt = np.zeros(n_p + 1, dtype=np.int64)  # P voxels of component j lying in some G lesion
    for i, j, n in zip(pairs_i.tolist(), pairs_j.tolist(), counts.tolist()):
        by_lesion.setdefault(i, {})[j] = n
        p_in_gt[j] += n

    origin = [s.start for s in box]
    g_boxes = ndimage.find_objects(g_lab, max_label=n_g)
    p_boxes = ndimage.find_objects(p_lab, max_label=n_p)

    def where(sl: tuple[slice, ...]) -> list[list[int]]:
        return [[s.start + o, s.stop + o] for s, o in zip(sl, origin)]

    lesions = []
    for i in range(1, n_g + 1):
        matched = by_lesion.get(i, {})
        inter = sum(matched.values())
        # Matched P voxels that other lesions claim are removed from this lesion's prediction.
        m_size = int(sum(p_sizes[j] - (p_in_gt[j] - n) for j, n in matched.items()))
        size = int(g_sizes[i])
        dice = 2.0 * inter / (size + m_size) if matched else 0.0
        lesions.append(
            {
                "lesion": i,
                "voxels": size,
                "size": size * voxel_size,
                "found": bool(matched),
                "dice": dice,
                "pred_components": len(matched),
                "bbox": where(g_boxes[i - 1]),
            }
        )
    fps = []
    for j in range(1, n_p + 1):
        if p_in_gt[j] == 0:
            fps.append(
                {
                    "voxels": int(p_sizes[j]),
                    "size": int(p_sizes[j]) * voxel_size,
                    "bbox": where(p_boxes[j - 1]),
                }
            )
    found = sum(1 for les in lesions if les["found"])
    result.update(
        num_lesions=int(n_g),
        num_pred_components=int(n_p),
        found=found,
        missed=int(n_g) - found,
        false_positives=len(fps),
        lesions=lesions,
        false_positive_components=fps,
    )
    return result


__all__ = ["METRICS", "NSD_TOLERANCE", "SURFACE_METRICS", "case_metrics", "case_rows", "describe", "diagonal",
           "dice_coefficient", "foreground_classes", "hd95_asd", "lesion_metrics", "normalized_surface_dice", "summarize",
           "summarize_lesions", "surface_distances"]
