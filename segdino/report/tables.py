"""The report's text: what was evaluated (header lines) and the summary and lesion tables (Markdown)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import run_files
from ..metrics import METRICS, SURFACE_METRICS


def pretrained_of(run_dir: str | os.PathLike | None = None, model_file: str | os.PathLike | None = None) -> bool | None:
    """Whether a model's training started from pretrained weights, or None when nothing says.

    Read from the run's ``config.yaml`` (key ``pretrained``), else from the metadata of our model
    file (a run folder's ``best.safetensors``), which training writes too.
    """
    saved = run_files.recorded_config(run_dir) or {}
    if isinstance(saved.get("pretrained"), bool):
        return saved["pretrained"]
    if model_file is not None:
        path = Path(model_file)
        if path.is_dir():
            path = run_files.run_weights(path)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                value = (f.metadata() or {}).get("pretrained")
        except Exception:  # not our file (ONNX, the authors' .pth): nothing recorded
            value = None
        if value in ("true", "false"):
            return value == "true"
    return None


def header_lines(*, model: str | None = None, predictions: str | None = None, data: str | None = None,
                 split: str | None = None, split_source: str | None = None,
                 pretrained: bool | None = None) -> list[str]:
    """The facts at the top of a report: what was scored, on which split, and how it was trained."""
    lines = []
    if model:
        lines.append(f"Model: `{model}`")
    if predictions:
        lines.append(f"Predictions: `{predictions}`")
    if data:
        lines.append(f"Data: `{data}`")
    if split:
        lines.append(f"Split: {split}" + (f" (from {split_source})" if split_source else ""))
    if pretrained is not None:
        lines.append("pretrained: true" if pretrained else
                     "pretrained: false (the backbone was trained from random weights, far below what "
                     "pretrained DINOv3 weights give; see docs/WEIGHTS.md)")
    return lines


# ---------------------------------------------------------------------------------------------
# Tables


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
