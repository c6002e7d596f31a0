"""The report of ``segdino data check``, for 2D and volume datasets alike: :class:`CheckReport`.

Each checker (:mod:`segdino.data.check_pairs` for 2D pairs, :mod:`segdino.volumes.check` for
volumes) fills one; :func:`segdino.data.check.check_dataset` returns it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masks import DEFAULT_THRESHOLD
from .splits import SPLIT_NAMES

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
