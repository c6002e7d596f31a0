"""Prediction files from any tool, matched to a dataset's cases: one rule for images and volumes.

A prediction belongs to case ``x`` when its path (relative to the folder, without its suffix) or
its file stem is ``x``, or is ``x`` followed by a prediction tag (``x_pred.png``,
``x_mask.nii.gz``, ``x-segmentation.png``, as dataset layouts tag masks), or is named after an
nnU-Net image file (``x_0000.png``) where no case ``x_0000`` exists; for volumes, whose nnU-Net
images are channels of a scan, such a name is refused with a hint (nnU-Net names predictions
``x.nii.gz``).
Image predictions are the image and ``.npy`` files of the folder, searched recursively; volume
predictions its NIfTI, MetaImage and NRRD files. A ``segdino predict`` output folder is read
from its ``masks/``. docs/FORMATS.md describes the layouts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import run_files
from .data.layouts import nnunet_case_name
from .data.masks import labels_from_values, read_mask_file
from .errors import DataError
from .volumes.io import is_volume_path, strip_volume_suffix

PREDICTION_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff", ".gif", ".npy", ".jpg", ".jpeg"})
_PRED_TAGS = ("prediction", "predicted", "pred", "segmentation", "seg", "mask", "label", "labels", "output")
_PRED_TAG_RE = re.compile(rf"[_\-. ](?:{'|'.join(_PRED_TAGS)})$", re.IGNORECASE)
MAX_LISTED = 10
KINDS = ("images", "volumes")


class Matches(dict):
    """``{case_id: prediction path}``, with ``ignored``: the files of dataset cases outside the
    cases scored (names, sorted)."""

    ignored: list[str]


def _is_prediction(path: Path, kind: str) -> bool:
    if kind == "volumes":
        return is_volume_path(path)
    return path.suffix.lower() in PREDICTION_SUFFIXES


def _stem(path: Path, kind: str) -> str:
    return strip_volume_suffix(path.name) if kind == "volumes" else path.with_suffix("").name


def prediction_files(folder: str | os.PathLike, kind: str = "images") -> list[Path]:
    """The prediction files under ``folder`` (recursively, hidden files and folders skipped), sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and _is_prediction(p, kind):
                files.append(p)
    return files


def prediction_folder(folder: str | os.PathLike, kind: str = "images") -> Path:
    """``folder``, or its ``masks/`` subfolder when it is a ``segdino predict`` output folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such predictions folder")
    masks = folder / run_files.MASKS
    top = [p for p in folder.iterdir() if p.is_file() and _is_prediction(p, kind)]
    if masks.is_dir() and not top:
        return masks
    return folder


def _keys(path: Path, folder: Path, kind: str) -> list[str]:
    stem = _stem(path, kind)
    rel = (path.parent.relative_to(folder) / stem).as_posix()
    keys = [rel, stem, _PRED_TAG_RE.sub("", rel), _PRED_TAG_RE.sub("", stem)]
    if kind == "images":  # last: a prediction named after an nnU-Net image (CASE_0000) belongs to CASE
        keys += _image_names(stem)
    return list(dict.fromkeys(keys))


def _image_names(stem: str) -> list[str]:
    return [k for k in (nnunet_case_name(stem), nnunet_case_name(_PRED_TAG_RE.sub("", stem))) if k]


def _hint(unmatched: list[Path], known: set[str], kind: str) -> str:
    """For volumes named like an nnU-Net image of a case: how predictions are named instead."""
    for f in unmatched if kind == "volumes" else ():
        case = next((k for k in _image_names(_stem(f, kind)) if k in known), None)
        if case is not None:
            ending = f.name[len(_stem(f, kind)):]
            return f" (predictions are named after the case, e.g. {case}{ending}, not {f.name})"
    return ""


def _listed(items: Sequence) -> str:
    return ", ".join(str(p) for p in items[:MAX_LISTED]) + (" ..." if len(items) > MAX_LISTED else "")


def match_predictions(folder: str | os.PathLike, case_ids: Sequence[str], known_ids: Iterable[str],
                      kind: str = "images") -> Matches:
    """Assign the prediction files under ``folder`` to ``case_ids`` (the cases scored).

    Args:
        folder: prediction files, searched recursively (module docstring for the names).
        case_ids: the cases of the split being scored: each must get exactly one file.
        known_ids: every case of the dataset; a file matching one outside the split is ignored
            (listed in the result's ``ignored``).
        kind: ``"images"`` (image and ``.npy`` files) or ``"volumes"`` (NIfTI, MetaImage, NRRD).

    Returns:
        :class:`Matches`: ``{case_id: path}`` for every case of ``case_ids``.

    Raises:
        DataError: no prediction files, files that match no case of the dataset, two files for
            one case, or cases of the split without a prediction (all named).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such predictions folder")
    wanted = set(case_ids)
    known = set(known_ids) | wanted
    files = prediction_files(folder, kind)
    if not files:
        what = ", ".join(sorted(PREDICTION_SUFFIXES)) if kind == "images" else "files named CASE.nii.gz, CASE.mha, ..."
        raise DataError(f"{folder}: no prediction files ({what})")
    found, ignored, unmatched = Matches(), [], []
    for f in files:
        case = next((k for k in _keys(f, folder, kind) if k in known), None)
        if case is None:
            unmatched.append(f)
        elif case not in wanted:
            ignored.append(f.name)
        elif case in found:
            raise DataError(f"two predictions for case {case}: {found[case]} and {f}")
        else:
            found[case] = f
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} prediction file(s) match no case of the dataset: {_listed(unmatched)}"
                        + _hint(unmatched, known, kind))
    missing = [c for c in case_ids if c not in found]
    if missing:
        problems.append(f"{len(missing)} case(s) of the split have no prediction in {folder}: {_listed(missing)}")
    if problems:
        example = "case.png or case_pred.png" if kind == "images" else "case.nii.gz or case.mha"
        raise DataError("; ".join(problems) + f" (a prediction is matched by its file stem, e.g. {example})")
    matches = Matches((c, found[c]) for c in case_ids)
    matches.ignored = sorted(ignored)
    return matches


def read_prediction(path: Path, num_classes: int, threshold: int, context: str) -> np.ndarray:
    """An image prediction file (image or ``.npy``) -> (H, W) uint8 labels under the task's rules.

    ``context`` starts the sentence that says what sets the class count, added to a message
    about values that do not fit it.
    """
    if path.suffix.lower() == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: cannot read the prediction ({e})") from None
        if values.ndim == 3 and values.shape[0] == 1:
            values = values[0]
        if values.ndim != 2 or not (values.dtype == bool or np.issubdtype(values.dtype, np.integer)):
            raise DataError(f"{path}: a .npy prediction must be an (H, W) integer or bool label array, "
                            f"found shape {values.shape} of {values.dtype}")
        values, lossy = values.astype(np.int64) if values.dtype == bool else values, False
    else:
        values, fmt, _ = read_mask_file(path)
        lossy = fmt == "JPEG"
    try:
        return labels_from_values(values, num_classes, threshold, path, lossy=lossy)
    except DataError as e:
        raise DataError(f"{e}. {context} {task_text(num_classes)}") from None


def task_text(num_classes: int) -> str:
    """What a class count means, for messages about labels that do not fit it."""
    if num_classes == 1:
        return "binary masks (num_classes=1: one foreground class)"
    return f"{num_classes} classes (num_classes={num_classes}: labels 0..{num_classes - 1}, background 0)"
