"""The check of 2D image/mask pairs (the "2d" checker of :mod:`segdino.data.check`).

Every image's header is read and its pixels decoded (JPEGs at 1/8 scale, which still reads the
whole file, so truncation is caught) and every mask decoded fully, on a few threads. Only
per-mask value histograms are kept, so memory stays small.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegDINOError
from .check_report import _MID_GREY, _NOISY_FRACTION, CheckOptions, CheckReport, _names
from .imageio import exif_orientation, image_info
from .layouts import LayoutScan, Pair
from .masks import foreground_rule, index_like, no_foreground_message, read_mask_file
from .splits import resolve_splits


@dataclass
class _MaskInfo:
    path: Path
    shape: tuple[int, int]
    kind: str
    lossy: bool
    values: np.ndarray  # distinct raw values
    counts: np.ndarray  # pixels per value
    integral: bool


@dataclass
class _PairInfo:
    pair: Pair
    size: tuple[int, int] | None = None
    kind: str = ""
    masks: list[_MaskInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    turned: list[Path] = field(default_factory=list)  # files read turned by their EXIF orientation


def _histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    if values.dtype == np.uint8:
        counts = np.bincount(values.ravel(), minlength=256)
        nz = np.flatnonzero(counts)
        return nz.astype(np.int64), counts[nz], True
    if np.issubdtype(values.dtype, np.floating):
        v, c = np.unique(values, return_counts=True)
        return v, c, bool(np.all(np.isfinite(v)) and np.all(v == np.round(v)))
    v, c = np.unique(values, return_counts=True)
    return v.astype(np.int64), c, True


def _inspect(pair: Pair) -> _PairInfo:
    info = _PairInfo(pair)
    try:
        size, mode, fmt = image_info(pair.image, decode=True)
        info.size, info.kind = size, f"{fmt} {mode}"
    except SegDINOError as e:
        info.errors.append(str(e))
    info.turned = [p for p in [pair.image, *pair.masks] if exif_orientation(p)]
    for m in pair.masks:
        try:
            values, fmt, mode = read_mask_file(m)
        except SegDINOError as e:
            info.errors.append(str(e))
            continue
        v, c, integral = _histogram(values)
        kind = f"{fmt} {mode}"
        info.masks.append(_MaskInfo(m, values.shape[:2], kind, fmt == "JPEG", v, c, integral))
    return info


def _foreground_pixels(mi: _MaskInfo, threshold: int) -> int:
    """Foreground pixels of one mask under :func:`segdino.data.masks.foreground_rule`."""
    v, c = mi.values, mi.counts
    if not v.size:
        return 0
    op, cut = foreground_rule(float(v.max()), bool(np.issubdtype(v.dtype, np.floating)), threshold, mi.lossy)
    return int(c[v == cut].sum()) if op == "==" else int(c[v > cut].sum())


def _infer_num_classes(infos: list[_PairInfo]) -> int:
    masks = [mi for info in infos for mi in info.masks]
    if not masks:
        return 1
    if any(mi.lossy or not mi.integral for mi in masks):
        return 1
    top = max(float(mi.values.max()) for mi in masks if mi.values.size)
    # Small whole numbers beyond 1 in lossless files: an index mask. 0/255 or grey: binary.
    return int(top) + 1 if index_like(top, True, False) else 1


def _value_summary(infos: list[_PairInfo]) -> dict[str, Any]:
    masks = [mi for info in infos for mi in info.masks]
    if not masks:
        return {}
    totals: Counter = Counter()
    for mi in masks:
        for v, c in zip(mi.values.tolist(), mi.counts.tolist()):
            totals[v] += c
    pixels = sum(totals.values())
    distinct = sorted(totals)
    lo, hi = distinct[0], distinct[-1]
    fmt = (lambda x: f"{x:g}") if isinstance(lo, float) else str
    if len(distinct) <= 8:
        summary = ", ".join(f"{fmt(v)} ({totals[v] / pixels:.1%} of pixels)" for v in distinct)
    else:
        top2 = totals.most_common(2)
        share = sum(c for _, c in top2) / pixels
        summary = (f"{fmt(lo)}..{fmt(hi)}, {len(distinct)} distinct; "
                   f"{' and '.join(fmt(v) for v, _ in top2)} make {share:.1%} of pixels")
    return {"min": lo, "max": hi, "distinct": len(distinct), "summary": summary}


def _check_binary(info: _PairInfo, report: CheckReport, threshold: int) -> None:
    """One pair of a binary task: index-like masks, empty masks, noisy grey masks."""
    index_masks = [mi for mi in info.masks
                   if mi.values.size and index_like(float(mi.values.max()), mi.integral, mi.lossy)]
    for mi in index_masks:
        top = int(mi.values.max())
        report.problems.append(f"{mi.path}: mask values 0..{top} look like an index mask, not a binary "
                               f"one (0/1, or grey above {threshold}); try --num-classes {top + 1}")
    if index_masks:
        return
    if sum(_foreground_pixels(mi, threshold) for mi in info.masks) == 0:
        report.empty_masks.append(info.pair.case_id)
    else:
        report.class_counts[1] += 1
    for mi in info.masks:
        if mi.values.size and mi.values.max() <= 255 and mi.values.dtype.kind in "iu":
            lo, hi = _MID_GREY
            mid = mi.counts[(mi.values > lo) & (mi.values < hi)].sum()
            if mid > _NOISY_FRACTION * mi.counts.sum():
                report.noisy_masks.append(info.pair.case_id)
                break


def _check_index(info: _PairInfo, report: CheckReport, num_classes: int) -> None:
    """One pair of a multi-class task: one mask of whole numbers 0..num_classes-1."""
    if len(info.masks) > 1:
        report.problems.append(f"{len(info.masks)} masks for {info.pair.image} "
                               f"({', '.join(m.path.name for m in info.masks)}): several masks are "
                               "united only for a binary task")
        return
    mi = info.masks[0]
    if not mi.integral:
        report.problems.append(f"{mi.path}: an index mask needs whole-number values, found fractions")
        return
    bad = mi.values[(mi.values < 0) | (mi.values >= num_classes)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad.tolist()[:8]) + (", ..." if bad.size > 8 else "")
        report.problems.append(f"{mi.path}: mask values {shown} do not fit num_classes={num_classes} "
                               f"(expected 0..{num_classes - 1})")
        return
    labels = [int(v) for v in mi.values.tolist()]
    for k in labels:
        report.class_counts[k] += 1
    if max(labels) == 0:
        report.empty_masks.append(info.pair.case_id)


def _check_pair(info: _PairInfo, report: CheckReport, num_classes: int, threshold: int) -> None:
    """Count one inspected pair into ``report`` and record its problems."""
    pair = info.pair
    report.problems.extend(info.errors)
    if info.size is not None:
        report.image_sizes[info.size] += 1
        report.image_kinds[info.kind] += 1
    report.masks_per_image[len(pair.masks)] += 1
    for mi in info.masks:
        report.mask_kinds[mi.kind] += 1
    if info.errors:
        return
    if info.size is not None and any(mi.shape != info.size for mi in info.masks):
        for mi in info.masks:
            if mi.shape != info.size:
                report.problems.append(
                    f"size mismatch: mask {mi.path} is {mi.shape[1]}x{mi.shape[0]}, "
                    f"image {pair.image} is {info.size[1]}x{info.size[0]}")
        return
    if num_classes == 1:
        _check_binary(info, report, threshold)
    else:
        _check_index(info, report, num_classes)


def _check_splits(scan: LayoutScan, report: CheckReport, opts: CheckOptions) -> None:
    try:
        splits = resolve_splits(scan.root, scan.pairs, seed=opts.seed, fold=opts.fold)
        report.split_source = splits.source
        report.split_sizes = splits.sizes()
        if splits.unassigned:
            report.notes.append(f"{len(splits.unassigned)} pair(s) are in no split of {splits.source}: "
                                f"{_names(splits.unassigned, 5)}")
    except SegDINOError as e:
        report.problems.append(str(e))


def check_pairs_2d(scan: LayoutScan, report: CheckReport, opts: CheckOptions) -> CheckReport:
    """Check the 2D image/mask pairs of ``scan`` into ``report`` (see :func:`check_dataset`)."""
    report.problems.extend(scan.problems)
    if scan.ignored:
        report.notes.append(f"ignored {len(scan.ignored)} non-image entr{'y' if len(scan.ignored) == 1 else 'ies'} "
                            f"in the image/mask folders: {_names([str(p) for p in scan.ignored], 5)}")
    pairs = scan.pairs
    report.pairs = len(pairs)
    if not pairs:
        report.problems.append(f"{scan.root}: no image/mask pairs")
        return report
    if opts.num_classes is not None and opts.num_classes < 1:
        report.problems.append(f"num_classes must be >= 1, got {opts.num_classes}")
        return report

    workers = opts.workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(pool.map(_inspect, pairs))

    num_classes = opts.num_classes
    if num_classes is None:
        num_classes = _infer_num_classes(infos)
        report.task_inferred = True
    report.num_classes = num_classes
    report.mask_values = _value_summary(infos)

    turned = [p for info in infos for p in info.turned]
    if turned:
        report.notes.append(f"{len(turned)} file(s) carry an EXIF orientation and are read turned as a viewer "
                            f"shows them (images and masks alike): {_names([str(p) for p in turned], 5)}")
    for info in infos:
        _check_pair(info, report, num_classes, opts.mask_threshold)

    if num_classes == 1 and report.empty_masks and len(report.empty_masks) == report.pairs:
        report.problems.append(no_foreground_message(opts.mask_threshold))
    elif report.empty_masks:
        report.notes.append(f"{len(report.empty_masks)} empty mask(s) (no foreground): they train as all-background")
    if num_classes > 1:
        missing = [k for k in range(1, num_classes) if report.class_counts.get(k, 0) == 0]
        if missing:
            report.notes.append(f"class id(s) {', '.join(map(str, missing))} appear in no mask")
    _check_splits(scan, report, opts)
    return report
