"""Evaluation outputs: per-case CSV, summary JSON, and a report with figures (Markdown and HTML).

One module per part: :mod:`.files` (CSV and JSON), :mod:`.pictures` (contour overlays),
:mod:`.plots` (matplotlib figures), :mod:`.tables` (the report's header and tables),
:mod:`.page` (Markdown to one HTML page) and :mod:`.document` (:func:`write_report`, which puts
them together). docs/FORMATS.md describes the files.
"""

from .document import FIGURES, CaseSource, write_report
from ..summary_file import _jsonable
from .files import write_case_csv, write_summary_json
from .page import markdown_to_html
from .pictures import (
    BOTH_COLOUR,
    CLASS_COLOURS,
    GT_COLOUR,
    LEGEND,
    MIN_PICTURE_SIDE,
    OVERLAY_ALPHA,
    PRED_COLOUR,
    _case_picture,
    _encode_png,
    contour,
    overlay,
    overlay_prediction,
    worst_slice,
)
from .plots import (
    learning_curve_panels,
    learning_curves_figure,
    plot_case_grid,
    plot_class_boxes,
    plot_dice_histogram,
    plot_dice_vs_size,
    plot_learning_curves,
    read_log,
)
from .tables import header_lines, pretrained_of

__all__ = [
    "BOTH_COLOUR", "CLASS_COLOURS", "FIGURES", "GT_COLOUR", "LEGEND", "MIN_PICTURE_SIDE", "OVERLAY_ALPHA",
    "PRED_COLOUR", "CaseSource", "contour", "header_lines", "learning_curve_panels", "learning_curves_figure",
    "markdown_to_html", "overlay", "overlay_prediction", "plot_case_grid", "plot_class_boxes",
    "plot_dice_histogram", "plot_dice_vs_size", "plot_learning_curves", "pretrained_of", "read_log",
    "worst_slice", "write_case_csv", "write_report", "write_summary_json",
]
