"""Pictures of volumes and their labels: radiological view, lesion-centred report figures, overlays.

Every picture is drawn in the radiological view (:func:`display_volume`) and windowed as the
model was trained (:func:`display_image`), so what a figure shows is what the model saw.

- :func:`lesion_figures` draws, for each class, the slice through the largest ground-truth
  lesion, the largest missed lesion and the largest false positive of an evaluation: the whole
  slice beside an enlarged crop around the lesion, titled with the case, the slice index, Dice
  and the lesion's size in mm, under a colour legend.
- :func:`case_strip` draws every slice of a case that holds ground truth or prediction.
- :func:`write_volume_overlays` writes the slices of a prediction holding foreground as PNGs,
  tinted in the colours of the 2D overlays, and one montage per case.

The title of every figure is also stored in its PNG (text chunk ``Title``), so scripts can read
which slice a file shows without looking at it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..fileio import atomic_write_bytes
from ..report.pictures import BOTH_COLOUR, CLASS_COLOURS, GT_COLOUR, PRED_COLOUR, overlay, overlay_prediction
from .io import Volume
from .slicing import AXIS_NAMES, array_axes_of_world, planes

#: Crops and slices smaller than this (longest side, pixels) are enlarged by a whole factor.
READABLE_SIDE = 256
#: At most this many slices in a case strip or an overlay montage (evenly spaced beyond).
MAX_STRIP_SLICES = 32
#: The crop around a lesion spans its extent plus this fraction on each side (at least 16 px).
CROP_MARGIN = 1.0

KINDS = ("largest lesion", "largest missed lesion", "largest false positive")


# ---------------------------------------------------------------------------------------------
# Radiological view


def _display_plan(affine: np.ndarray, axis: int) -> tuple[int, int, bool, bool]:
    """(row array axis, column array axis, flip rows, flip columns) of slices along ``axis``."""
    world_axes = array_axes_of_world(affine)  # world x, y, z -> array axis
    slice_world = world_axes.index(axis)
    row_world = 1 if slice_world == 2 else 2
    col_world = 1 if slice_world == 0 else 0
    row_axis, col_axis = world_axes[row_world], world_axes[col_world]
    direction = np.asarray(affine)[:3, :3]
    # Rows run towards posterior/inferior and columns towards the patient's left: both decreasing in RAS.
    return row_axis, col_axis, bool(direction[row_world, row_axis] > 0), bool(direction[col_world, col_axis] > 0)


def display_volume(array: np.ndarray, affine: np.ndarray, axis: int) -> np.ndarray:
    """``array`` (I, J, K) as a stack of slices along array ``axis`` in radiological view.

    Returns (S, H, W): slice s is ``array.take(s, axis)`` turned so that, as on a radiology
    workstation, the patient's right is on the picture's left and anterior (axial) or superior
    (coronal, sagittal) is at the top; sagittal slices have anterior on the left.
    """
    row_axis, col_axis, flip_rows, flip_cols = _display_plan(affine, axis)
    out = np.transpose(array, (axis, row_axis, col_axis))
    if flip_rows:
        out = out[:, ::-1, :]
    if flip_cols:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def display_spacing(spacing: Sequence[float], affine: np.ndarray, axis: int) -> tuple[float, float]:
    """(row, column) pixel size in mm of the slices :func:`display_volume` makes."""
    row_axis, col_axis, _, _ = _display_plan(affine, axis)
    return float(spacing[row_axis]), float(spacing[col_axis])


def axis_name(affine: np.ndarray, axis: int) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the view of slices along array ``axis``."""
    world = array_axes_of_world(affine).index(axis)
    return {v: k for k, v in AXIS_NAMES.items()}[world]


def display_image(volume: Volume, spec: Mapping[str, Any] | None, modality: str | None) -> np.ndarray:
    """(I, J, K) uint8 picture of a volume: the model's intensity window, else a soft-tissue
    window for CT (named so in dataset.json, or holding air at about -1000 HU), else the 0.5 and
    99.5 percentiles."""
    from .intensity import ct_window, normalize_intensity, percentile_window

    if spec is None:
        arr = volume.array
        is_ct = (modality or "").strip().lower() == "ct" or (
            modality is None and arr.size > 0 and float(np.min(arr)) <= -900.0)
        spec = ct_window("abdomen") if is_ct else percentile_window(0.5, 99.5)
    norm = normalize_intensity(volume.array, spec)
    return np.round(norm * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Drawing helpers


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path, title: str) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Title": title})
    atomic_write_bytes(path, buf.getvalue())


def png_title(path: str | os.PathLike) -> str | None:
    """The title stored in a PNG written here (None when it has none)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.text.get("Title") if hasattr(im, "text") else None


def _legend(fig, class_names: Mapping[int, str] | None = None) -> None:
    from matplotlib.patches import Patch

    if class_names is None:
        handles = [Patch(color=np.asarray(c) / 255, label=t) for c, t in
                   ((GT_COLOUR, "ground truth"), (PRED_COLOUR, "prediction"), (BOTH_COLOUR, "both (contours meet)"))]
    else:
        handles = [Patch(color=np.asarray(CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]) / 255, label=f"{n} ({k})")
                   for k, n in class_names.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=9, frameon=False)


def _enlarge(*arrays: np.ndarray, side: int = READABLE_SIDE) -> tuple[np.ndarray, ...]:
    """Whole-factor nearest-neighbour enlargement so the longest side reaches about ``side``."""
    factor = max(1, side // max(arrays[0].shape[:2]))
    if factor == 1:
        return arrays
    return tuple(a.repeat(factor, axis=0).repeat(factor, axis=1) for a in arrays)


def _crop_box(mask: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """A square-ish crop of a 2D slice around ``mask``'s bounding box, with a margin."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return slice(0, shape[0]), slice(0, shape[1])
    out = []
    for lo, hi, n in ((rows.min(), rows.max() + 1, shape[0]), (cols.min(), cols.max() + 1, shape[1])):
        half = max(16, int(math.ceil((hi - lo) * (0.5 + CROP_MARGIN))))
        centre = (lo + hi) // 2
        a, b = max(0, centre - half), min(n, centre + half)
        out.append(slice(int(a), int(b)))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Lesion-centred figures


@dataclass
class CaseView:
    """One case ready to draw: (I, J, K) arrays on the label's grid and how to slice them."""

    image: np.ndarray  # uint8, windowed
    gt: np.ndarray
    pred: np.ndarray
    affine: np.ndarray
    axis: int  # the array axis slices are taken along
    spacing: tuple[float, float, float]


@dataclass
class LesionFigure:
    """A figure :func:`lesion_figures` wrote: which lesion of which case, on which slice."""

    path: Path
    title: str
    case: str
    class_id: int
    class_name: str
    kind: str  # one of KINDS
    slice_index: int  # index along the sliced array axis
    diameter_mm: float


def _class_mask(labels: np.ndarray, c: int, binary: bool) -> np.ndarray:
    return labels != 0 if binary else labels == c


def _parse_bbox(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in part.split(":")) for part in str(text).split())


def _component(mask: np.ndarray, other: np.ndarray, bbox_text: str, kind: str) -> np.ndarray | None:
    """The connected component of ``mask`` (26-connected, as lesion-wise scoring labels them)
    whose bounding box is ``bbox_text`` ("a:b c:d e:f"); for a false positive, one that does not
    touch ``other``."""
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    want = _parse_bbox(bbox_text)
    for i, box in enumerate(ndimage.find_objects(lab), 1):
        if box is None or tuple((s.start, s.stop) for s in box) != want:
            continue
        comp = lab == i
        if kind == "largest false positive" and np.any(comp & other):
            continue
        return comp
    return None


def _largest(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    rows = [r for r in rows if r.get("volume_mm3") is not None]
    return max(rows, key=lambda r: (float(r["volume_mm3"]), str(r["case"]))) if rows else None


def pick_lesions(lesion_rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """Per class, the lesion rows to draw: (kind, row) for the largest ground-truth lesion, the
    largest missed lesion (when it is not that one) and the largest false positive."""
    picks: list[tuple[str, Mapping[str, Any]]] = []
    for c in sorted({int(r["class"]) for r in lesion_rows}):
        of_class = [r for r in lesion_rows if int(r["class"]) == c]
        lesions = [r for r in of_class if r["kind"] == "lesion"]
        biggest = _largest(lesions)
        missed = _largest([r for r in lesions if not r.get("found")])
        fp = _largest([r for r in of_class if r["kind"] == "false positive"])
        if biggest is not None:
            picks.append(("largest lesion", biggest))
        if missed is not None and missed is not biggest:
            picks.append(("largest missed lesion", missed))
        if fp is not None:
            picks.append(("largest false positive", fp))
    return picks


def lesion_figures(out_dir: str | os.PathLike, lesion_rows: Sequence[Mapping[str, Any]],
                   case_rows: Sequence[Mapping[str, Any]], load: Callable[[str], CaseView],
                   num_classes: int) -> list[LesionFigure]:
    """Draw the slice through each lesion :func:`pick_lesions` chooses, one PNG per lesion.

    Args:
        out_dir: folder for ``lesion_<class>_<kind>.png`` (created).
        lesion_rows: the rows of ``lesions.csv`` (kind, case, class, voxels, volume_mm3,
            diameter_mm, found, dice, bbox in array indices).
        case_rows: the per-case rows (case, class, dice), for the case's Dice in titles.
        load: case id -> :class:`CaseView`; called once per drawn case.
        num_classes: the task's ``num_classes`` (1: binary, any non-zero label is foreground).

    Returns:
        the figures written, in class order; the slice shown is the one with the largest area
        of the lesion (ties: the lowest index).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dice_of = {(str(r["case"]), int(r["class"])): r.get("dice") for r in case_rows}
    cache: dict[str, CaseView] = {}
    figures: list[LesionFigure] = []
    for kind, row in pick_lesions(lesion_rows):
        case, c = str(row["case"]), int(row["class"])
        if case not in cache:
            cache.clear()  # one volume in memory at a time
            cache[case] = load(case)
        view = cache[case]
        binary = num_classes == 1
        gt_c, pred_c = _class_mask(view.gt, c, binary), _class_mask(view.pred, c, binary)
        mask, other = (pred_c, gt_c) if kind == "largest false positive" else (gt_c, pred_c)
        comp = _component(mask, other, row["bbox"], kind)
        if comp is None:
            continue
        other_axes = tuple(a for a in range(3) if a != view.axis)
        s = int(np.argmax(np.count_nonzero(comp, axis=other_axes)))
        figure = _draw_lesion(out / f"lesion_{c}_{kind.replace(' ', '_')}.png", view, comp, s, kind, row,
                              dice_of.get((case, c)))
        figures.append(figure)
    return figures


def _draw_lesion(path: Path, view: CaseView, comp: np.ndarray, s: int, kind: str, row: Mapping[str, Any],
                 case_dice: float | None) -> LesionFigure:
    from matplotlib.patches import Rectangle

    def shown(a: np.ndarray) -> np.ndarray:
        return display_volume(planes(a, view.axis, [s]), view.affine, view.axis)[0]

    image, gt, pred, lesion = (shown(a) for a in (view.image, view.gt, view.pred, comp))
    row_mm, col_mm = display_spacing(view.spacing, view.affine, view.axis)
    n_slices = view.gt.shape[view.axis]
    name = axis_name(view.affine, view.axis)
    diameter = float(row["diameter_mm"])
    dice_text = f"case Dice {case_dice:.3f}" if case_dice is not None and math.isfinite(float(case_dice)) else ""
    if kind != "largest false positive" and row.get("dice") not in (None, ""):
        dice_text += f", lesion Dice {float(row['dice']):.3f}"
    # The largest lesion missed is drawn once, as the largest lesion: the title says it was missed.
    said = f"{kind}, missed" if kind == "largest lesion" and not row.get("found") else kind
    title = (f"{row['case']}, {row['class_name']}: {said}\n"
             f"{name} slice {s} (of 0-{n_slices - 1}), {diameter:.1f} mm ({int(row['voxels'])} voxels), {dice_text}")

    rs, cs = _crop_box(lesion, image.shape)
    crop = _enlarge(image[rs, cs], gt[rs, cs], pred[rs, cs])
    fig = _figure(9.0, 5.0)
    left, right = fig.subplots(1, 2)
    left.imshow(overlay(image, gt, pred), interpolation="nearest", aspect=row_mm / col_mm)
    left.add_patch(Rectangle((cs.start - 0.5, rs.start - 0.5), cs.stop - cs.start, rs.stop - rs.start,
                             fill=False, edgecolor="white", linestyle="--", linewidth=1))
    left.set_title(f"whole slice ({image.shape[1]} x {image.shape[0]} px)", fontsize=9)
    right.imshow(overlay(*crop), interpolation="nearest", aspect=row_mm / col_mm)
    right.set_title(f"crop ({cs.stop - cs.start} x {rs.stop - rs.start} px, "
                    f"{(cs.stop - cs.start) * col_mm:.0f} x {(rs.stop - rs.start) * row_mm:.0f} mm)", fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    left.set_xlabel("patient's right on the left (radiological view)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    _legend(fig)
    _save(fig, path, title.replace("\n", "; "))
    return LesionFigure(path, title.replace("\n", "; "), str(row["case"]), int(row["class"]),
                        str(row["class_name"]), kind, s, diameter)


def _strip_slices(indices: np.ndarray) -> tuple[list[int], bool]:
    if len(indices) <= MAX_STRIP_SLICES:
        return [int(i) for i in indices], False
    pick = np.unique(np.round(np.linspace(0, len(indices) - 1, MAX_STRIP_SLICES)).astype(int))
    return [int(indices[i]) for i in pick], True


def case_strip(path: str | os.PathLike, case: str, view: CaseView, case_dice: float | None,
               columns: int = 8) -> str | None:
    """Every slice of a case holding ground truth or prediction, cropped to where they are.

    Returns the figure's title, or None (nothing written) when the case holds neither.
    """
    other_axes = tuple(a for a in range(3) if a != view.axis)
    fg = (view.gt != 0) | (view.pred != 0)
    indices = np.flatnonzero(np.any(fg, axis=other_axes))
    if indices.size == 0:
        return None
    chosen, sampled = _strip_slices(indices)
    image, gt, pred = (display_volume(planes(a, view.axis, chosen), view.affine, view.axis)
                       for a in (view.image, view.gt, view.pred))
    rs, cs = _crop_box(np.any((gt != 0) | (pred != 0), axis=0), image.shape[1:])
    row_mm, col_mm = display_spacing(view.spacing, view.affine, view.axis)
    name = axis_name(view.affine, view.axis)
    n = len(chosen)
    cols = min(columns, n)
    rows_n = math.ceil(n / cols)
    dice_text = f", mean Dice {case_dice:.3f}" if case_dice is not None else ""
    title = (f"{case}{dice_text}: {indices.size} {name} slice(s) {int(indices[0])}-{int(indices[-1])} hold ground "
             f"truth or prediction" + (f" ({n} evenly spaced shown)" if sampled else ""))
    fig = _figure(1.9 * cols, 2.0 * rows_n + 0.9)
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, k, im, g, p in zip(axes, chosen, image, gt, pred):
        ax.imshow(overlay(*_enlarge(im[rs, cs], g[rs, cs], p[rs, cs], side=128)), interpolation="nearest",
                  aspect=row_mm / col_mm)
        ax.set_title(f"slice {k}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    _legend(fig)
    _save(fig, Path(path), title)
    return title


# ---------------------------------------------------------------------------------------------
# Prediction overlays


def write_volume_overlays(out_dir: str | os.PathLike, case: str, image_u8: np.ndarray, labels: np.ndarray,
                          affine: np.ndarray, axis: int, spacing: Sequence[float],
                          class_names: Mapping[int, str]) -> list[Path]:
    """PNGs of the slices of a predicted volume that hold foreground, and a montage of them.

    Args:
        out_dir: the ``overlays/`` folder; slices go to ``CASE/slice_SSS.png`` and the montage to
            ``CASE.png``.
        image_u8: (I, J, K) windowed image (:func:`display_image`); labels (I, J, K) predicted.
        affine, axis: the grid and the array axis slices are taken along (radiological view).
        spacing: voxel size in mm per array axis (pixels of anisotropic slices are drawn to scale
            in the montage).
        class_names: foreground class id -> name, for the montage's legend.

    Returns:
        the slice PNGs written (none when nothing is predicted) followed by the montage, whose
        title says when the prediction is empty.
    """
    out = Path(out_dir)
    other_axes = tuple(a for a in range(3) if a != axis)
    indices = np.flatnonzero(np.any(labels != 0, axis=other_axes))
    written: list[Path] = []
    from ..report.pictures import _encode_png

    if indices.size:
        image, lab = (display_volume(planes(a, axis, indices), affine, axis) for a in (image_u8, labels))
        for k, im, la in zip(indices, image, lab):
            rgb = overlay_prediction(np.repeat(im[..., None], 3, axis=2), la)
            (big,) = _enlarge(rgb)
            path = out / case / f"slice_{int(k):03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _encode_png(big))
            written.append(path)
    name = axis_name(affine, axis)
    n_slices = labels.shape[axis]
    shown_idx = [int(i) for i in indices] if indices.size else [n_slices // 2]
    chosen, sampled = _strip_slices(np.asarray(shown_idx))
    image, lab = (display_volume(planes(a, axis, chosen), affine, axis) for a in (image_u8, labels))
    row_mm, col_mm = display_spacing(spacing, affine, axis)
    if indices.size:
        title = (f"{case}: prediction on {indices.size} of {n_slices} {name} slices "
                 f"({int(indices[0])}-{int(indices[-1])})" + (f", {len(chosen)} evenly spaced shown" if sampled else ""))
    else:
        title = f"{case}: nothing predicted on any of {n_slices} {name} slices (middle slice shown)"
    cols = min(6, len(chosen))
    rows_n = math.ceil(len(chosen) / cols)
    fig = _figure(2.4 * cols + 0.4, 2.5 * rows_n + 0.9)
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, k, im, la in zip(axes, chosen, image, lab):
        ax.imshow(overlay_prediction(np.repeat(im[..., None], 3, axis=2), la), interpolation="nearest",
                  aspect=row_mm / col_mm)
        ax.set_title(f"slice {k}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    _legend(fig, class_names)
    montage = out / f"{case}.png"
    montage.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, montage, title)
    return written + [montage]


__all__ = ["CaseView", "LesionFigure", "KINDS", "axis_name", "case_strip", "display_image", "display_spacing",
           "display_volume", "lesion_figures", "pick_lesions", "png_title", "write_volume_overlays"]
