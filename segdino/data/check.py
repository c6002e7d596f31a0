"""``segdino data check``: what a dataset folder holds, and every problem that would stop training.

:func:`check_dataset` detects the layout, then hands the folder to the checker registered for
the layout's kind (:func:`register_checker`; "2d" is :func:`check_pairs_2d`). A checker fills
a :class:`CheckReport`; the folder is usable when the report has no problems.

The 2D checker reads every image's header and decodes its pixels (JPEGs at 1/8 scale, which
still reads the whole file, so truncation is caught) and decodes every mask fully, on a few
threads. It keeps per-mask value histograms only, so memory stays small.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SegDINOError
from .imageio import exif_orientation, image_info
from .layouts import LayoutScan, Pair, detect_layout
from .masks import DEFAULT_THRESHOLD, foreground_rule, index_like, no_foreground_message, read_mask_file
from .splits import SPLIT_NAMES, resolve_splits

# A mask pixel of an 8-bit binary mask in this open range is neither clearly 0 nor clearly 255.
_MID_GREY = (30, 225)
# An 8-bit mask with more than this fraction of mid-grey pixels is reported as noisy.
_NOISY_FRACTION = 0.01


@dataclass
class CheckOptions:
    num_classes: int | None = None  # None: inferred from the mask values
    mask_threshold: int = DEFAULT_THRESHOLD
    seed: int = 0
    fold: int = 0
    workers: int | None = None
    channel: int | str | None = None  # multi-channel volumes: which channel (plugin checkers)
    progress: bool | str = False  # per-case progress where reading is slow (volumes); see segdino.progress.track


@dataclass
class CheckReport:
    """The findings of a dataset check.

    ``problems`` make the folder unusable (each names its files); ``notes`` are facts worth
    knowing that do not (empty masks, ignored files, cases outside every split).
    """

    root: Path
    layout: str | None = None
    layout_description: str = ""
    unit: str = "pairs"
    pairs: int = 0
    num_classes: int | None = None
    task_inferred: bool = False
    mask_threshold: int = DEFAULT_THRESHOLD
    image_sizes: Counter = field(default_factory=Counter)  # (H, W) -> count
    image_kinds: Counter = field(default_factory=Counter)  # "JPEG RGB" -> count
    mask_kinds: Counter = field(default_factory=Counter)
    masks_per_image: Counter = field(default_factory=Counter)
    mask_values: dict[str, Any] = field(default_factory=dict)
    class_counts: Counter = field(default_factory=Counter)  # label -> number of masks holding it
    empty_masks: list[str] = field(default_factory=list)  # case ids
    noisy_masks: list[str] = field(default_factory=list)
    split_source: str | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)  # checker-specific summary lines
    label_names: dict[int, str] | None = None  # label value -> name (volumes: from dataset.json)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Usable: pairs were found and nothing is wrong."""
        return self.pairs > 0 and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "layout": self.layout, "ok": self.ok, self.unit: self.pairs,
            "num_classes": self.num_classes, "task_inferred": self.task_inferred,
            "mask_threshold": self.mask_threshold,
            "image_sizes": {f"{w}x{h}": c for (h, w), c in self.image_sizes.most_common()},
            "image_kinds": dict(self.image_kinds), "mask_kinds": dict(self.mask_kinds),
            "masks_per_image": {str(k): v for k, v in sorted(self.masks_per_image.items())},
            "mask_values": self.mask_values,
            "class_counts": {str(k): v for k, v in sorted(self.class_counts.items())},
            "empty_masks": self.empty_masks, "noisy_masks": self.noisy_masks,
            "split_source": self.split_source, "split_sizes": self.split_sizes,
            "problems": self.problems, "notes": self.notes, "extra": self.extra,
            "seconds": round(self.seconds, 2),
        }

    def _label_task(self) -> str:
        names = self.label_names or {}

        def named(v: int) -> str:
            return f"{v} {names[v]}" if v in names else (f"{v} background" if v == 0 else str(v))

        source = " (dataset.json)" if names else ""
        if self.num_classes == 1:
            return f"binary: label {named(1)} against {named(0)}{source}"
        values = ", ".join(named(v) for v in range(self.num_classes))
        return f"{self.num_classes} classes, label values {values}{source}"

    def format(self) -> str:
        """A human-readable report: summary, then every problem."""
        lines = [f"dataset:     {self.root}"]
        if self.layout:
            lines.append(f"layout:      {self.layout} ({self.layout_description})")
        lines.append(f"{self.unit + ':':<12} {self.pairs}")
        if self.image_sizes:
            lines.append(f"images:      {_counts(self.image_kinds)}")
            lines.append(f"image sizes: {_sizes(self.image_sizes)}")
        if self.mask_kinds:
            lines.append(f"masks:       {_counts(self.mask_kinds)}; per image: "
                         + ", ".join(f"{k} mask{'s' if k != 1 else ''} x{v}"
                                     for k, v in sorted(self.masks_per_image.items())))
        if self.mask_values:
            lines.append(f"mask values: {self.mask_values.get('summary', '')}")
        # Volumes hold labels (index values), not masks thresholded at a grey level.
        masks = "labels" if self.unit == "volumes" else "masks"
        if self.num_classes is not None:
            how = " (inferred from the values; --num-classes sets it)" if self.task_inferred else ""
            if self.unit == "volumes":
                lines.append(f"task:        {self._label_task()}{how}")
            elif self.num_classes == 1:
                lines.append(f"task:        binary: foreground = value > {self.mask_threshold}, "
                             f"0/1 masks as such{how}")
            else:
                lines.append(f"task:        {self.num_classes} classes, index masks 0..{self.num_classes - 1}{how}")
        if self.class_counts:
            key = "label values:" if self.unit == "volumes" else "class ids:  "
            lines.append(f"{key} " + ", ".join(f"{k} in {v} {masks}" for k, v in sorted(self.class_counts.items())))
        if self.pairs:
            lines.append(f"empty {masks}: {len(self.empty_masks)}"
                         + (f" ({_names(self.empty_masks)})" if self.empty_masks else ""))
        if self.noisy_masks:
            lines.append(f"noisy masks: {len(self.noisy_masks)} with >{_NOISY_FRACTION:.0%} of pixels in grey "
                         f"{_MID_GREY[0]}..{_MID_GREY[1]} (lossy or soft edges): {_names(self.noisy_masks)}")
        for k, v in self.extra.items():
            lines.append(f"{k + ':':<12} {v}")
        if self.split_source:
            sizes = ", ".join(f"{k} {self.split_sizes.get(k, 0)}" for k in SPLIT_NAMES)
            lines.append(f"split:       {sizes} (from {self.split_source})")
        for n in self.notes:
            lines.append(f"note: {n}")
        if self.problems:
            lines.append(f"problems:    {len(self.problems)}")
            lines.extend(f"  - {p}" for p in self.problems)
        lines.append(f"result:      {'usable' if self.ok else 'NOT usable'} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _counts(c: Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in c.most_common())


def _names(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _sizes(sizes: Counter) -> str:
    if len(sizes) == 1:
        (h, w), n = next(iter(sizes.items()))
        return f"all {w}x{h} (WxH)"
    ws = [w for (h, w) in sizes]
    hs = [h for (h, w) in sizes]
    common = ", ".join(f"{w}x{h} x{n}" for (h, w), n in sizes.most_common(3))
    return (f"{len(sizes)} distinct (WxH), width {min(ws)}-{max(ws)}, height {min(hs)}-{max(hs)}; "
            f"most common {common}")


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


# --- 2D pairs ---------------------------------------------------------------------------------


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
        pair = info.pair
        report.problems.extend(info.errors)
        if info.size is not None:
            report.image_sizes[info.size] += 1
            report.image_kinds[info.kind] += 1
        report.masks_per_image[len(pair.masks)] += 1
        for mi in info.masks:
            report.mask_kinds[mi.kind] += 1
        if info.errors:
            continue
        shapes = {mi.shape for mi in info.masks}
        if info.size is not None and any(s != info.size for s in shapes):
            bad = [mi for mi in info.masks if mi.shape != info.size]
            for mi in bad:
                report.problems.append(
                    f"size mismatch: mask {mi.path} is {mi.shape[1]}x{mi.shape[0]}, "
                    f"image {pair.image} is {info.size[1]}x{info.size[0]}")
            continue
        if num_classes == 1:
            index_masks = [mi for mi in info.masks
                           if mi.values.size and index_like(float(mi.values.max()), mi.integral, mi.lossy)]
            for mi in index_masks:
                top = int(mi.values.max())
                report.problems.append(f"{mi.path}: mask values 0..{top} look like an index mask, not a binary "
                                       f"one (0/1, or grey above {opts.mask_threshold}); try --num-classes {top + 1}")
            if index_masks:
                continue
            fg = sum(_foreground_pixels(mi, opts.mask_threshold) for mi in info.masks)
            if fg == 0:
                report.empty_masks.append(pair.case_id)
            else:
                report.class_counts[1] += 1
            for mi in info.masks:
                if mi.values.size and mi.values.max() <= 255 and mi.values.dtype.kind in "iu":
                    lo, hi = _MID_GREY
                    mid = mi.counts[(mi.values > lo) & (mi.values < hi)].sum()
                    if mid > _NOISY_FRACTION * mi.counts.sum():
                        report.noisy_masks.append(pair.case_id)
                        break
        else:
            if len(info.masks) > 1:
                report.problems.append(f"{len(info.masks)} masks for {pair.image} "
                                       f"({', '.join(m.path.name for m in info.masks)}): several masks are "
                                       "united only for a binary task")
                continue
            mi = info.masks[0]
            bad = mi.values[(mi.values < 0) | (mi.values >= num_classes)] if mi.integral else mi.values
            if not mi.integral:
                report.problems.append(f"{mi.path}: an index mask needs whole-number values, found fractions")
                continue
            if bad.size:
                shown = ", ".join(str(v) for v in bad.tolist()[:8]) + (", ..." if bad.size > 8 else "")
                report.problems.append(f"{mi.path}: mask values {shown} do not fit num_classes={num_classes} "
                                       f"(expected 0..{num_classes - 1})")
                continue
            labels = [int(v) for v in mi.values.tolist()]
            for k in labels:
                report.class_counts[k] += 1
            if max(labels) == 0:
                report.empty_masks.append(pair.case_id)

    if num_classes == 1 and report.empty_masks and len(report.empty_masks) == report.pairs:
        report.problems.append(no_foreground_message(opts.mask_threshold))
    elif report.empty_masks:
        report.notes.append(f"{len(report.empty_masks)} empty mask(s) (no foreground): they train as all-background")
    if num_classes > 1:
        missing = [k for k in range(1, num_classes) if report.class_counts.get(k, 0) == 0]
        if missing:
            report.notes.append(f"class id(s) {', '.join(map(str, missing))} appear in no mask")

    try:
        splits = resolve_splits(scan.root, pairs, seed=opts.seed, fold=opts.fold)
        report.split_source = splits.source
        report.split_sizes = splits.sizes()
        if splits.unassigned:
            report.notes.append(f"{len(splits.unassigned)} pair(s) are in no split of {splits.source}: "
                                f"{_names(splits.unassigned, 5)}")
    except SegDINOError as e:
        report.problems.append(str(e))
    return report


register_checker("2d", check_pairs_2d)
