"""The report: ``report.md`` with its figures, and the same as one page, ``report.html``.

Layout written by :func:`write_report` into ``out_dir``::

    report.md                  the report (links below are relative to it)
    figures/dice_histogram.png
    figures/learning_curves.png   when a run's log.csv is given
    figures/case_best.png, case_median.png, case_worst.png   when case images are given
    figures/dice_per_class.png   with several classes; dice_vs_size.png; lowest_cases.png
    report.html                the same report as one self-contained page (figures embedded)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import run_files
from ..errors import DataError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..metrics import SURFACE_METRICS
from .page import markdown_to_html
from .pictures import LEGEND, _case_picture, _encode_png
from .plots import plot_case_grid, plot_class_boxes, plot_dice_histogram, plot_dice_vs_size, plot_learning_curves
from .tables import _case_scores, _lesion_section, _summary_table

FIGURES = run_files.FIGURES

CaseSource = Mapping[str, Sequence[np.ndarray]] | Callable[[str], Sequence[np.ndarray]]


def write_report(
    out_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    cases: CaseSource | None = None,
    log_csv: str | os.PathLike | None = None,
    title: str = "SegDINO evaluation",
    distance_unit: str = "px",
    header: Sequence[str] = (),
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
        header: lines shown under the title (:func:`header_lines`: model, split, pretrained).
        sections: Markdown lines added after the case pictures (figures they link are already
            written under ``figures/``), e.g. the lesion-centred figures of volumes.

    Returns:
        Path of ``report.md``.
    """
    out = Path(out_dir)
    fig_dir = out / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    scores = _case_scores(rows)
    case_data = _case_reader(cases)

    lines = [f"# {title}", ""]
    for h in header:
        lines += [h, ""]
    lines += _summary_lines(summary, len(scores), distance_unit)
    lines += _dice_figures(fig_dir, rows)
    lines += _learning_curve_lines(fig_dir, log_csv)
    if cases is not None and scores:
        lines += _case_lines(fig_dir, scores, case_data)
    lines += list(sections)
    lines += _failure_lines(rows)
    lines += _lowest_lines(fig_dir, scores, case_data if cases is not None else None)

    text = "\n".join(lines)
    path = out / run_files.REPORT_MD
    atomic_write_text(path, text)
    atomic_write_text(out / run_files.REPORT_HTML, markdown_to_html(text, out, title))
    return path


def _case_reader(cases: CaseSource | None) -> Callable[[str], Sequence[np.ndarray]]:
    def case_data(name: str):
        try:
            return cases(name) if callable(cases) else cases[name]
        except KeyError:
            raise DataError(f"report: no image data for case {name!r}") from None

    return case_data


def _summary_lines(summary: Mapping[str, Any], num_scored: int, distance_unit: str) -> list[str]:
    lines = [
        f"{summary.get('num_cases', num_scored)} cases. Metrics per case and foreground class at the "
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
    return lines


def _dice_figures(fig_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    plot_dice_histogram(fig_dir / "dice_histogram.png", rows)
    lines = ["## Dice per case", "", f"![Dice histogram]({FIGURES}/dice_histogram.png)", ""]
    if plot_class_boxes(fig_dir / "dice_per_class.png", rows):
        lines += [f"![Dice per class]({FIGURES}/dice_per_class.png)", ""]
    if plot_dice_vs_size(fig_dir / "dice_vs_size.png", rows):
        lines += ["## Dice against lesion size", "",
                  "Each point is a case and class with a non-empty ground truth.", "",
                  f"![Dice against lesion size]({FIGURES}/dice_vs_size.png)", ""]
    return lines


def _learning_curve_lines(fig_dir: Path, log_csv: str | os.PathLike | None) -> list[str]:
    if log_csv is None:
        return []
    if plot_learning_curves(fig_dir / "learning_curves.png", log_csv):
        return ["## Learning curves", "", f"![Learning curves]({FIGURES}/learning_curves.png)", ""]
    return ["## Learning curves", "", f"`{log_csv}` has no loss or validation columns to plot.", ""]


def _case_lines(fig_dir: Path, scores: list[tuple[str, float]], case_data) -> list[str]:
    n = len(scores)
    # With fewer than three cases, best and worst come first; no case is shown twice.
    picks = [("best", scores[0])]
    if n >= 3:
        picks.append(("median", scores[n // 2]))
    if n >= 2:
        picks.append(("worst", scores[-1]))
    lines = ["## Cases", "", f"Contours: {LEGEND}.", ""]
    for label, (name, dice) in picks:
        picture, note = _case_picture(case_data(name))
        fname = f"case_{label}.png"
        atomic_write_bytes(fig_dir / fname, _encode_png(picture))
        lines += [
            f"### {label.capitalize()}: {name}, mean Dice {dice:.3f}{note}",
            "",
            f"![{label} case: {name}]({FIGURES}/{fname})",
            "",
        ]
    return lines


def _failure_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    failed = sorted(
        {
            (str(r["case"]), str(r.get("class_name", r.get("class"))))
            for r in rows
            if any(r.get(f"{m}_failed") for m in SURFACE_METRICS)
        }
    )
    lines = ["## Surface-distance failures", ""]
    if failed:
        lines += [f"{len(failed)} case/class pairs where exactly one of prediction and ground truth is empty:", ""]
        lines += [f"- {c} ({k})" for c, k in failed[:50]]
        if len(failed) > 50:
            lines.append(f"- ... and {len(failed) - 50} more (see the per-case CSV)")
    else:
        lines.append("None: HD95 and ASD are defined for every case.")
    return lines + [""]


def _lowest_lines(fig_dir: Path, scores: list[tuple[str, float]], case_data) -> list[str]:
    if not scores:
        return []
    lowest = sorted(scores, key=lambda t: (t[1], t[0]))[:10]
    lines = ["## Lowest Dice", "", "| case | mean Dice |", "|---|---|"]
    lines += [f"| {c} | {d:.3f} |" for c, d in lowest]
    lines.append("")
    if case_data is not None and len(scores) > 3:
        pictures = []
        for name, dice in lowest:
            picture, note = _case_picture(case_data(name))
            pictures.append((picture, f"{name}: Dice {dice:.3f}{note.replace(' (', chr(10) + '(')}"))
        plot_case_grid(fig_dir / "lowest_cases.png", pictures)
        lines += [f"The {len(lowest)} lowest cases. Contours: {LEGEND}.", "",
                  f"![The lowest cases]({FIGURES}/lowest_cases.png)", ""]
    return lines
