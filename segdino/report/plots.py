"""The report's plots: Dice histogram, Dice per class and against size, learning curves, case grids.

Matplotlib is imported only inside these functions and drawn through its Agg canvas
(``matplotlib.figure.Figure``), so the global pyplot backend of the calling program is untouched.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write_bytes


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
    """Plot a training log's loss and validation metrics against the epoch; False if it has none.

    Two panels: training loss, and every ``val_*`` column (mean Dice and Dice per class) on one
    axis from 0 to 1. Epochs are whole numbers on the x axis.
    """
    fig = learning_curves_figure(log_csv)
    if fig is None:
        return False
    _save_figure(fig, Path(path))
    return True


def learning_curve_panels(log_csv: str | os.PathLike) -> tuple[str, list[tuple[str, dict]]]:
    """(x name, [(panel title, {column: (x, y)})]): the loss columns, and the ``val_*`` columns."""
    xname, curves = read_log(log_csv)
    loss = {k: v for k, v in curves.items() if "loss" in k}
    val = {k: v for k, v in curves.items() if k.startswith("val") and k not in loss}
    return xname, [(name, c) for name, c in (("training loss", loss), ("validation", val)) if c]


def learning_curves_figure(log_csv: str | os.PathLike):
    """The matplotlib figure of :func:`plot_learning_curves`, or None when there is nothing to plot."""
    from matplotlib.ticker import MaxNLocator

    xname, panels = learning_curve_panels(log_csv)
    if not panels:
        return None
    fig = _figure(4.6 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (title, group) in zip(axes, panels):
        for name, (xs, ys) in group.items():
            label = name.replace("val_dice_", "Dice ").replace("val_dice", "mean Dice").replace("train_loss", "loss")
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel(xname)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == "validation":
            ax.set_ylim(0, 1)
            ax.set_ylabel("Dice")
        if len(group) > 1 or title == "validation":
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def _case_size(row: Mapping[str, Any]) -> tuple[float, str] | None:
    """A case's ground-truth size for a size plot: (equivalent-sphere diameter in mm, "mm") for a
    volume with spacing, else (pixels or voxels, "px"); None when the ground truth is empty."""
    n = row.get("gt_voxels")
    if n is None or not n:
        return None
    spacing = row.get("spacing_mm")
    if spacing:
        try:
            sp = [float(v) for v in str(spacing).split()]
        except ValueError:
            sp = []
        if len(sp) == 3:
            volume = float(n) * sp[0] * sp[1] * sp[2]
            return (6.0 * volume / math.pi) ** (1.0 / 3.0), "mm"
    return float(n), "px"


def plot_dice_vs_size(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Per-case Dice against the ground truth's size (log scale), one colour per class; False
    when no case has a non-empty ground truth."""
    points: dict[str, list[tuple[float, float]]] = {}
    unit = "px"
    for r in rows:
        size = _case_size(r)
        if size is None or r.get("dice") is None or not math.isfinite(float(r["dice"])):
            continue
        unit = size[1]
        points.setdefault(str(r.get("class_name", r.get("class", ""))), []).append((size[0], float(r["dice"])))
    if not points:
        return False
    fig = _figure(5.5, 3.6)
    ax = fig.subplots()
    for name, pts in points.items():
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=14, alpha=0.7, label=f"{name} (n={len(pts)})")
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("ground-truth size, equivalent-sphere diameter (mm)" if unit == "mm" else
                  "ground-truth size (pixels)")
    ax.set_ylabel("Dice")
    ax.set_title("Dice against lesion size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save_figure(fig, Path(path))
    return True


def plot_class_boxes(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> bool:
    """One box plot of per-case Dice per class; False with fewer than two classes."""
    by_class: dict[str, list[float]] = {}
    for r in rows:
        if r.get("dice") is not None and math.isfinite(float(r["dice"])):
            by_class.setdefault(str(r.get("class_name", r.get("class", ""))), []).append(float(r["dice"]))
    if len(by_class) < 2:
        return False
    fig = _figure(max(4.0, 1.2 * len(by_class) + 1.5), 3.6)
    ax = fig.subplots()
    ax.boxplot(list(by_class.values()), showmeans=True)
    ax.set_xticks(range(1, len(by_class) + 1), [f"{k}\n(n={len(v)})" for k, v in by_class.items()])
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice")
    ax.set_title("Dice per class (box: quartiles, triangle: mean)")
    ax.grid(alpha=0.3, axis="y")
    _save_figure(fig, Path(path))
    return True


def plot_case_grid(path: str | os.PathLike, pictures: Sequence[tuple[np.ndarray, str]], columns: int = 5) -> None:
    """Case pictures side by side, each under its title."""
    n = len(pictures)
    cols = min(columns, n)
    rows_n = math.ceil(n / cols)
    fig = _figure(2.6 * cols, 2.9 * rows_n)
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, (picture, title) in zip(axes, pictures):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    for ax in axes[n:]:
        ax.set_visible(False)
    _save_figure(fig, Path(path))
