"""``segdino data check`` for volume datasets: read every case, report what is there and what is wrong.

Each problem names the file(s) concerned. A dataset is usable (``ok``) when every case reads,
labels match their images in shape and geometry, label values are those of ``dataset.json``
(when it names them), and the training split is not empty.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.imageio import load_image, read_image
from ..errors import ConfigError, DataError
from ..progress import track
from .io import grid_differences, read_volume
from .layouts import VolumeCase, VolumeCases, find_volume_cases, volume_layout
from .slicing import array_axes_of_world

LAYOUT_NAMES = {
    "nnunet": "nnU-Net raw (3D)",
    "nnunet-2d": "nnU-Net raw (2D images)",
    "decathlon": "Medical Segmentation Decathlon task",
    "images-labels": "images/ + labels/ volumes",
}
MAX_LISTED_PROBLEMS = 100


@dataclass
class CaseInfo:
    """What the check found for one case (sizes in voxels, spacing in mm)."""

    case_id: str
    subset: str
    image: str
    label: str | None
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    label_counts: dict[int, int] | None = None  # label value -> voxel count
    axes: str | None = None  # the patient axis each array axis runs along, e.g. "x, y, z"


@dataclass
class VolumeCheckReport:
    """Result of :func:`check_volume_dataset`; ``str(report)`` is :func:`format_report`."""

    root: str
    layout: str | None
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases: list[CaseInfo] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    split_source: str | None = None
    label_names: dict[int, str] | None = None
    channel: int | None = None
    channel_names: list[str] | None = None
    geometry_mismatches: list[str] = field(default_factory=list)
    empty_labels: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # cases whose image had NaN/inf voxels

    @property
    def summary(self) -> dict[str, Any]:
        """Counts over the cases that read: volumes, shapes, spacings, per-label voxels and volumes."""
        read = [c for c in self.cases if c.shape is not None]
        totals: dict[int, int] = {}
        volumes_with: dict[int, int] = {}
        for c in read:
            for v, n in (c.label_counts or {}).items():
                totals[v] = totals.get(v, 0) + n
                if n:
                    volumes_with[v] = volumes_with.get(v, 0) + 1
        return {
            "volumes": len(self.cases),
            "read": len(read),
            "labelled": sum(c.label is not None for c in self.cases),
            "shapes": sorted({c.shape for c in read}),
            "spacings": sorted({c.spacing for c in read if c.spacing is not None}),
            "axes": sorted({c.axes for c in read if c.axes is not None}),
            "label_voxels": dict(sorted(totals.items())),
            "label_volumes": dict(sorted(volumes_with.items())),
            "geometry_mismatches": len(self.geometry_mismatches),
            "empty_labels": len(self.empty_labels),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary
        return d

    def __str__(self) -> str:
        return format_report(self)


def _label_counts(array: np.ndarray, path: Path, problems: list[str]) -> dict[int, int] | None:
    a = np.asarray(array)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            bad = np.unique(a[~(np.isfinite(a) & (a == np.round(a)))])[:5]
            problems.append(f"{path}: label volume has non-integer values, e.g. {bad.tolist()}")
            return None
        a = a.astype(np.int64)
    elif a.dtype == bool:
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        problems.append(f"{path}: label volume has data type {a.dtype}, expected integers")
        return None
    if a.size and a.min() < 0:
        problems.append(f"{path}: label volume has negative values, e.g. {np.unique(a[a < 0])[:5].tolist()}")
        return None
    if a.size and a.max() > 65535:
        values, counts = np.unique(a, return_counts=True)
        return {int(v): int(n) for v, n in zip(values, counts)}
    counts = np.bincount(a.ravel().astype(np.int64, copy=False)) if a.size else np.zeros(0, np.int64)
    return {int(v): int(n) for v, n in enumerate(counts) if n}


def _read_2d(case: VolumeCase) -> tuple[np.ndarray, np.ndarray | None]:
    image = read_image(case.image)
    if case.label is None:
        return image, None
    # The common reader: known formats only, size checked from the header before decoding.
    im, _ = load_image(case.label, "label image")
    if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"{case.label}: label image has mode {im.mode}; expected an index "
                        "(greyscale or palette) image with values 0..K-1")
    try:
        label = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DataError(f"{case.label}: cannot read label image ({e})") from None
    return image, label


def _check_case(case: VolumeCase, found: VolumeCases, report: VolumeCheckReport) -> None:
    info = CaseInfo(case.case_id, case.subset, str(case.image), str(case.label) if case.label else None)
    report.cases.append(info)
    if not found.is_3d:
        try:
            image, label = _read_2d(case)
        except DataError as e:
            report.problems.append(str(e))
            return
        info.shape = tuple(int(s) for s in image.shape[:2])
        if label is None:
            return
        if label.shape != image.shape[:2]:
            report.problems.append(f"{case.label}: label size {label.shape} differs from image {case.image} "
                                   f"size {image.shape[:2]}")
            report.geometry_mismatches.append(case.case_id)
        counts = _label_counts(label, case.label, report.problems)
        _check_values(case, counts, found, report, info)
        return
    try:
        image = read_volume(case.image, case.channel)
    except DataError as e:
        report.problems.append(str(e))
        return
    info.shape = image.shape
    info.spacing = tuple(round(float(s), 4) for s in image.spacing)
    info.axes = axes_of(image.affine)
    if case.label is None:
        return
    try:
        label = read_volume(case.label, label=True)
    except DataError as e:
        report.problems.append(str(e))
        return
    if label.shape != image.shape:
        report.problems.append(f"{case.label}: label shape {label.shape} differs from image {case.image} "
                               f"shape {image.shape}")
        report.geometry_mismatches.append(case.case_id)
    else:
        diffs = grid_differences(image, label)
        if diffs:
            report.problems.append(f"{case.label}: label geometry differs from image {case.image}: " + "; ".join(diffs))
            report.geometry_mismatches.append(case.case_id)
    if image.meta.get("nonfinite"):
        report.nonfinite.append(case.case_id)
    counts = _label_counts(label.array, case.label, report.problems)
    _check_values(case, counts, found, report, info)


def _check_values(case: VolumeCase, counts: dict[int, int] | None, found: VolumeCases,
                  report: VolumeCheckReport, info: CaseInfo) -> None:
    if counts is None:
        return
    info.label_counts = counts
    if found.labels is not None:
        extra = sorted(set(counts) - set(found.labels))
        if extra:
            report.problems.append(
                f"{case.label}: label values {extra} are absent from dataset.json labels "
                f"({', '.join(f'{v} {n}' for v, n in found.labels.items())})"
            )
    if not any(n for v, n in counts.items() if v != 0):
        report.empty_labels.append(case.case_id)


def check_volume_dataset(root: str | os.PathLike, channel: int | str | None = None, fold: int = 0,
                         seed: int = 0, progress: bool | str = False) -> VolumeCheckReport:
    """Read every case of a volume dataset and report sizes, spacings, labels and problems.

    ``progress``: show progress per volume (see :func:`segdino.progress.track`).

    Returns a :class:`VolumeCheckReport`: ``ok``, ``problems`` (each naming files) and a
    ``summary``. Never raises for bad data: every finding is in the report.
    """
    root = Path(root)
    report = VolumeCheckReport(str(root), volume_layout(root) if root.is_dir() else None)
    try:
        found = find_volume_cases(root, fold=fold, channel=channel, seed=seed)
    except (DataError, ConfigError) as e:
        report.problems.append(str(e))
        return report
    report.split_source = found.split_source
    report.splits = {k: len(v) for k, v in found.splits.items()}
    report.label_names = found.labels
    report.channel, report.channel_names = found.channel, found.channel_names
    report.problems.extend(found.issues)
    report.notes.extend(found.notes)
    for case in track(found.cases, len(found.cases), "check", "volume", show=progress):
        _check_case(case, found, report)
    unlabelled = found.unlabelled
    if unlabelled:
        report.notes.append(f"{len(unlabelled)} case(s) without labels (not in any split), e.g. "
                            + ", ".join(c.case_id for c in unlabelled[:5]))
    if report.nonfinite:
        report.notes.append(f"{len(report.nonfinite)} image(s) hold NaN or infinite voxels, read as the volume's "
                            "lowest finite value (+infinity as its highest), e.g. " + ", ".join(report.nonfinite[:5]))
    if report.empty_labels:
        report.notes.append(f"{len(report.empty_labels)} label volume(s) hold background only, e.g. "
                            + ", ".join(report.empty_labels[:5]))
    if not found.splits.get("train"):
        report.problems.append(f"{root}: the training split is empty")
    report.ok = not report.problems
    return report


def axes_of(affine: np.ndarray) -> str:
    """The world axis (x: right-left, y: anterior-posterior, z: superior-inferior) each array axis
    runs closest to, in array order, e.g. ``"x, y, z"``."""
    world_axes = array_axes_of_world(affine)
    return ", ".join("xyz"[world_axes.index(a)] for a in range(3))


def shape_text(summary: dict[str, Any]) -> str:
    """Sizes of a check's volumes with their axes and spacing, e.g.
    ``512 x 512 x 48 (x, y, z) at 0.7 x 0.7 x 2.5 mm``; ranges where volumes differ."""
    dims = list(zip(*summary["shapes"]))
    text = " x ".join(_range(list(d), "{:d}") for d in dims)
    axes = summary.get("axes") or []
    if len(axes) == 1:
        text += f" ({axes[0]})"
    elif axes:
        text += " (array axes; their patient axes differ between volumes)"
    if summary.get("spacings"):
        text += " at " + " x ".join(_range(list(d)) for d in zip(*summary["spacings"])) + " mm"
    if len(summary["shapes"]) > 1:
        text += f" ({len(summary['shapes'])} distinct sizes)"
    return text


def _range(values: list[float], fmt: str = "{:.3g}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}..{fmt.format(hi)}"


def format_report(report: VolumeCheckReport) -> str:
    """Human-readable text of a :class:`VolumeCheckReport`: summary, notes, every problem, verdict."""
    s = report.summary
    unit = "images" if report.layout == "nnunet-2d" else "volumes"
    lines: list[str] = []

    def line(key: str, value: str) -> None:
        lines.append(f"{key + ':':<13} {value}")

    line("dataset", report.root)
    line("layout", f"{report.layout} ({LAYOUT_NAMES[report.layout]})" if report.layout in LAYOUT_NAMES
         else "not recognised")
    if report.channel_names:
        chosen = f"; using channel {report.channel}" if report.channel is not None else ""
        line("channels", ", ".join(f"{i} {n}" for i, n in enumerate(report.channel_names)) + chosen)
    if report.cases:
        line(unit, f"{s['volumes']} ({s['labelled']} labelled, {s['read']} read)")
    if s["shapes"]:
        line("sizes", shape_text(s))
    if report.label_names is not None:
        line("labels", ", ".join(f"{v} {n}" for v, n in report.label_names.items()) + " (dataset.json)")
    if s["label_voxels"]:
        names = report.label_names or {}
        what = "pixels" if unit == "images" else "voxels"
        line("label values", f"{len(s['label_voxels'])} distinct")
        for v, n in s["label_voxels"].items():
            name = f" {names[v]}" if v in names else ""
            lines.append(f"  {v}{name}: {n} {what} in {s['label_volumes'].get(v, 0)} {unit}")
    if report.splits:
        line("split", ", ".join(f"{k} {n}" for k, n in report.splits.items()) + f" (from {report.split_source})")
    if report.cases:
        line("geometry", f"{len(report.geometry_mismatches)} label(s) off their image's grid"
             + (f": {', '.join(report.geometry_mismatches[:10])}" if report.geometry_mismatches else ""))
        line("empty labels", str(len(report.empty_labels)))
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.problems:
        line("problems", str(len(report.problems)))
        lines.extend(f"  - {p}" for p in report.problems[:MAX_LISTED_PROBLEMS])
        if len(report.problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(report.problems) - MAX_LISTED_PROBLEMS} more")
    line("result", "usable" if report.ok else "NOT usable")
    return "\n".join(lines)
