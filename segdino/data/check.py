"""``segdino data check``: what a dataset folder holds, and every problem that would stop training.

:func:`check_dataset` detects the layout, then hands the folder to the checker registered for
the layout's kind (:func:`register_checker`; "2d" is :func:`check_pairs_2d`). A checker fills
a :class:`CheckReport`; the folder is usable when the report has no problems.

One check serves 2D and volume datasets: the report (:mod:`segdino.data.check_report`) is
shared, the 2D checker is :mod:`segdino.data.check_pairs`, the volume checker
:mod:`segdino.volumes.check` (registered by :mod:`segdino.volumes.plugin`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ..errors import SegDINOError
from .check_pairs import check_pairs_2d
from .check_report import CheckOptions, CheckReport
from .layouts import LayoutScan, detect_layout
from .masks import DEFAULT_THRESHOLD


# --- registry ---------------------------------------------------------------------------------

Checker = Callable[[LayoutScan, CheckReport, CheckOptions], CheckReport]
CHECKERS: dict[str, Checker] = {}


def register_checker(kind: str, checker: Checker) -> None:
    """Check layouts of ``kind`` ("2d", "3d", ...) with ``checker(scan, report, options)``."""
    CHECKERS[kind] = checker


def check_dataset(root: str | os.PathLike, num_classes: int | None = None, mask_threshold: int = DEFAULT_THRESHOLD,
                  seed: int = 0, fold: int = 0, workers: int | None = None,
                  channel: int | str | None = None, progress: bool | str = False) -> CheckReport:
    """Check dataset folder ``root`` for training and evaluation.

    Args:
        num_classes: the task (1 = binary, K = index masks 0..K-1); None infers it from the
            mask values (binary unless lossless masks hold small integers beyond 1).
        mask_threshold: binary foreground threshold on 8-bit grey values.
        seed, fold: as for the split rules.
        workers: decoding threads (default: CPU count, at most 8).
        channel: for multi-channel volume datasets, the channel to check (index or name).
        progress: show progress over volumes (True: a bar on a terminal, plain lines elsewhere;
            ``"quiet"``: plain lines only).

    Returns:
        a :class:`CheckReport`; ``report.ok`` says whether the folder is usable. Problems
        (bad files, pairing, sizes, values, split file) are collected, never raised.
    """
    t0 = time.perf_counter()
    report = CheckReport(root=Path(root), mask_threshold=mask_threshold)
    opts = CheckOptions(num_classes, mask_threshold, seed, fold, workers, channel, progress)
    try:
        layout = detect_layout(root)
        report.layout, report.layout_description = layout.name, layout.description
        scan = layout.scan(Path(root))
    except SegDINOError as e:
        report.problems.append(str(e))
        report.seconds = time.perf_counter() - t0
        return report
    checker = CHECKERS.get(scan.kind)
    if checker is None:
        report.problems.append(f"{root}: no checker for {scan.kind} layouts")
    else:
        checker(scan, report, opts)
    report.seconds = time.perf_counter() - t0
    return report


register_checker("2d", check_pairs_2d)


__all__ = ["CHECKERS", "CheckOptions", "CheckReport", "check_dataset", "check_pairs_2d", "register_checker"]
