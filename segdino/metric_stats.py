"""Statistics of metric values across cases: the numbers a summary reports.

:func:`describe` (mean, std, median, count of the defined values), :func:`summarize` (per class,
HD95/ASD failures counted and scored as the diagonal, never dropped) and
:func:`summarize_lesions` (lesion-wise detection totals). Pure functions over the rows of
:func:`segdino.metrics.case_rows`; this module imports nothing else of the package except its
error type, so the metric functions and every reducer can use it. docs/FORMATS.md describes the
summary file.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import DataError

#: Per-class metric names produced by :func:`segdino.metrics.case_metrics`, in report order
#: (``nsd`` only when a tolerance is given).
METRICS = ("dice", "iou", "nsd", "hd95", "asd", "precision", "recall")
#: Metrics that are undefined when exactly one of P and G is empty.
SURFACE_METRICS = ("hd95", "asd")


def ratio(num: int, den: int, other: int) -> float:
    """num/den, with 1 when den and ``other`` are both empty and 0 when only den is."""
    if den == 0:
        return 1.0 if other == 0 else 0.0
    return num / den



def describe(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "std", "median", "count"}`` of the finite values (std with ddof=1; NaN when
    there are fewer values than the statistic needs)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    return {
        "mean": float(v.mean()) if n else math.nan,
        "std": float(v.std(ddof=1)) if n > 1 else math.nan,
        "median": float(np.median(v)) if n else math.nan,
        "count": n,
    }


def _is_failed(row: Mapping[str, Any], name: str) -> bool:
    flag = row.get(f"{name}_failed")
    if flag is not None:
        return bool(flag)
    value = row.get(name)
    return value is None or (isinstance(value, float) and math.isnan(value))


def summarize(rows: Sequence[Mapping[str, Any]], metric_names: Sequence[str] = METRICS) -> dict[str, Any]:
    """Per-class statistics of per-case rows (as made by :func:`case_rows`).

    Every metric gets ``mean``, ``std`` (sample, ddof=1), ``median`` and ``count`` over its
    defined values. A metric with ``<name>_failed`` flags in the rows (HD95, ASD) also gets
    ``failures`` (how many cases were undefined: never dropped silently) and
    ``with_failures_as_diagonal``: the same statistics with each failure scored as the row's
    ``diagonal`` (required on failed rows).

    Returns::

        {"num_cases": N, "metrics": [...],
         "per_class": {"1": {"class_name": str, "num_cases": n, "dice": {...}, "hd95": {...}, ...}},
         "mean_over_classes": {"dice": {"mean": m}, "hd95": {"mean": m, "mean_with_failures_as_diagonal": m}}}

    Class keys are strings (JSON object keys); ``mean_over_classes`` averages the per-class means.
    A metric of ``metric_names`` that no row holds (NSD without a tolerance) is left out.
    """
    metric_names = [m for m in metric_names if any(m in r for r in rows)] if rows else list(metric_names)
    by_class: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row.get("class", 1), []).append(row)
    per_class: dict[str, Any] = {}
    for cls in sorted(by_class, key=lambda c: (str(type(c)), c)):
        crow = by_class[cls]
        entry: dict[str, Any] = {
            "class_name": str(crow[0].get("class_name", f"class {cls}")),
            "num_cases": len(crow),
        }
        for name in metric_names:
            has_flags = any(f"{name}_failed" in r for r in crow)
            if not has_flags:
                entry[name] = describe(r[name] for r in crow if r.get(name) is not None)
                continue
            defined, with_fail, failures = [], [], 0
            for r in crow:
                if _is_failed(r, name):
                    failures += 1
                    if r.get("diagonal") is None:
                        raise DataError(
                            f"case {r.get('case', '?')} class {cls}: {name} is undefined but the row has no "
                            "'diagonal' to score the failure with"
                        )
                    with_fail.append(float(r["diagonal"]))
                else:
                    defined.append(float(r[name]))
                    with_fail.append(float(r[name]))
            stats = describe(defined)
            stats["failures"] = failures
            stats["with_failures_as_diagonal"] = describe(with_fail)
            entry[name] = stats
        per_class[str(cls)] = entry

    over: dict[str, Any] = {}
    for name in metric_names:
        means = [e[name]["mean"] for e in per_class.values() if e[name]["count"]]
        item = {"mean": float(np.mean(means)) if means else math.nan}
        wf = [
            e[name]["with_failures_as_diagonal"]["mean"]
            for e in per_class.values()
            if "with_failures_as_diagonal" in e[name]
        ]
        if wf:
            item["mean_with_failures_as_diagonal"] = float(np.mean(wf))
        over[name] = item
    return {
        "num_cases": len({r.get("case") for r in rows}),
        "metrics": list(metric_names),
        "per_class": per_class,
        "mean_over_classes": over,
    }


def summarize_lesions(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals of several :func:`lesion_metrics` results (e.g. all test volumes of one class).

    Returns ``num_lesions``, ``found``, ``missed``, ``false_positives``, ``num_pred_components``;
    ``detection_recall`` = found / lesions and ``detection_precision`` = matched P components /
    P components (1 when the denominator is 0 and there is nothing to find or predict, else 0);
    ``detection_f1``; ``lesion_dice``: statistics of the per-lesion Dice over found lesions;
    ``found_lesion_size`` and ``missed_lesion_size``: statistics of the lesions' physical sizes.
    """
    totals = dict.fromkeys(("num_lesions", "found", "missed", "false_positives", "num_pred_components"), 0)
    dice, found_sizes, missed_sizes = [], [], []
    for r in results:
        for k in totals:
            totals[k] += int(r[k])
        for les in r["lesions"]:
            if les["found"]:
                dice.append(les["dice"])
                found_sizes.append(les["size"])
            else:
                missed_sizes.append(les["size"])
    n_tp_pred = totals["num_pred_components"] - totals["false_positives"]
    recall = ratio(totals["found"], totals["num_lesions"], totals["num_pred_components"])
    precision = ratio(n_tp_pred, totals["num_pred_components"], totals["num_lesions"])
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return {
        **totals,
        "detection_recall": recall,
        "detection_precision": precision,
        "detection_f1": f1,
        "lesion_dice": describe(dice),
        "found_lesion_size": describe(found_sizes),
        "missed_lesion_size": describe(missed_sizes),
    }
