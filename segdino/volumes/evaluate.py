"""Scoring predicted label volumes against a dataset's labels, in millimetres.

:func:`evaluate_volumes` scores either a folder of predicted volumes (any tool's, named as nnU-Net
names predictions: ``CASE.nii.gz``, or ``CASE.mha``, ``CASE.nrrd`` ...; matched by the rule of
:mod:`segdino.prediction_files`) or a model, which first segments each case. Per volume and per
foreground class it reports Dice, IoU, normalised surface Dice (NSD) at a tolerance in mm
(default 1 mm), HD95 and ASD in mm (from the label volume's voxel spacing), precision and recall,
and lesion-wise detection (connected components of the label matched to predicted components by
overlap: found, missed, false positives, and each lesion's Dice and size); definitions in
:mod:`segdino.metrics`. The scoring, the summary and the report are the one evaluator's
(:mod:`segdino.evaluator`), shared with 2D images.

A prediction must lie on its label's voxel grid (:mod:`segdino.volumes.grids`); one stored in
another axis order or direction of the same grid is brought back exactly, any other grid is an
error (or, with ``resample``, sampled onto the label's).

Files written into ``out``: ``cases.csv`` (one row per case and class), ``lesions.csv`` (one row
per ground-truth lesion and per false-positive component), ``summary.json``, ``report.md`` and
``figures/`` (per class, the slices through the largest lesion, the largest missed lesion and the
largest false positive; every slice holding ground truth or prediction of the lowest cases;
best/median/worst cases on their most wrongly labelled slice); with a model, also
``predictions/CASE.<ending>`` (the dataset's file format; ``.nii.gz`` for DICOM).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from .. import run_files
from ..errors import ConfigError, DataError
from ..evaluator import LESION_COLUMNS, ScoredCase, Source, evaluate  # noqa: F401  (LESION_COLUMNS kept here)
from ..metrics import NSD_TOLERANCE
from ..prediction_files import match_predictions as _match_files
from ..prediction_files import prediction_folder
from ..report import FIGURES, LEGEND, pretrained_of
from ..runs import run_log_csv, run_split_cases
from . import figures as _figures
from .grids import GRID_TOLERANCE, on_label_grid, prediction_on_label_grid  # noqa: F401  (kept importable here)
from .io import Volume, prediction_ending, read_volume, write_volume
from .layouts import VolumeCase, VolumeCases, find_volume_cases
from .postprocess import largest_component_classes, postprocess_labels, resolve_min_size
from .slicing import resolve_axis

log = logging.getLogger("segdino.volumes")

MAX_LISTED = 10
#: Per-case strips are drawn for this many of the lowest-Dice cases.
STRIP_CASES = 3

# Kept importable from here: pictures of volumes live in .figures.
display_volume = _figures.display_volume
_display_image = _figures.display_image


def match_predictions(folder: str | os.PathLike, found: VolumeCases, case_ids: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Predicted volumes of a folder matched to cases by :func:`segdino.prediction_files.match_predictions`.

    Returns:
        ``({case_id: path}`` for every case of ``case_ids``, names of predictions of dataset cases
        outside ``case_ids`` (not scored)).
    """
    folder = prediction_folder(folder, "volumes")
    matches = _match_files(folder, case_ids, [c.case_id for c in found.cases], kind="volumes")
    return dict(matches), matches.ignored


# ---------------------------------------------------------------------------------------------
# Cases and classes


def _dataset_classes(found: VolumeCases, cases: list[VolumeCase]) -> int:
    """num_classes for scoring without a model: from dataset.json, else from the label values."""
    if found.labels:
        values = sorted(found.labels)
        # As training decides: two labels (background and one class) is a binary task.
        return 1 if len(values) <= 2 else max(values) + 1
    top = 0
    for c in cases:
        arr = read_volume(c.label, label=True).array
        if arr.size:
            top = max(top, int(np.max(arr)))
    return 1 if top <= 1 else top + 1


def _class_names(num_classes: int, found: VolumeCases, model) -> dict[int, str]:
    names: dict[int, str] = {}
    cfg_names = getattr(getattr(model, "config", None), "class_names", None) if model is not None else None
    ids = [1] if num_classes == 1 else list(range(1, num_classes))
    for c in ids:
        if cfg_names is not None and c < len(cfg_names):
            names[c] = str(cfg_names[c])
        elif found.labels and c in found.labels:
            names[c] = str(found.labels[c])
        else:
            names[c] = "foreground" if num_classes == 1 else f"class {c}"
    return names


def _find_cases(data, fold: int, channel, seed: int, predictions) -> VolumeCases:
    try:
        found = find_volume_cases(data, fold=fold, channel=channel, seed=seed)
    except DataError:
        if predictions is None or channel is not None:
            raise
        # Predictions are scored against labels: the channel only picks the picture in the report.
        found = find_volume_cases(data, fold=fold, channel=0, seed=seed)
    if not found.is_3d:
        raise DataError(f"{data}: holds 2D images in an nnU-Net layout, not volumes; use the 2D evaluation")
    return found


def _split_cases(found: VolumeCases, split: str, run_dir: Path | None) -> tuple[list[str], str]:
    """The case ids of ``split`` and where the split came from: the run's, else the dataset's rules."""
    labelled = [c.case_id for c in found.cases if c.label is not None]
    from_run = run_split_cases(run_dir, split, labelled, found.root) if split != "all" else None
    if from_run is not None:
        case_ids, split_source = from_run
    elif split == "all":
        case_ids, split_source = sorted(labelled), "every labelled case"
    else:
        if split not in found.splits:
            raise ConfigError(f"unknown split {split!r}; expected all or one of {', '.join(found.splits)}")
        case_ids, split_source = list(found.splits[split]), found.split_source
    if not case_ids:
        raise DataError(f"{found.root}: the {split} split has no labelled cases (split from {split_source}); "
                        "pass --split all to score every labelled case")
    return case_ids, split_source


def _model_classes(model, found: VolumeCases, example) -> tuple[int, dict]:
    """(num_classes, volume settings) of a model, refused when the dataset names more labels."""
    from ..inference import check_input_kind
    from .intensity import read_volume_settings

    check_input_kind(model, "volume", example)
    settings = read_volume_settings(getattr(model.config, "volume", None))
    num_classes = int(model.config.num_classes)
    if found.labels:
        data_classes = max(found.labels) + 1
        if data_classes > max(num_classes, 2):
            raise DataError(f"{found.root / 'dataset.json'} names labels 0..{data_classes - 1}, but the model "
                            f"predicts {max(num_classes, 2)} classes (num_classes={num_classes})")
    return num_classes, settings


def _load_model(model, device):
    if isinstance(model, (str, os.PathLike)):
        from ..inference import load_inference_model

        return load_inference_model(model, device=device or "auto")
    return model


def _model_name(model, path: str | None) -> str | None:
    if model is None:
        return None
    cfg = model.config
    what = f"{getattr(cfg, 'backbone', '?')}, {cfg.num_classes} output(s)"
    return f"{path} ({what})" if path else what


# Over 80 lines for its docstring (every option and the summary it returns); the body is about 45.
def evaluate_volumes(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    predictions: str | os.PathLike | None = None,
    model=None,
    split: str = "test",
    fold: int = 0,
    channel: int | str | None = None,
    device=None,
    batch_size: int = 8,
    largest_component: bool | Iterable[int] = False,
    run_dir: str | os.PathLike | None = None,
    seed: int = 0,
    nsd_tolerance: float = NSD_TOLERANCE,
    resample: bool = False,
    tile_overlap: float | None = None,
    min_size_mm3: float | None = None,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Score a split of a volume dataset, from predicted volumes or from a model.

    Args:
        data: the dataset folder (nnU-Net raw, Decathlon, or ``images/`` + ``labels/``).
        out: folder for the outputs (module docstring).
        predictions: folder of predicted label volumes ``CASE.nii.gz`` (or ``.nii``, ``.mha``, ``.nrrd`` ...), or a
            ``segdino predict`` output folder (its ``masks/``). Exactly one of ``predictions``
            and ``model``.
        model: a model with volume settings (or a checkpoint path), run on each case's image.
        split: ``test`` (default), ``val`` or ``train``, by the dataset's split rules
            (:mod:`segdino.volumes.layouts`); with ``run_dir``, the split its training wrote;
            ``all``: every labelled case.
        fold: the nnU-Net fold of ``splits_final.json``.
        channel: the channel (number or dataset.json name) of multi-channel images.
        device, batch_size: where and how many slices at a time the model runs.
        largest_component: keep each foreground class's largest connected component (True) or
            that of the listed classes, in the model's output or in the given predictions, before
            scoring.
        run_dir: a training run folder: its ``splits.json`` and ``log.csv`` (learning curves).
        seed: the seed of the seeded split rules (as given to training).
        nsd_tolerance: the distance in mm within which a boundary voxel counts as right for NSD.
        resample: predictions on another grid than their label's are resampled onto it
            (nearest neighbour, through the two affines) instead of refused.
        tile_overlap: sliding-window overlap for the model (see :func:`segdino.volumes.predict.predict_volume`).
        min_size_mm3: remove predicted components smaller than this volume (mm^3) from every
            foreground class before scoring (after ``largest_component``); None: with a model, the
            size its training chose, if any; 0: remove nothing.
        progress: show progress per volume: True a bar on a terminal (plain lines elsewhere),
            ``"quiet"`` plain lines only.

    Returns:
        the summary written to ``summary.json``: :func:`segdino.metrics.summarize` of the rows
        (per class: mean, std, median, count of every metric; HD95/ASD in mm with failures
        counted), ``lesions`` (per class name: :func:`segdino.metrics.summarize_lesions`), and
        where the numbers come from (``data``, ``split``, ``split_source``, ``predictions`` or
        ``model``, ``num_classes``, ``class_names``, ``nsd_tolerance``, ``reoriented``,
        ``ignored_predictions``).

    Raises:
        ConfigError for bad options (neither or both of predictions/model, unknown split);
        DataError for missing or unmatched predictions, grids that differ, unreadable files.
    """
    if (predictions is None) == (model is None):
        raise ConfigError("evaluating volumes needs exactly one of a folder of predictions and a model")
    if not (isinstance(nsd_tolerance, (int, float)) and math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise ConfigError(f"--nsd-tolerance must be a distance in mm >= 0, got {nsd_tolerance!r}")
    run_dir = Path(run_dir) if run_dir is not None else None
    model_file = str(model) if isinstance(model, (str, os.PathLike)) else None
    model = _load_model(model, device)
    found = _find_cases(data, fold, channel, seed, predictions)
    case_ids, split_source = _split_cases(found, split, run_dir)
    by_id = {c.case_id: c for c in found.cases}
    cases = [by_id[i] for i in case_ids]
    settings, pred_files, ignored = None, {}, []
    if model is not None:
        num_classes, settings = _model_classes(model, found, cases[0].image if cases else None)
    else:
        pred_files, ignored = match_predictions(predictions, found, case_ids)
        num_classes = _dataset_classes(found, cases)
    names = _class_names(num_classes, found, model)
    cleaned = largest_component_classes(largest_component, num_classes)  # bad class ids fail before any work
    min_size_mm3, size_source = resolve_min_size(min_size_mm3, settings)
    facts = dict(mode="model" if model is not None else "predictions", data=str(found.root), layout=found.layout,
                 split=split, split_source=split_source, cases=case_ids,
                 predictions=str(predictions) if predictions is not None else None,
                 model=_model_name(model, model_file), num_classes=num_classes,
                 class_names={str(c): n for c, n in names.items()}, distance_unit="mm",
                 nsd_tolerance=float(nsd_tolerance), largest_component_classes=cleaned, min_size_mm3=min_size_mm3,
                 min_size_source=size_source,
                 reoriented=[], resampled=[],
                 ignored_predictions=ignored, dataset_issues=list(found.issues),
                 pretrained=pretrained_of(run_dir, model_file))
    post = dict(largest_component=largest_component, num_classes=num_classes, min_size_mm3=min_size_mm3)
    scoring = _VolumeScoring(found, Path(out) / run_files.PREDICTIONS, pred_files, model, settings, post, resample,
                             facts)
    source_name = f"predictions in {facts['predictions']}" if model is None else f"model {facts['model']}"
    source = Source("volumes", num_classes, names, facts,
                    title=f"SegDINO volume evaluation: {split} split of {found.root.name}, {source_name}",
                    picture=scoring.picture, log_csv=run_log_csv(run_dir), nsd_tolerance=float(nsd_tolerance),
                    lesions=True, sections=scoring.sections, unit="volume")
    scored = scoring.cases(cases, batch_size, device, tile_overlap)
    return evaluate(scored, source, out, total=len(cases), progress=progress)


class _VolumeScoring:
    """The cases of one volume evaluation: read (or predict) each, bring it onto its label's grid,
    and show it for the report."""

    def __init__(self, found: VolumeCases, pred_dir: Path, pred_files: Mapping[str, Path], model, settings,
                 post: dict[str, Any], resample: bool, facts: dict[str, Any]):
        self.found, self.pred_dir, self.pred_files = found, pred_dir, pred_files
        self.model, self.settings, self.post = model, settings, post  # post: postprocess_labels' options
        self.num_classes, self.resample, self.facts = post["num_classes"], resample, facts
        self.modality = None
        if found.channel_names and (found.channel or 0) < len(found.channel_names):
            self.modality = found.channel_names[found.channel or 0]

    def prediction_path(self, case: VolumeCase) -> Path:
        """Where a model's prediction of ``case`` is written: named after the case, in its image's format."""
        return self.pred_dir / f"{case.case_id}{prediction_ending(case.image)}"

    def cases(self, cases: Iterable[VolumeCase], batch_size: int, device, tile_overlap) -> Iterator[ScoredCase]:
        """Each case's prediction on its label's grid, post-processed as asked."""
        for case in cases:
            label = read_volume(case.label, label=True)
            if self.model is not None:
                pred_path = self.prediction_path(case)
                pred_vol = _predict_case(self.model, case, label, pred_path, batch_size, device, self.post,
                                         tile_overlap)
            else:
                pred_path = self.pred_files[case.case_id]
                pred_vol = read_volume(pred_path, label=True)
            pred, moved, was_resampled = prediction_on_label_grid(pred_vol, label, self.resample)
            if was_resampled:
                self.facts["resampled"].append(case.case_id)
            if self.model is None:
                pred = postprocess_labels(pred, spacing=label.spacing, **self.post)
            if moved:
                self.facts["reoriented"].append(case.case_id)
            spacing = tuple(float(s) for s in label.spacing)
            yield ScoredCase(case.case_id, pred, label.array, spacing, where=f"{pred_path} / {case.label}",
                             extras={"spacing_mm": " ".join(f"{s:.4g}" for s in spacing), "prediction": str(pred_path)})

    def view(self, case_id: str) -> _figures.CaseView:
        """A case's image (windowed as the model sees it), labels and prediction, for pictures."""
        case = self.found.case(case_id)
        label = read_volume(case.label, label=True)
        pred_path = self.pred_files.get(case_id) or self.prediction_path(case)
        pred, _, _ = prediction_on_label_grid(read_volume(pred_path, label=True), label,
                                              case_id in self.facts["resampled"])
        if self.model is None:
            pred = postprocess_labels(pred, spacing=label.spacing, **self.post)
        try:  # the picture only: an unreadable or misplaced image leaves a blank background
            image = Volume(on_label_grid(read_volume(case.image, case.channel), label, what="image")[0],
                           label.affine)
        except DataError:
            image = Volume(np.zeros(label.shape, dtype=np.float32), label.affine)
        axis = resolve_axis(self.settings["axis"] if self.settings else "axial", label.affine)
        spec = self.settings["intensity"] if self.settings else None
        return _figures.CaseView(_display_image(image, spec, self.modality), label.array, pred, label.affine, axis,
                                 tuple(float(v) for v in label.spacing))

    def picture(self, case_id: str):
        """(image, gt, pred) in the radiological view, for the report's case pictures."""
        v = self.view(case_id)
        return tuple(display_volume(a, v.affine, v.axis) for a in (v.image, v.gt, v.pred))

    def sections(self, out: Path, rows, lesion_rows) -> list[str]:
        """The report's lesion-centred figures and per-case strips."""
        return _lesion_sections(out, rows, lesion_rows, self.view, self.num_classes)


def _predict_case(model, case: VolumeCase, label: Volume, pred_path: Path, batch_size: int, device,
                  post: dict[str, Any], tile_overlap: float | None = None) -> Volume:
    from .predict import predict_volume

    image = read_volume(case.image, case.channel)
    # A label off its image's grid is a dataset problem: say so before predicting, naming the image.
    on_label_grid(image, label, what="image")
    labels = predict_volume(model, image, batch_size=batch_size, device=device, tile_overlap=tile_overlap)
    labels = postprocess_labels(labels, spacing=image.spacing, **post)
    write_volume(pred_path, labels, image.affine)
    return Volume(labels, image.affine, pred_path)


def _lesion_sections(out: Path, rows, lesion_rows, view, num_classes: int) -> list[str]:
    """The report's lesion-centred figures and per-case strips (Markdown lines; PNGs in figures/)."""
    fig_dir = out / FIGURES
    lines: list[str] = []
    figures = _figures.lesion_figures(fig_dir, lesion_rows, rows, view, num_classes)
    if figures:
        lines += ["## Lesions", "",
                  "For each class: the slice through the largest ground-truth lesion, the largest missed lesion "
                  "and the largest false positive (connected components, as in the lesion-wise table), in the "
                  f"radiological view, windowed as the model sees it; the whole slice beside an enlarged crop. "
                  f"Contours: {LEGEND}.", ""]
        for f in figures:
            lines += [f"### {f.class_name}: {f.kind}", "", f.title, "", f"![{f.title}]({FIGURES}/{f.path.name})", ""]
    per_case: dict[str, list[float]] = {}
    for r in rows:
        if r.get("dice") is not None and math.isfinite(float(r["dice"])):
            per_case.setdefault(str(r["case"]), []).append(float(r["dice"]))
    worst = sorted(per_case, key=lambda c: (float(np.mean(per_case[c])), c))[:STRIP_CASES]
    strips = []
    for case in worst:
        name = f"strip_{len(strips) + 1}.png"
        title = _figures.case_strip(fig_dir / name, case, view(case), float(np.mean(per_case[case])))
        if title is not None:
            strips.append((title, name))
    if strips:
        lines += ["## Slices of the lowest cases", "",
                  "Every slice holding ground truth or prediction of the lowest-Dice cases, cropped to where "
                  "they are.", ""]
        for title, name in strips:
            lines += [title, "", f"![{title}]({FIGURES}/{name})", ""]
    return lines
