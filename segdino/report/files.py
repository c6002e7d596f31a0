"""The evaluation's tables as files: per-case rows as CSV, a summary as strict JSON."""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..fileio import atomic_write_text
from ..summary_file import summary_json


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


def write_summary_json(path: str | os.PathLike, summary: Mapping[str, Any]) -> None:
    """Write a summary dict as strict JSON (NaN and infinities become ``null``), atomically."""
    atomic_write_text(path, summary_json(summary))
