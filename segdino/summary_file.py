"""The evaluation summary (``summary.json``): one format for images and volumes.

A summary holds the statistics at the top (:func:`segdino.metric_stats.summarize`: ``num_cases``,
``metrics``, ``per_class``, ``mean_over_classes``; and ``lesions``, lesion-wise detection per
class name, empty where it was not scored), what was evaluated and how under ``evaluation``
(:data:`EVALUATION_KEYS`, every key present for both kinds), and where the files went under
``outputs``. docs/FORMATS.md describes each field.

Older summaries are still read (:func:`read_summary`): the 2D form nested its facts under
``evaluation`` with fewer keys, the volume form kept them at the top. :class:`Summary` answers
a top-level question about a fact (``summary["split"]``) from ``evaluation``, so code written
against the volume form keeps working on the one format.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import DataError
from .fileio import read_json

#: Version of the format; summaries without it are of the older forms.
SUMMARY_FORMAT = 2
#: The statistics of a summary (top level).
STATISTICS_KEYS = ("num_cases", "metrics", "per_class", "mean_over_classes", "lesions")
#: What ``summary["evaluation"]`` says, with the value of a fact that does not apply.
EVALUATION_KEYS: dict[str, Any] = {
    "kind": None,  # "images" or "volumes"
    "mode": None,  # "model" (predicted here) or "predictions" (files scored)
    "model": None,
    "predictions": None,
    "data": None,
    "layout": None,
    "split": None,
    "split_source": None,
    "cases": [],
    "num_classes": None,
    "class_names": {},
    "distance_unit": "px",
    "nsd_tolerance": None,
    "metrics_at": None,
    "inference": None,
    "device": None,
    "pretrained": None,
    "warning": None,
    "largest_component_classes": [],
    "min_size_mm3": None,
    "min_size_source": None,  # "--min-size", or what the model's training chose it on
    "reoriented": [],
    "resampled": [],
    "ignored_predictions": [],
    "dataset_issues": [],
}


class Summary(dict):
    """A summary (a plain ``dict`` for JSON) whose facts also answer at the top level.

    ``summary["split"]`` is ``summary["evaluation"]["split"]`` unless the top level has its own
    ``split``: the volume form kept its facts there, and its readers index them so.
    """

    def __missing__(self, key):
        facts = dict.get(self, "evaluation")
        if isinstance(facts, Mapping) and key in facts:
            return facts[key]
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key)


def evaluation_facts(kind: str, **facts: Any) -> dict[str, Any]:
    """``summary["evaluation"]``: :data:`EVALUATION_KEYS` with ``facts`` filled in (unknown keys refused).

    Args:
        kind: ``"images"`` or ``"volumes"``.
        facts: the values that apply (e.g. ``split="test"``, ``model="run/best.safetensors"``).
    """
    unknown = sorted(set(facts) - set(EVALUATION_KEYS))
    if unknown:
        raise ValueError(f"not facts of an evaluation summary: {unknown}")
    out = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
           for k, v in EVALUATION_KEYS.items()}
    out.update(facts, kind=kind)
    return out


def make_summary(statistics: Mapping[str, Any], lesions: Mapping[str, Any] | None,
                 facts: Mapping[str, Any]) -> Summary:
    """One summary from the statistics of :func:`segdino.metric_stats.summarize`, the lesion
    summaries by class name (None or empty where not scored) and :func:`evaluation_facts`."""
    summary = Summary(summary_format=SUMMARY_FORMAT)
    summary.update(statistics)
    summary["lesions"] = dict(lesions or {})
    summary["evaluation"] = dict(facts)
    return summary


def normalize_summary(data: Mapping[str, Any]) -> Summary:
    """Any summary form -> the current one (a :class:`Summary`); the input is not changed.

    The 2D form of older versions (facts under ``evaluation``, no ``lesions``) and the volume
    form (facts at the top level) both become :data:`SUMMARY_FORMAT`; statistics, ``outputs``
    and any other key are kept as they were.
    """
    data = dict(data)
    if data.get("summary_format") == SUMMARY_FORMAT and isinstance(data.get("evaluation"), Mapping):
        summary = Summary(data)
        summary["evaluation"] = {**evaluation_facts(data["evaluation"].get("kind") or "images"),
                                 **data["evaluation"]}
        return summary
    nested = isinstance(data.get("evaluation"), Mapping)
    facts = dict(data.pop("evaluation")) if nested else {}
    if not nested:  # the volume form: its facts sit among the statistics
        for key in list(data):
            if key in EVALUATION_KEYS:
                facts[key] = data.pop(key)
    kind = facts.pop("kind", None) or ("images" if nested else "volumes")
    if kind == "volumes":
        facts.setdefault("distance_unit", "mm")  # the volume form scored surface distances in mm
    known = {k: v for k, v in facts.items() if k in EVALUATION_KEYS}
    others = {k: v for k, v in facts.items() if k not in EVALUATION_KEYS}
    return make_summary({k: v for k, v in data.items() if k != "lesions"}, data.get("lesions"),
                        {**evaluation_facts(kind, **known), **others})


def read_summary(path: str | os.PathLike) -> Summary:
    """A ``summary.json`` of any version, in the current form (:func:`normalize_summary`).

    Raises:
        DataError: the file is missing, not JSON, or not a summary (no ``per_class``).
    """
    data = read_json(Path(path), DataError, "evaluation summary")
    if not isinstance(data, Mapping) or not isinstance(data.get("per_class"), Mapping):
        raise DataError(f"{path}: not an evaluation summary (expected a JSON object with per_class)")
    return normalize_summary(data)


def _jsonable(value: Any) -> Any:
    import numpy as np

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


def summary_json(summary: Mapping[str, Any]) -> str:
    """A summary as strict JSON text (NaN and infinities become ``null``)."""
    return json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n"


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def format_summary(summary: Mapping[str, Any], unit: str | None = None) -> str:
    """A few lines for the console: per class mean Dice, IoU, HD95 (with failures), ASD and,
    when scored, NSD.

    ``summary``: any form (:func:`normalize_summary`). ``unit``: of the surface distances
    (default: the summary's own, ``px`` for images, ``mm`` for volumes with spacing).
    """
    s = normalize_summary(summary)
    facts = s["evaluation"]
    unit = unit or facts.get("distance_unit") or "px"
    lines = [f"{s.get('num_cases', 0)} cases" + (f" ({facts['split']} split)" if facts.get("split") else "")]
    for cid, e in s.get("per_class", {}).items():
        d, iou = e.get("dice", {}), e.get("iou", {})
        hd, asd = e.get("hd95", {}), e.get("asd", {})
        line = (f"  {e.get('class_name', cid)}: Dice {_num(d.get('mean'))} ± {_num(d.get('std'))} "
                f"(median {_num(d.get('median'))}), IoU {_num(iou.get('mean'))}, "
                f"HD95 {_num(hd.get('mean'), 2)} {unit} over {hd.get('count', 0)} cases")
        if hd.get("failures"):
            line += (f" ({hd['failures']} undefined: one mask empty; "
                     f"{_num(hd.get('with_failures_as_diagonal', {}).get('mean'), 2)} with them as the diagonal)")
        line += f", ASD {_num(asd.get('mean'), 2)} {unit}"
        if "nsd" in e and facts.get("nsd_tolerance") is not None:
            line += f", NSD at {facts['nsd_tolerance']:g} {unit} {_num(e['nsd'].get('mean'))}"
        lines.append(line)
    if facts.get("warning"):
        lines.append(f"  warning: {facts['warning']}")
    return "\n".join(lines)
