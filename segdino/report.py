"""Evaluation outputs: per-case CSV, summary JSON, and a Markdown report with figures.

Layout written by :func:`write_report` into ``out_dir``::

    report.md                  the report (links below are relative to it)
    figures/dice_histogram.png
    figures/learning_curves.png   when a run's log.csv is given
    figures/case_best.png, case_median.png, case_worst.png   when case images are given

Matplotlib is imported only inside the plotting functions and drawn through its Agg canvas
(``matplotlib.figure.Figure``), so the global pyplot backend of the calling program is untouched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .errors import DataError
from .fileio import atomic_write_bytes, atomic_write_text
from .metrics import METRICS, SURFACE_METRICS

#: Contour colours of :func:`overlay` (RGB) and their meaning, shown as the report's legend.
GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 255)
BOTH_COLOUR = (255, 255, 0)
LEGEND = "green: ground truth contour, magenta: prediction contour, yellow: where the two coincide"
#: Tint of each predicted class in overlays (class k uses entry (k - 1) mod len).
CLASS_COLOURS = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 128, 255), (128, 255, 0),
                 (255, 0, 0), (0, 0, 255))
OVERLAY_ALPHA = 0.35

FIGURES = "figures"
#: Case pictures smaller than this (longest side, pixels) are enlarged by a whole factor.
MIN_PICTURE_SIDE = 256

CaseSource = Mapping[str, Sequence[np.ndarray]] | Callable[[str], Sequence[np.ndarray]]


# ---------------------------------------------------------------------------------------------
# Tables as files


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(float(value)) else repr(float(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(str(v) for v in np.asarray(value).ravel().tolist())
    return value


def write_case_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write per-case rows as CSV, atomically.

    Columns are the union of the rows' keys in first-seen order. Booleans are written 1/0,
    undefined values (None, NaN) as empty cells, so a spreadsheet or pandas reads them as missing.
    """
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        # JSON has no NaN/Infinity; an undefined statistic is null.
        return float(value) if math.isfinite(float(value)) else None
    return value


def write_summary_json(path: str | os.PathLike, summary: Mapping[str, Any]) -> None:
    """Write a summary dict as strict JSON (NaN and infinities become ``null``), atomically."""
    atomic_write_text(path, json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n")


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


# ---------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def plot_dice_histogram(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Histogram of per-case Dice (one panel per class, bins of 0.05) saved as PNG."""
    from matplotlib.ticker import MaxNLocator

    by_class: dict[str, list[float]] = {}
    for r in rows:
        name = str(r.get("class_name", r.get("class", "")))
        if r.get("dice") is not None and math.isfinite(float(r["dice"])):
            by_class.setdefault(name, []).append(float(r["dice"]))
    n = max(1, len(by_class))
    fig = _figure(4.5 * min(n, 3), 3.2 * math.ceil(n / 3))
    axes = fig.subplots(math.ceil(n / 3), min(n, 3), squeeze=False).ravel()
    for ax, (name, values) in zip(axes, by_class.items()):
        ax.hist(values, bins=np.linspace(0, 1, 21), color="#4477aa", edgecolor="white")
        ax.set_title(f"{name} (n={len(values)}, mean {np.mean(values):.3f})")
        ax.set_xlabel("Dice")
        ax.set_ylabel("cases")
        ax.set_xlim(0, 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(by_class) :]:
        ax.set_visible(False)
    _save_figure(fig, Path(path))


def read_log(path: str | os.PathLike) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """Numeric columns of a training ``log.csv`` -> (x name, {column: (x values, y values)}).

    The x axis is ``epoch`` when present, else the row number. A column is numeric when all its
    non-empty cells parse as numbers; empty cells are skipped (e.g. validation every few epochs).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: no such training log") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the training log as CSV ({e})") from None
    if not records:
        return "epoch", {}
    xname = "epoch" if "epoch" in records[0] else "row"
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for col in records[0]:
        if col is None or col == xname:
            continue
        xs, ys, numeric = [], [], True
        for i, rec in enumerate(records):
            cell = (rec.get(col) or "").strip()
            if not cell:
                continue
            try:
                y = float(cell)
                x = float(rec["epoch"]) if xname == "epoch" else float(i)
            except (TypeError, ValueError):
                numeric = False
                break
            xs.append(x)
            ys.append(y)
        if numeric and ys:
            curves[col] = (xs, ys)
    return xname, curves


def plot_learning_curves(path: str | os.PathLike, log_csv: str | os.PathLike) -> bool:
    """Plot every numeric column of ``log_csv`` against epoch, one panel each; False if none."""
    xname, curves = read_log(log_csv)
    if not curves:
        return False
    n = len(curves)
    cols = min(n, 3)
    fig = _figure(4.2 * cols, 2.9 * math.ceil(n / cols))
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    for ax, (name, (xs, ys)) in zip(axes, curves.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, color="#aa3377")
        ax.set_title(name)
        ax.set_xlabel(xname)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    _save_figure(fig, Path(path))
    return True


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _stat_cell(stats: Mapping[str, Any], digits: int) -> str:
    if not stats or not stats.get("count"):
        return "n/a"
    std = stats.get("std")
    spread = f" ± {_fmt(std, digits)}" if std is not None and math.isfinite(std) else ""
    return f"{_fmt(stats['mean'], digits)}{spread} (median {_fmt(stats['median'], digits)})"


def _case_scores(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """(case, mean Dice over its classes), sorted from best to worst, ties by name."""
    per_case: dict[str, list[float]] = {}
    for r in rows:
        per_case.setdefault(str(r["case"]), []).append(float(r["dice"]))
    return sorted(((c, float(np.mean(v))) for c, v in per_case.items()), key=lambda t: (-t[1], t[0]))


def _metric_label(m: str) -> str:
    return {"hd95": "HD95", "asd": "ASD", "iou": "IoU", "nsd": "NSD"}.get(m, m.capitalize())


def _summary_table(summary: Mapping[str, Any], unit: str) -> list[str]:
    """One column per class, one row per statistic (classes are few, statistics many)."""
    per_class = summary.get("per_class", {})
    names = [m for m in summary.get("metrics", METRICS) if any(m in e for e in per_class.values())]
    header = ["metric"] + [f"{e.get('class_name', c)} ({c})" for c, e in per_class.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| cases | " + " | ".join(str(e.get("num_cases", "")) for e in per_class.values()) + " |")
    for m in names:
        label = _metric_label(m)
        if m == "nsd" and summary.get("nsd_tolerance") is not None:
            label = f"NSD at {summary['nsd_tolerance']:g} {unit}"
        digits = 2 if m in SURFACE_METRICS else 3
        stats = [e.get(m, {}) for e in per_class.values()]
        if any("failures" in s for s in stats):
            lines.append(
                f"| {label} ({unit}), defined cases | "
                + " | ".join(f"{_stat_cell(s, digits)}, n={s.get('count', 0)}" for s in stats)
                + " |"
            )
            lines.append(
                f"| {label} ({unit}), failures scored as diagonal | "
                + " | ".join(_stat_cell(s.get("with_failures_as_diagonal", {}), digits) for s in stats)
                + " |"
            )
            lines.append(f"| {label} failures | " + " | ".join(str(s.get("failures", 0)) for s in stats) + " |")
        else:
            lines.append(f"| {label} | " + " | ".join(_stat_cell(s, digits) for s in stats) + " |")
    return lines


def _lesion_section(lesions: Mapping[str, Any]) -> list[str]:
    # One summarize_lesions result, or several keyed by class name.
    blocks = {"": lesions} if "found" in lesions else lesions
    lines = [
        "## Lesion-wise detection",
        "",
        "A ground-truth lesion (connected component) is found when a predicted component overlaps it; "
        "a predicted component overlapping no lesion is a false positive.",
        "",
        "| class | lesions | found | missed | false positives | detection recall | detection precision | "
        "lesion Dice (found) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in blocks.items():
        lines.append(
            f"| {name or 'all'} | {s['num_lesions']} | {s['found']} | {s['missed']} | {s['false_positives']} | "
            f"{_fmt(s.get('detection_recall'))} | {_fmt(s.get('detection_precision'))} | "
            f"{_stat_cell(s.get('lesion_dice', {}), 3)} |"
        )
    return lines + [""]


def write_report(
    out_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    cases: CaseSource | None = None,
    log_csv: str | os.PathLike | None = None,
    title: str = "SegDINO evaluation",
    distance_unit: str = "px",
    sections: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: folder to write into (created).
        rows: per-case rows (:func:`segdino.metrics.case_rows`).
        summary: :func:`segdino.metrics.summarize` of ``rows``; an optional ``"lesions"`` entry
            (a :func:`segdino.metrics.summarize_lesions` result, or a dict of them by class name)
            adds a lesion-detection table.
        cases: where to get the pictures of the best, median and worst cases (ranked by their
            mean Dice over classes): a mapping or a callable ``case name -> (image, gt, pred)``.
            2D cases: image (H, W, 3) uint8 or (H, W), labels (H, W). 3D cases: image (D, H, W),
            labels (D, H, W); the slice along axis 0 with the most wrong voxels is shown. Only
            the (at most) three chosen cases are requested.
        log_csv: a training run's ``log.csv``; its numeric columns are plotted against epoch.
        title: first heading of the report.
        distance_unit: unit of HD95/ASD in the table ("px" for images, "mm" with spacing).
        sections: Markdown lines added after the case pictures (figures they link are already
            written under ``figures/``), e.g. the lesion-centred figures of volumes.

    Returns:
        Path of ``report.md``.
    """
    out = Path(out_dir)
    fig_dir = out / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    scores = _case_scores(rows)

    lines = [f"# {title}", ""]
    lines += [
        f"{summary.get('num_cases', len(scores))} cases. Metrics per case and foreground class at the "
        f"image's own resolution; statistics are mean ± std (median). HD95 and ASD are in {distance_unit}; "
        "they are undefined when exactly one of prediction and ground truth is empty: such cases are "
        "counted as failures, summarised over the defined cases, and again with each failure scored as "
        "the image/volume diagonal.",
        "",
        "## Summary",
        "",
        *_summary_table(summary, distance_unit),
        "",
    ]
    if summary.get("lesions"):
        lines += _lesion_section(summary["lesions"])

    if rows:
        plot_dice_histogram(fig_dir / "dice_histogram.png", rows)
        lines += ["## Dice per case", "", f"![Dice histogram]({FIGURES}/dice_histogram.png)", ""]

    if log_csv is not None:
        lines += ["## Learning curves", ""]
        if plot_learning_curves(fig_dir / "learning_curves.png", log_csv):
            lines += [f"![Learning curves]({FIGURES}/learning_curves.png)", ""]
        else:
            lines += [f"`{log_csv}` has no numeric columns to plot.", ""]

    if cases is not None and scores:
        n = len(scores)
        # With fewer than three cases, best and worst come first; no case is shown twice.
        picks = [("best", scores[0])]
        if n >= 3:
            picks.append(("median", scores[n // 2]))
        if n >= 2:
            picks.append(("worst", scores[-1]))
        lines += ["## Cases", "", f"Contours: {LEGEND}.", ""]
        for label, (name, dice) in picks:
            try:
                data = cases(name) if callable(cases) else cases[name]
            except KeyError:
                raise DataError(f"report: no image data for case {name!r}") from None
            picture, note = _case_picture(data)
            fname = f"case_{label}.png"
            atomic_write_bytes(fig_dir / fname, _encode_png(picture))
            lines += [
                f"### {label.capitalize()}: {name}, mean Dice {dice:.3f}{note}",
                "",
                f"![{label} case: {name}]({FIGURES}/{fname})",
                "",
            ]

    lines += list(sections)

    failed = sorted(
        {
            (str(r["case"]), str(r.get("class_name", r.get("class"))))
            for r in rows
            if any(r.get(f"{m}_failed") for m in SURFACE_METRICS)
        }
    )
    lines += ["## Surface-distance failures", ""]
    if failed:
        lines += [f"{len(failed)} case/class pairs where exactly one of prediction and ground truth is empty:", ""]
        lines += [f"- {c} ({k})" for c, k in failed[:50]]
        if len(failed) > 50:
            lines.append(f"- ... and {len(failed) - 50} more (see the per-case CSV)")
    else:
        lines.append("None: HD95 and ASD are defined for every case.")
    lines.append("")

    if scores:
        lines += ["## Lowest Dice", "", "| case | mean Dice |", "|---|---|"]
        lines += [f"| {c} | {d:.3f} |" for c, d in sorted(scores, key=lambda t: (t[1], t[0]))[:10]]
        lines.append("")

    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
