"""Dataset folders as their releases lay them out (docs/FORMATS.md, "Dataset layouts").

A layout knows how to recognise a folder and how to list its image/mask pairs. The 2D layouts:

- ``images``: ``images/`` with ``masks/`` (or ``labels/``). A mask belongs to the image with the
  same stem, or the stem plus a mask tag (``_segmentation``, ``_mask``, ``_Segmentation``,
  ``_label``, ``_gt``, ...) optionally followed by an index: ``x_mask.png``, ``x_mask_1.png``,
  ``x_mask (2).png`` are all masks of ``x`` and are united for a binary task.
- ``authors``: the SegDINO authors' ``train/image``, ``train/mask``, ``test/image``,
  ``test/mask`` (``val/image``, ``val/mask`` too when present); masks match as above.

Other layouts (nnU-Net, Decathlon, volumes) plug in with :func:`register_layout`; modules named
in :data:`PLUGINS` do so when the first folder is detected.

Every sample is a :class:`Pair`. Its ``case_id`` is the image's file stem (the name a
``splits.json`` uses); ``group`` is the patient or case that a seeded split keeps together,
derived from the name where one can be (``<case>_<image>[(k)]``, see :func:`case_group`).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .cases import Case
from .imageio import is_image_file
from .readers import PLUGINS, load_plugins  # noqa: F401  (importable here as before)

# Words that mark a file as the mask of the image whose stem precedes them.
MASK_TAGS = (
    "segmentation", "segmentations", "seg", "mask", "masks", "label", "labels", "labelmap",
    "gt", "groundtruth", "ground_truth", "annotation", "annotations", "anno", "lesion", "manual",
)
_SEP = r"[_\-. ]"
MASK_TAG_RE = re.compile(
    rf"^{_SEP}?(?:{'|'.join(sorted(MASK_TAGS, key=len, reverse=True))})(?:{_SEP}?\(?\d+\)?)?$",
    re.IGNORECASE,
)
#: nnU-Net names a case's image files CASE_XXXX (XXXX: the channel) and its label and its
#: predictions CASE.
NNUNET_CHANNEL_RE = re.compile(r"^(.+)_(\d{4})$")


def nnunet_case_name(stem: str) -> str | None:
    """``CASE`` of an nnU-Net channel file stem ``CASE_XXXX``, else None."""
    m = NNUNET_CHANNEL_RE.match(stem)
    return m.group(1) if m else None


def in_nnunet_images_folder(path: str | os.PathLike) -> bool:
    """True for a file in the ``imagesTr``/``imagesTs`` (any ``images*``) folder of an nnU-Net
    raw dataset (a ``dataset.json`` beside the folder), whose names carry a channel suffix."""
    folder = Path(path).parent
    return folder.name.startswith("images") and (folder.parent / "dataset.json").is_file()


@dataclass
class Pair(Case):
    """One image with its mask file(s): the 2D :class:`~segdino.data.cases.Case`.

    Attributes:
        case_id: unique name of the sample: the image's file stem (prefixed by its subset,
            ``train/x``, only where two subsets of the authors' layout share a stem).
        image: the image file.
        masks: its mask files (several are united for a binary task).
        group: the case (patient) the sample belongs to; seeded splits keep a group together.
        layout: name of the layout that found the pair.
        subset: the release's own subset (``train``/``val``/``test`` in the authors' layout), else None.
    """

    case_id: str
    image: Path
    masks: list[Path]
    group: str = ""
    layout: str = ""
    subset: str | None = None

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.case_id

    @property
    def label_files(self) -> tuple[Path, ...]:
        return tuple(self.masks)


@dataclass
class LayoutScan:
    """What a layout found in a folder: pairs, pairing problems, and files it ignored."""

    root: Path
    layout: str
    pairs: list[Pair]
    problems: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    kind: str = "2d"


@dataclass
class Layout:
    """A recognisable dataset layout.

    ``detect(root)`` says whether ``root`` has this layout; ``scan(root)`` lists its pairs.
    ``kind`` ("2d", "3d") lets the data checker pick the checker that fits.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    scan: Callable[[Path], LayoutScan]
    kind: str = "2d"


LAYOUTS: list[Layout] = []


def register_layout(layout: Layout, first: bool = False) -> None:
    """Add a layout to the ones :func:`detect_layout` tries (in order; ``first`` puts it in front)."""
    global LAYOUTS
    LAYOUTS = [lay for lay in LAYOUTS if lay.name != layout.name]
    if first:
        LAYOUTS.insert(0, layout)
    else:
        LAYOUTS.append(layout)


# --- pairing ---------------------------------------------------------------------------------


def child_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    """The subfolder of ``root`` whose name is one of ``names`` (case-insensitive), or None.

    Raises:
        DataError: two candidates exist (e.g. both ``masks/`` and ``labels/``).
    """
    if not root.is_dir():
        return None
    wanted = {n.lower() for n in names}
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in wanted)
    if len(found) > 1:
        raise DataError(f"{root}: ambiguous layout, found both {' and '.join(p.name + '/' for p in found)}")
    return found[0] if found else None


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files of ``folder`` (sorted by name) and the other entries it ignores."""
    images, ignored = [], []
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if is_image_file(p):
            images.append(p)
        elif not p.name.startswith("."):
            ignored.append(p)
    return images, ignored


_AUGMENT_PREFIX = re.compile(r"^(?:flipped|mirrored|flip|mirror|rot\d*|rotated|aug\w*?)[_\-]", re.IGNORECASE)
_CASE_PREFIX = re.compile(r"^([A-Za-z]*\d+)[_\-]")


def case_group(stem: str) -> str:
    """The case (patient) a file stem names, or the stem itself where no case can be read.

    ``<case>_<rest>`` with ``<case>`` a number, optionally after letters (``100_1(2)`` -> ``100``,
    ``patient7_slice3`` -> ``patient7``), after dropping a leading augmentation tag
    (``flipped_10001_103`` -> ``10001``). :func:`groups_for` checks that the result is plausible.
    """
    s = _AUGMENT_PREFIX.sub("", stem, count=1)
    m = _CASE_PREFIX.match(s)
    return m.group(1) if m else stem


def groups_for(case_ids: list[str]) -> list[str]:
    """Case groups of ``case_ids`` by :func:`case_group`, or the ids themselves when implausible.

    Name-derived groups are kept only when they give at least 3 groups, at least one holds
    several images, and none holds more than max(10, 10%) of all images: a shared prefix such
    as a year (``2019_x``) must not lump a dataset into one case.
    """
    n = len(case_ids)
    groups = [case_group(c.rsplit("/", 1)[-1]) for c in case_ids]
    counts = Counter(groups)
    if len(counts) >= 3 and len(counts) < n and max(counts.values()) <= max(10, n // 10):
        return groups
    return list(case_ids)


def match_masks(images: list[Path], masks: list[Path]) -> tuple[dict[Path, list[Path]], list[Path], list[str]]:
    """Assign mask files to images by stem (exact, else stem + mask tag [+ index]).

    Returns:
        (image -> its masks, images without a mask, problems naming files). Images whose stem
        is shared by another image, and masks matching no image, are problems.
    """
    problems: list[str] = []
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in images:
        by_stem[p.stem].append(p)
    for stem, ps in by_stem.items():
        if len(ps) > 1:
            problems.append(f"images with the same name {stem!r}: {', '.join(str(p) for p in ps)}")
    stems = {s: ps[0] for s, ps in by_stem.items() if len(ps) == 1}
    lower: dict[str, Path | None] = {}
    for s, p in stems.items():
        lower[s.lower()] = None if s.lower() in lower else p

    def owner(mstem: str) -> Path | None:
        if mstem in stems:
            return stems[mstem]
        if lower.get(mstem.lower()):
            return lower[mstem.lower()]
        for i in range(len(mstem) - 1, 0, -1):
            base = mstem[:i]
            img = stems.get(base) or lower.get(base.lower())
            if img is not None and MASK_TAG_RE.match(mstem[i:]):
                return img
        return None

    assigned: dict[Path, list[Path]] = defaultdict(list)
    for m in masks:
        img = owner(m.stem)
        if img is None:
            if m.stem in by_stem:  # an ambiguous image stem, already reported
                continue
            problems.append(f"mask without image: {m}")
        else:
            assigned[img].append(m)
    for img, ms in assigned.items():
        per_stem = Counter(m.stem for m in ms)
        dup = [s for s, c in per_stem.items() if c > 1]
        if dup:
            problems.append(f"several mask files with the same name for {img}: "
                            f"{', '.join(str(m) for m in ms if m.stem in dup)}")
        ms.sort(key=lambda q: _mask_order(q.stem))
    unmatched = [p for p in stems.values() if p not in assigned]
    for p in unmatched:
        problems.append(f"image without mask: {p}")
    return dict(assigned), unmatched, problems


def _mask_order(stem: str) -> tuple:
    # x_mask before x_mask_1 before x_mask_2 ... before x_mask_10
    m = re.search(r"(\d+)\)?$", stem)
    return (m is not None, int(m.group(1)) if m else 0, stem)


def _folder_pairs(image_dir: Path, mask_dir: Path, layout: str, subset: str | None) -> LayoutScan:
    images, ignored = list_files(image_dir)
    masks, ignored_m = list_files(mask_dir)
    if not images:
        raise DataError(f"{image_dir}: no image files (expected {', '.join(sorted(_SUFFIX_HINT))})")
    assigned, _, problems = match_masks(images, masks)
    pairs = [Pair(case_id=img.stem, image=img, masks=assigned[img], layout=layout, subset=subset)
             for img in images if img in assigned]
    return LayoutScan(image_dir.parent, layout, pairs, problems, ignored + ignored_m)


_SUFFIX_HINT = (".png", ".jpg", ".gif", ".bmp", ".tif")


# --- images/ + masks/ ----------------------------------------------------------------------------

_IMAGE_DIRS = ("images",)
_MASK_DIRS = ("masks", "labels")


def _detect_images(root: Path) -> bool:
    return child_dir(root, _IMAGE_DIRS) is not None


def _scan_images(root: Path) -> LayoutScan:
    image_dir = child_dir(root, _IMAGE_DIRS)
    mask_dir = child_dir(root, _MASK_DIRS)
    if image_dir is None:
        raise DataError(f"{root}: no images/ folder")
    if mask_dir is None:
        raise DataError(f"{root}: {image_dir.name}/ found but no masks/ or labels/ folder beside it")
    scan = _folder_pairs(image_dir, mask_dir, "images", None)
    scan.root = root
    ids = [p.case_id for p in scan.pairs]
    for p, g in zip(scan.pairs, groups_for(ids)):
        p.group = g
    return scan


# --- the authors' train|test/image|mask ------------------------------------------------------------

AUTHORS_SUBSETS = ("train", "val", "test")


def _detect_authors(root: Path) -> bool:
    train = child_dir(root, ("train",))
    return train is not None and child_dir(train, ("image",)) is not None


def _scan_authors(root: Path) -> LayoutScan:
    scans = []
    for subset in AUTHORS_SUBSETS:
        sub = child_dir(root, (subset,))
        if sub is None:
            continue
        image_dir, mask_dir = child_dir(sub, ("image",)), child_dir(sub, ("mask",))
        if image_dir is None and mask_dir is None:
            continue
        if image_dir is None or mask_dir is None:
            have, lack = ("image", "mask") if image_dir is not None else ("mask", "image")
            raise DataError(f"{sub}: {have}/ found but no {lack}/ folder beside it")
        scans.append(_folder_pairs(image_dir, mask_dir, "authors", subset))
    pairs = [p for s in scans for p in s.pairs]
    stems = Counter(p.case_id for p in pairs)
    if any(c > 1 for c in stems.values()):  # the same name in two subsets: keep ids unique
        for p in pairs:
            p.case_id = f"{p.subset}/{p.case_id}"
    for subset in AUTHORS_SUBSETS:
        members = [p for p in pairs if p.subset == subset]
        for p, g in zip(members, groups_for([p.case_id for p in members])):
            p.group = g
    return LayoutScan(root, "authors", pairs,
                      [q for s in scans for q in s.problems], [q for s in scans for q in s.ignored])


register_layout(Layout("images", "images/ + masks/ (or labels/)", _detect_images, _scan_images))
register_layout(Layout("authors", "train|test/image + train|test/mask (the SegDINO authors' layout)",
                       _detect_authors, _scan_authors))


# --- entry points ---------------------------------------------------------------------------------


def _describe_layouts() -> str:
    return "; ".join(lay.description for lay in LAYOUTS)


# The modules of readers.PLUGINS add layouts (and their split rules, checkers and file formats)
# through a ``register()`` function; readers.load_plugins loads them on first use, so that reading a
# 2D folder never pays for them.


def detect_layout(root: str | os.PathLike) -> Layout:
    """The layout of dataset folder ``root`` (plugin layouts, e.g. volumes, are tried first).

    Raises:
        DataError: ``root`` is missing, empty, or has no known layout (the message says what
            was expected and what the folder holds).
    """
    load_plugins()
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (a dataset is a folder, e.g. with images/ and masks/)")
    for lay in LAYOUTS:
        if lay.detect(root):
            return lay
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise DataError(f"{root}: the folder is empty (expected a dataset: {_describe_layouts()})")
    hint = ""
    subdirs = [root / e.rstrip("/") for e in entries if e.endswith("/")]
    inner = [d.name for d in subdirs if any(lay.detect(d) for lay in LAYOUTS)]
    if inner:
        hint = f"; did you mean {root / inner[0]}?"
    shown = ", ".join(entries[:10]) + (f", ... ({len(entries)} entries)" if len(entries) > 10 else "")
    raise DataError(f"{root}: no known dataset layout (expected {_describe_layouts()}); found {shown}{hint}")


def scan_dataset(root: str | os.PathLike) -> LayoutScan:
    """Detect the layout of ``root`` and list its pairs, with the problems found while pairing.

    Raises:
        DataError: no layout, or a layout-level failure (e.g. an images/ folder without images).
    """
    root = Path(root)
    scan = detect_layout(root).scan(root)
    if not scan.pairs and not scan.problems:
        raise DataError(f"{root}: no image/mask pairs found")
    return scan


def find_pairs(root: str | os.PathLike, allow_unpaired: bool = False) -> list[Pair]:
    """The image/mask pairs of dataset folder ``root``, in a stable order (layout, then name).

    Each pair knows its layout (``pair.layout``); :func:`detect_layout` gives the layout itself.

    Args:
        allow_unpaired: keep going when some images have no mask (or masks no image); those
            files are left out. By default any pairing problem is a :class:`DataError`.

    Raises:
        DataError: empty folder, unknown layout, no pairs, or (unless ``allow_unpaired``)
            pairing problems, each naming its files.
    """
    scan = scan_dataset(root)
    if scan.problems and not allow_unpaired:
        shown = "; ".join(scan.problems[:5])
        more = f"; and {len(scan.problems) - 5} more" if len(scan.problems) > 5 else ""
        raise DataError(f"{root}: {len(scan.problems)} pairing problem(s): {shown}{more} "
                        f"(run `segdino data check --data {root}` for the full list)")
    if not scan.pairs:
        raise DataError(f"{root}: no image/mask pairs found")
    return scan.pairs
