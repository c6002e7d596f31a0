"""One evaluator for images and volumes: score cases, reduce, write the summary and the report.

:func:`evaluate` takes the scored pairs of a split (:class:`ScoredCase`: prediction and ground
truth labels of any dimension, with the voxel spacing) and a :class:`Source` that says what they
are (images or volumes, class count and names, the facts of the summary, the report's pictures);
a :class:`MetricAccumulator` gathers the per-case rows of :mod:`segdino.metrics` (and, for
volumes, the lesion-wise results), across processes too when a process group is given, and
:func:`write_evaluation` writes the one summary format (:mod:`segdino.summary_file`), the per-case
CSV files and the report. The 2D entry points are in :mod:`segdino.evaluation`, the volume ones
in :mod:`segdino.volumes.evaluate`; docs/ARCHITECTURE.md shows where this sits.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import run_files
from .errors import DataError
from .fileio import atomic_write_text
from .metric_stats import summarize, summarize_lesions
from .metrics import case_rows, lesion_metrics
from .progress import track
from .report import header_lines, write_case_csv, write_report, write_summary_json
from .summary_file import Summary, evaluation_facts, make_summary

log = logging.getLogger("segdino.evaluation")

LESION_COLUMNS = ("case", "class", "class_name", "kind", "lesion", "voxels", "volume_mm3", "diameter_mm", "found",
                  "dice", "pred_components", "bbox")


@dataclass
class ScoredCase:
    """One case to score: predicted and ground-truth labels on the same grid.

    Attributes:
        case_id: the case's name.
        pred, gt: integer labels, ``(H, W)`` or ``(D, H, W)``, the same shape.
        spacing: voxel size per axis (mm for volumes); None for images (pixels).
        extras: columns added to each of the case's rows (image size, prediction file).
        where: what to name in a message about this pair (its files).
    """

    case_id: str
    pred: np.ndarray
    gt: np.ndarray
    spacing: Sequence[float] | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""


@dataclass
class Source:
    """What a run of :func:`evaluate` scores and how its outputs describe it.

    Attributes:
        kind: ``"images"`` or ``"volumes"``.
        num_classes: 1 = binary, K >= 2 = labels 0..K-1.
        class_names: names by class id (a mapping, or a sequence from the background).
        facts: the summary's ``evaluation`` facts (:data:`segdino.summary_file.EVALUATION_KEYS`);
            read after scoring, so a case source may add to its lists (``reoriented`` ...).
        title: the report's first heading.
        picture: ``case_id -> (image, gt, pred)`` for the report's case pictures, or None.
        log_csv: a training run's ``log.csv`` for the learning curves, or None.
        nsd_tolerance: also score NSD at this distance (units of the spacing).
        lesions: score lesion-wise detection and write ``lesions.csv``.
        sections: ``(out, rows, lesion_rows) -> Markdown lines`` added to the report.
        missing_warning: how a class that never occurs is explained (None: pred or gt decide).
        unit: what one case is called in progress lines.
    """

    kind: str
    num_classes: int
    class_names: Mapping[int, str] | Sequence[str] | None
    facts: dict[str, Any]
    title: str
    picture: Callable[[str], Sequence[np.ndarray]] | None = None
    log_csv: Path | None = None
    nsd_tolerance: float | None = None
    lesions: bool = False
    sections: Callable[[Path, list, list], list[str]] | None = None
    missing_warning: str | None = None
    unit: str = "case"


class MetricAccumulator:
    """Per-case metric rows gathered over cases (and processes), reduced to statistics.

    Each :meth:`add` computes :func:`segdino.metrics.case_rows` of one case (and, with
    ``lesions``, :func:`segdino.metrics.lesion_metrics` per class); :meth:`gather` collects the
    cases scored by every process of a ``torch.distributed`` group; :meth:`statistics` and
    :meth:`lesion_summaries` reduce them. ``rows`` and ``lesion_rows`` are the CSV rows.
    """

    def __init__(self, num_classes: int, class_names=None, nsd_tolerance: float | None = None,
                 lesions: bool = False):
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.nsd_tolerance = nsd_tolerance
        self.lesions = lesions
        self.rows: list[dict[str, Any]] = []
        self.lesion_rows: list[dict[str, Any]] = []
        self.lesion_results: dict[str, list[Mapping[str, Any]]] = {}
        self.max_gt = 0
        self.max_pred = 0

    def add(self, case: ScoredCase) -> list[dict[str, Any]]:
        """Score one case; returns its rows (one per foreground class)."""
        try:
            rows = case_rows(case.case_id, case.pred, case.gt, self.num_classes, case.spacing, self.class_names,
                             self.nsd_tolerance)
        except DataError as e:
            raise DataError(f"{case.where}: {e}" if case.where else str(e)) from None
        self.max_gt = max(self.max_gt, int(np.max(case.gt, initial=0)))
        self.max_pred = max(self.max_pred, int(np.max(case.pred, initial=0)))
        for row in rows:
            if self.lesions:
                self._add_lesions(case, row)
            row.update(case.extras)
        self.rows += rows
        return rows

    def _add_lesions(self, case: ScoredCase, row: dict[str, Any]) -> None:
        c, name = row["class"], row["class_name"]
        binary = self.num_classes == 1
        p, g = (case.pred != 0, case.gt != 0) if binary else (case.pred == c, case.gt == c)
        les = lesion_metrics(p, g, case.spacing)
        self.lesion_results.setdefault(name, []).append(les)
        self.lesion_rows += lesion_rows(case.case_id, c, name, les)
        row.update(lesions=les["num_lesions"], lesions_found=les["found"], lesions_missed=les["missed"],
                   lesion_false_positives=les["false_positives"])

    def merge(self, others: Iterable["MetricAccumulator"]) -> "MetricAccumulator":
        """This accumulator with the cases of ``others`` added after its own."""
        for o in others:
            self.rows += o.rows
            self.lesion_rows += o.lesion_rows
            for name, res in o.lesion_results.items():
                self.lesion_results.setdefault(name, []).extend(res)
            self.max_gt, self.max_pred = max(self.max_gt, o.max_gt), max(self.max_pred, o.max_pred)
        return self

    def gather(self, group=None) -> "MetricAccumulator":
        """The cases of every process of ``group`` (default: the initialised default group) merged
        into each process's accumulator; unchanged without ``torch.distributed``."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(group)
        parts: list[Any] = [None] * world
        mine = (self.rows, self.lesion_rows, self.lesion_results, self.max_gt, self.max_pred)
        dist.all_gather_object(parts, mine, group=group)
        rank = dist.get_rank(group)
        others = []
        for i, part in enumerate(parts):
            if i == rank:
                continue
            other = MetricAccumulator(self.num_classes, self.class_names, self.nsd_tolerance, self.lesions)
            other.rows, other.lesion_rows, other.lesion_results, other.max_gt, other.max_pred = part
            others.append(other)
        self.merge(others)
        # Processes score interleaved shares of the cases: one order for every process.
        self.rows.sort(key=lambda r: str(r["case"]))
        self.lesion_rows.sort(key=lambda r: str(r["case"]))
        return self

    def statistics(self) -> dict[str, Any]:
        """:func:`segdino.metric_stats.summarize` of the rows."""
        return summarize(self.rows)

    def lesion_summaries(self) -> dict[str, Any]:
        """``{class name: summarize_lesions(...)}`` of every scored class (lesion scoring only)."""
        return {name: summarize_lesions(res) for name, res in self.lesion_results.items()}

    def missing_classes(self, with_predictions: bool) -> list[int]:
        """Classes of a multi-class task that no ground truth (or prediction) holds."""
        top = max(self.max_gt, self.max_pred) if with_predictions else self.max_gt
        return list(range(top + 1, self.num_classes)) if self.num_classes > 1 else []


def lesion_rows(case: str, c: int, name: str, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``lesions.csv`` rows of one case and class: one per lesion and per false positive."""
    rows = []
    for les in result["lesions"]:
        rows.append({"case": case, "class": c, "class_name": name, "kind": "lesion", "lesion": les["lesion"],
                     "voxels": les["voxels"], "volume_mm3": les["size"],
                     "diameter_mm": _diameter(les["size"]), "found": les["found"], "dice": les["dice"],
                     "pred_components": les["pred_components"], "bbox": _bbox_text(les["bbox"])})
    for i, fp in enumerate(result["false_positive_components"], 1):
        rows.append({"case": case, "class": c, "class_name": name, "kind": "false positive", "lesion": i,
                     "voxels": fp["voxels"], "volume_mm3": fp["size"], "diameter_mm": _diameter(fp["size"]),
                     "found": None, "dice": None, "pred_components": 1, "bbox": _bbox_text(fp["bbox"])})
    return rows


def _diameter(volume_mm3: float) -> float:
    """Diameter in mm of the sphere with this volume: a lesion's size as radiologists quote it."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def _bbox_text(bbox) -> str:
    return " ".join(f"{a}:{b}" for a, b in bbox)


def evaluate(cases: Iterable[ScoredCase], source: Source, out: str | Path, *, total: int | None = None,
             progress: bool | str = False, group=None) -> Summary:
    """Score every case, reduce, and write the summary, the CSV files and the report into ``out``.

    Args:
        cases: the scored pairs, in order (a generator is read once).
        source: what they are (:class:`Source`).
        out: the report folder.
        total: the number of cases, for progress lines.
        progress: True a bar on a terminal (plain lines elsewhere), ``"quiet"`` plain lines only.
        group: a ``torch.distributed`` process group whose processes scored the other cases;
            every process then holds the whole summary (only rank 0 should write: pass ``out``
            on one rank, or write from a gathered accumulator yourself).

    Returns:
        the summary written to ``summary.json`` (:mod:`segdino.summary_file`), with ``outputs``.
    """
    acc = MetricAccumulator(source.num_classes, source.class_names, source.nsd_tolerance, source.lesions)
    for case in track(cases, total, "evaluate", source.unit, show=progress):
        rows = acc.add(case)
        log.info("%s: %s", case.case_id, ", ".join(f"{r['class_name']} Dice {r['dice']:.3f}" for r in rows))
    if group is not None:
        acc.gather(group)
    facts = dict(source.facts)
    missing = acc.missing_classes(with_predictions=source.missing_warning is None)
    if missing:
        facts["warning"] = (f"classes {missing} {source.missing_warning}" if source.missing_warning else
                            f"classes {missing} occur in neither the predictions nor the ground truth")
        log.warning("%s", facts["warning"])
    summary = make_summary(acc.statistics(), acc.lesion_summaries() if source.lesions else None,
                           evaluation_facts(source.kind, **facts))
    write_evaluation(Path(out), acc, summary, source)
    return summary


def write_evaluation(out: Path, acc: MetricAccumulator, summary: Summary, source: Source) -> Summary:
    """Write ``cases.csv``, ``lesions.csv`` (lesion scoring), ``summary.json`` and the report into
    ``out``; ``summary["outputs"]`` names them (and the distance unit)."""
    facts = summary["evaluation"]
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"cases_csv": str(out / run_files.CASES_CSV), "summary_json": str(out / run_files.SUMMARY),
               "report": str(out / run_files.REPORT_MD), "report_html": str(out / run_files.REPORT_HTML),
               "distance_unit": facts["distance_unit"]}
    if source.lesions:
        outputs["lesions_csv"] = str(out / run_files.LESIONS_CSV)
    summary["outputs"] = outputs
    write_case_csv(out / run_files.CASES_CSV, acc.rows)
    if source.lesions and acc.lesion_rows:
        write_case_csv(out / run_files.LESIONS_CSV, acc.lesion_rows)
    elif source.lesions:  # no lesion and no false positive anywhere: the header alone
        atomic_write_text(out / run_files.LESIONS_CSV, ",".join(LESION_COLUMNS) + "\n")
    write_summary_json(out / run_files.SUMMARY, summary)
    header = header_lines(model=facts.get("model"), predictions=facts.get("predictions"), data=facts.get("data"),
                          split=facts.get("split"), split_source=facts.get("split_source"),
                          pretrained=facts.get("pretrained"))
    sections = source.sections(out, acc.rows, acc.lesion_rows) if source.sections is not None else []
    write_report(out, acc.rows, summary, cases=source.picture, log_csv=source.log_csv, title=source.title,
                 distance_unit=facts["distance_unit"], header=header, sections=sections)
    return summary
