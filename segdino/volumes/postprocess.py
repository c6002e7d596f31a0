"""Post-processing of predicted label volumes.

Largest connected component, per class: an organ is one piece of tissue, so stray islands of
its label elsewhere in the volume are false positives. Keeping only each class's largest
component removes them. It is wrong for classes with several true pieces (lesions,
metastases): apply it to the classes that are one object, which ``classes`` selects.

Minimum component size, per class (``--min-size`` in mm^3): for classes with several true
pieces, predicted components smaller than the smallest lesion worth reporting are removed
(false positives of a lesion detector are mostly specks one slice thick). The size is a
volume in mm^3, so one setting means the same on every scanner's grid.

Choosing that size from data (:func:`choose_min_size`), as nnU-Net decides its post-processing on
cross-validation predictions: the trained model's predictions of the validation cases are scored
with every removal that changes them (nothing removed, then each predicted component's size in
turn), and the smallest size with the best score is kept. The score is the mean of the
per-volume Dice and the lesion detection F1, so removing a real lesion costs as much as keeping
a false one. Training does this on its validation cases (``segdino train --min-size auto``) and
records the size in the model; prediction and evaluation then apply it unless told otherwise.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import math

import numpy as np
from scipy import ndimage

from ..errors import ConfigError


def largest_connected_component(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of a boolean mask (ties: the lowest label, i.e. first in
    C order); an empty mask stays empty.

    Args:
        mask: boolean (or 0/non-zero) array of any dimension.
        connectivity: as in :func:`scipy.ndimage.generate_binary_structure`: 1 = face neighbours
            (6 in 3D) up to ``mask.ndim`` = all neighbours (26 in 3D, the default).

    Returns:
        boolean array of ``mask``'s shape.
    """
    m = np.asarray(mask) != 0
    conn = m.ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= m.ndim:
        raise ConfigError(f"connectivity must be between 1 and {m.ndim} for {m.ndim}D masks, got {connectivity}")
    lab, n = ndimage.label(m, structure=ndimage.generate_binary_structure(m.ndim, conn))
    if n <= 1:
        return m
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def keep_largest_component(labels: np.ndarray, classes: Iterable[int] | None = None,
                           connectivity: int | None = None) -> np.ndarray:
    """Keep only the largest connected component of each class in a label volume.

    Args:
        labels: (I, J, K) (or any-dimensional) integer label map, 0 = background.
        classes: the class ids to clean; default every non-zero label present.
        connectivity: see :func:`largest_connected_component` (default: all neighbours).

    Returns:
        a copy of ``labels`` in which the voxels of the removed components are background (0).
    """
    labels = np.asarray(labels)
    out = labels.copy()
    wanted = sorted(int(c) for c in np.unique(labels) if c != 0) if classes is None else [int(c) for c in classes]
    for c in wanted:
        if c == 0:
            raise ConfigError("largest-component post-processing applies to foreground classes, not 0")
        mask = labels == c
        if not mask.any():
            continue
        # Only the bounding box of the class is labelled: components never leave it.
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = mask[box]
        keep = largest_connected_component(sub, connectivity)
        region = out[box]
        region[sub & ~keep] = 0
    return out


def largest_component_classes(largest_component: bool | Iterable[int] | None, num_classes: int) -> list[int]:
    """The classes a ``largest_component`` option selects: none (False/None), every foreground
    class of a model with ``num_classes`` outputs (True), or the listed class ids (checked)."""
    if largest_component is None or largest_component is False:
        return []
    fg = [1] if num_classes == 1 else list(range(1, int(num_classes)))
    if largest_component is True:
        return fg
    try:
        classes = sorted({int(c) for c in largest_component})
    except (TypeError, ValueError):
        raise ConfigError(f"largest-component classes must be class ids, got {largest_component!r}") from None
    bad = [c for c in classes if c not in fg]
    if bad:
        raise ConfigError(f"largest-component classes {bad} are not foreground classes "
                          f"(foreground: {', '.join(map(str, fg))})")
    return classes


def check_min_size(min_size_mm3: float | None) -> float | None:
    """``min_size_mm3`` as a float (None stays None); ConfigError unless a finite volume >= 0."""
    if min_size_mm3 is None:
        return None
    try:
        value = float(min_size_mm3)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--min-size must be a volume in mm^3 >= 0, got {min_size_mm3!r}")
    return value


def resolve_min_size(min_size_mm3: float | None, settings: dict | None) -> tuple[float | None, str | None]:
    """The minimum component size a prediction applies, and where it comes from: ``min_size_mm3``
    when given (``--min-size``; 0 removes nothing), else the one the model's volume ``settings``
    record (chosen in training), else none."""
    value = check_min_size(min_size_mm3)
    if value is not None:
        return value, "--min-size"
    if settings and settings.get("min_size_mm3") is not None:
        return float(settings["min_size_mm3"]), str(settings.get("min_size_source") or "the model file")
    return None, None


def remove_small_components(labels: np.ndarray, min_voxels: int, connectivity: int | None = None) -> np.ndarray:
    """``labels`` with every connected component of each non-zero label smaller than
    ``min_voxels`` voxels set to background (0); a copy when anything is removed.

    Args:
        labels: integer label map of any dimension, 0 = background.
        min_voxels: components with fewer voxels are removed.
        connectivity: see :func:`largest_connected_component` (default: all neighbours).
    """
    labels = np.asarray(labels)
    if min_voxels <= 1:
        return labels
    conn = labels.ndim if connectivity is None else int(connectivity)
    structure = ndimage.generate_binary_structure(labels.ndim, conn)
    out = labels
    for c in (int(v) for v in np.unique(labels) if v != 0):
        comp, n = ndimage.label(labels == c, structure=structure)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        small = sizes < min_voxels
        small[0] = False
        if small.any():
            out = out.copy() if out is labels else out
            out[small[comp]] = 0
    return out


def component_volumes(labels: np.ndarray, spacing: Iterable[float], connectivity: int | None = None) -> list[float]:
    """The volume (mm^3) of every connected component of every non-zero label of ``labels``."""
    labels = np.asarray(labels)
    voxel = float(np.prod([float(s) for s in spacing]))
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim if connectivity is None else connectivity)
    out: list[float] = []
    for c in (int(v) for v in np.unique(labels) if v != 0):
        comp, n = ndimage.label(labels == c, structure=structure)
        out.extend((np.bincount(comp.ravel(), minlength=n + 1)[1:] * voxel).tolist())
    return out


MAX_CANDIDATES = 64  # sizes tried by choose_min_size (quantiles of the predicted components beyond that)


def choose_min_size(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                    spacings: Sequence[Iterable[float]], num_classes: int = 1,
                    max_candidates: int = MAX_CANDIDATES) -> dict:
    """The minimum component size (mm^3) that scores best on labelled cases (module docstring).

    Args:
        predictions: predicted label volumes, without any size filter.
        references: their reference label volumes, same shapes.
        spacings: each case's voxel size in mm.
        num_classes: the model's outputs (1: binary, every non-zero label is the foreground).
        max_candidates: the most removal sizes tried.

    Returns:
        dict: ``min_size_mm3`` (0.0: removing nothing scores best), ``score`` (mean of per-volume
        Dice and lesion F1 at that size), ``dice`` and ``lesion_f1`` at that size, the same at
        size 0 (``dice_without``, ``lesion_f1_without``, ``score_without``), ``removed`` (predicted
        components the size removes), ``cases`` and ``candidates`` (sizes tried).
    """
    from ..metric_stats import summarize_lesions
    from ..metrics import dice_coefficient, lesion_metrics

    if not (len(predictions) == len(references) == len(spacings)) or not predictions:
        raise ConfigError("choosing a minimum component size needs one reference per prediction, and at least one")
    spacings = [tuple(float(s) for s in sp) for sp in spacings]
    classes = [1] if num_classes == 1 else list(range(1, int(num_classes)))
    if num_classes == 1:  # every non-zero label is the one foreground class
        predictions = [(np.asarray(p) != 0).astype(np.uint8) for p in predictions]
        references = [(np.asarray(r) != 0).astype(np.uint8) for r in references]
    volumes = [component_volumes(p, sp) for p, sp in zip(predictions, spacings)]  # labelled once
    sizes = sorted({v for vols in volumes for v in vols})
    if len(sizes) > max_candidates:
        sizes = sorted(set(np.quantile(sizes, np.linspace(0, 1, max_candidates)).tolist()))
    # A candidate just above a component's size removes that component (and every smaller one).
    candidates = [0.0] + [v * (1 + 1e-6) for v in sizes]

    def score(min_size: float) -> dict:
        dice, lesions = [], {c: [] for c in classes}
        for pred, ref, sp in zip(predictions, references, spacings):
            kept = postprocess_labels(np.asarray(pred), num_classes=num_classes, min_size_mm3=min_size, spacing=sp)
            ref = np.asarray(ref)
            per_class = []
            for c in classes:
                p, g = kept == c, ref == c
                per_class.append(dice_coefficient(p, g))
                lesions[c].append(lesion_metrics(p, g, sp))
            dice.append(float(np.mean(per_class)))
        f1 = float(np.mean([summarize_lesions(lesions[c])["detection_f1"] for c in classes]))
        d = float(np.mean(dice))
        removed = sum(v < min_size for vols in volumes for v in vols)
        return {"dice": d, "lesion_f1": f1, "score": (d + f1) / 2, "removed": removed}

    scored = [(t, score(t)) for t in candidates]
    best = max(s["score"] for _, s in scored)
    t, s = next((t, s) for t, s in scored if s["score"] >= best - 1e-12)  # the smallest size scoring best
    base = scored[0][1]
    return {"min_size_mm3": float(t), "score": s["score"], "dice": s["dice"], "lesion_f1": s["lesion_f1"],
            "removed": s["removed"], "score_without": base["score"], "dice_without": base["dice"],
            "lesion_f1_without": base["lesion_f1"], "cases": len(predictions), "candidates": len(candidates)}


def postprocess_labels(labels: np.ndarray, largest_component: bool | Iterable[int] | None = False,
                       num_classes: int = 1, min_size_mm3: float | None = None,
                       spacing: Iterable[float] | None = None) -> np.ndarray:
    """The optional post-processing of predicted labels: :func:`keep_largest_component` of the
    classes :func:`largest_component_classes` selects, then, with ``min_size_mm3``,
    :func:`remove_small_components` of every foreground class below that volume (``spacing``:
    the voxel size in mm); ``labels`` itself when neither is asked. A binary task
    (``num_classes`` 1) treats every non-zero label as its one foreground class."""
    classes = largest_component_classes(largest_component, num_classes)
    if classes:
        if num_classes == 1:
            keep = largest_connected_component(labels != 0)
            labels = np.where(keep, labels, 0).astype(labels.dtype, copy=False)
        else:
            labels = keep_largest_component(labels, classes)
    min_size_mm3 = check_min_size(min_size_mm3)
    if min_size_mm3:
        if spacing is None:
            raise ConfigError("a minimum component size in mm^3 needs the voxel spacing")
        voxel = float(np.prod([float(s) for s in spacing]))
        labels = remove_small_components(labels, int(math.ceil(min_size_mm3 / voxel - 1e-9)))
    return labels
