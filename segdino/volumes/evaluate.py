"""Scoring predicted label volumes against a dataset's labels, in millimetres.

:func:`evaluate_volumes` scores either a folder of predicted volumes (any tool's, named as nnU-Net
names predictions: ``CASE.nii.gz``, or ``CASE.mha``, ``CASE.nrrd`` ...) or a model, which first segments each case. Per volume and
per foreground class it reports Dice, IoU, normalised surface Dice (NSD) at a tolerance in mm
(default 1 mm), HD95 and ASD in mm (from the label volume's voxel spacing), precision and recall, and lesion-wise detection (connected components of the label
matched to predicted components by overlap: found, missed, false positives, and each lesion's
Dice and size); definitions in :mod:`segdino.metrics`.

A prediction must lie on its label's voxel grid: same shape and the same affine, voxel centres
within 1% of a voxel. A prediction stored in another axis order or direction of the same grid
(e.g. reoriented to RAS by a viewer) is brought back to the label's order exactly, without
resampling; any other grid is an error.

Files written into ``out``: ``cases.csv`` (one row per case and class), ``lesions.csv`` (one row
per ground-truth lesion and per false-positive component), ``summary.json``, ``report.md`` and
``figures/`` (per class, the slices through the largest lesion, the largest missed lesion and the
largest false positive; every slice holding ground truth or prediction of the lowest cases;
best/median/worst cases on their most wrongly labelled slice); with a
model, also ``predictions/CASE.<ending>`` (the dataset's file format; ``.nii.gz`` for DICOM).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..data.splits import validate_split_lists
from ..errors import ConfigError, DataError
from ..fileio import read_json
from ..metrics import NSD_TOLERANCE, case_rows, lesion_metrics, summarize, summarize_lesions
from ..progress import track
from ..report import pretrained_of
from ..resample import resample_to_grid
from . import figures as _figures
from .io import Volume, is_volume_path, prediction_ending, read_volume, strip_volume_suffix, write_volume
from .layouts import _CHANNEL_RE, VolumeCase, VolumeCases, find_volume_cases
from .postprocess import largest_component_classes, postprocess_labels
from .slicing import array_axes_of_world, resolve_axis

log = logging.getLogger("segdino.volumes")

#: Voxel centres of a prediction and its label may differ by this fraction of the smallest voxel side.
GRID_TOLERANCE = 0.01
MAX_LISTED = 10
LESION_COLUMNS = ("case", "class", "class_name", "kind", "lesion", "voxels", "volume_mm3", "diameter_mm", "found",
                  "dice", "pred_components", "bbox")


# ---------------------------------------------------------------------------------------------
# Grids


def _corners(shape) -> np.ndarray:
    """(8, 3) voxel indices of the corner voxels of a grid of ``shape``."""
    n = np.asarray(shape, dtype=np.float64) - 1
    return np.array([[i * n[0], j * n[1], k * n[2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _grid_offset(affine_a: np.ndarray, affine_b: np.ndarray, shape) -> float:
    """Largest distance in mm between where two affines put the corner voxels of ``shape``."""
    c = _corners(shape)
    return float(np.max(np.linalg.norm(_world(affine_a, c) - _world(affine_b, c), axis=1)))


def _tolerance(label: Volume) -> float:
    return GRID_TOLERANCE * float(np.min(label.spacing))


def _reorder_to(pred: Volume, label: Volume) -> np.ndarray | None:
    """``pred``'s array in the label's axis order, when ``pred`` is the label's grid stored with
    permuted and/or flipped axes; else None."""
    t = np.linalg.solve(label.affine, pred.affine)  # pred voxel index -> label voxel index
    r = t[:3, :3]
    rr = np.round(r)
    if not np.allclose(r, rr, atol=1e-3):
        return None
    if sorted(np.abs(rr).sum(axis=0).tolist()) != [1, 1, 1] or sorted(np.abs(rr).sum(axis=1).tolist()) != [1, 1, 1]:
        return None
    order = [int(np.flatnonzero(rr[i])[0]) for i in range(3)]  # label axis i <- pred axis order[i]
    arr = np.transpose(pred.array, order)
    if arr.shape != label.shape:
        return None
    for i in range(3):
        if rr[i, order[i]] < 0:
            arr = np.flip(arr, axis=i)
    # The voxel the reordered array puts at each label corner must sit where that label voxel is.
    lab = _corners(label.shape)
    src = np.empty_like(lab)
    for i in range(3):
        j = order[i]
        src[:, j] = lab[:, i] if rr[i, j] > 0 else pred.shape[j] - 1 - lab[:, i]
    gap = np.linalg.norm(_world(pred.affine, src) - _world(label.affine, lab), axis=1)
    if float(np.max(gap)) > _tolerance(label):
        return None
    return np.ascontiguousarray(arr)


def on_label_grid(pred: Volume, label: Volume, what: str = "prediction") -> tuple[np.ndarray, bool]:
    """``pred``'s labels on ``label``'s voxel grid (``what`` names ``pred`` in messages).

    Returns:
        ``(array, reordered)``: the (I, J, K) labels indexed like ``label.array``, and whether
        the prediction's axes had to be permuted or flipped to get there.

    Raises:
        DataError naming both files when the grids differ (shape, spacing, origin or
        direction), with the largest distance between their voxel centres in mm.
    """
    if pred.shape == label.shape and _grid_offset(pred.affine, label.affine, label.shape) <= _tolerance(label):
        return np.asarray(pred.array), False
    arr = _reorder_to(pred, label)
    if arr is not None:
        return arr, True
    where = f"{pred.path or what} vs label {label.path or ''}".rstrip()
    if pred.shape != label.shape and sorted(pred.shape) != sorted(label.shape):
        raise DataError(f"{where}: the {what} has shape {pred.shape}, the label {label.shape}; "
                        f"a {what} must be on its label's voxel grid")
    off = _grid_offset(pred.affine, label.affine, label.shape) if pred.shape == label.shape else math.nan
    detail = (f"spacing {np.round(pred.spacing, 4).tolist()} vs {np.round(label.spacing, 4).tolist()} mm, "
              f"origin {np.round(pred.origin, 3).tolist()} vs {np.round(label.origin, 3).tolist()} mm")
    if math.isfinite(off):
        detail += f"; voxel centres up to {off:.3g} mm apart (tolerance {_tolerance(label):.3g} mm)"
    raise DataError(f"{where}: the {what}'s geometry (affine) differs from the label's: {detail}; "
                    f"a {what} must be on its label's voxel grid (resample it onto the label first)")


def prediction_on_label_grid(pred: Volume, label: Volume, resample: bool = False) -> tuple[np.ndarray, bool, bool]:
    """:func:`on_label_grid`, or with ``resample`` a prediction on another grid sampled onto the
    label's (nearest neighbour through the two affines). Returns ``(array, moved, resampled)``."""
    try:
        arr, moved = on_label_grid(pred, label)
        return arr, moved, False
    except DataError:
        if not resample:
            raise
    arr = resample_to_grid(pred.array, pred.affine, label.affine, label.shape, order=0)
    return arr.astype(np.asarray(pred.array).dtype, copy=False), True, True


# ---------------------------------------------------------------------------------------------
# Matching predictions to cases


def match_predictions(folder: str | os.PathLike, found: VolumeCases, case_ids: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Predicted volumes of a folder matched to cases by name (``CASE.nii.gz``, ``CASE.mha``, ...).

    A ``segdino predict`` output folder is read from its ``masks/`` sub-folder.

    Returns:
        ``({case_id: path}`` for every case of ``case_ids``, names of predictions of dataset cases
        outside ``case_ids`` (not scored)).

    Raises:
        DataError listing the predictions that name no case of the dataset and the cases of
        ``case_ids`` without a prediction.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of predictions")

    def volumes_in(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and is_volume_path(p))

    files = volumes_in(folder)
    if not files and (folder / "masks").is_dir():  # a `segdino predict` output folder
        folder = folder / "masks"
        files = volumes_in(folder)
    if not files:
        raise DataError(f"{folder}: no predicted volumes (files named CASE.nii.gz, CASE.mha, CASE.nrrd, ...)")
    by_name: dict[str, Path] = {}
    for p in files:
        stem = strip_volume_suffix(p.name)
        if stem in by_name:
            raise DataError(f"{folder}: two predictions for case {stem}: {by_name[stem].name} and {p.name}")
        by_name[stem] = p
    known = {c.case_id for c in found.cases}
    wanted = set(case_ids)
    unknown = sorted(n for n in by_name if n not in known)
    missing = sorted(c for c in case_ids if c not in by_name)
    problems = []
    if unknown:
        hint = ""
        m = _CHANNEL_RE.match(unknown[0])
        if m and m.group(1) in known:
            ending = prediction_ending(by_name[unknown[0]].name)
            hint = f" (predictions are named after the case, e.g. {m.group(1)}{ending}, not {unknown[0]}{ending})"
        problems.append(f"{len(unknown)} prediction(s) name no case of {found.root}: "
                        f"{', '.join(by_name[n].name for n in unknown[:MAX_LISTED])}"
                        f"{' ...' if len(unknown) > MAX_LISTED else ''}{hint}")
    if missing:
        problems.append(f"{len(missing)} case(s) of the split have no prediction in {folder}: "
                        f"{', '.join(missing[:MAX_LISTED])}{' ...' if len(missing) > MAX_LISTED else ''}")
    if problems:
        raise DataError("; ".join(problems))
    ignored = sorted(by_name[n].name for n in by_name if n not in wanted)
    return {c: by_name[c] for c in case_ids}, ignored


# ---------------------------------------------------------------------------------------------
# Classes


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


# ---------------------------------------------------------------------------------------------
# Pictures


# Kept importable from here: pictures of volumes live in .figures.
display_volume = _figures.display_volume
_display_image = _figures.display_image


# ---------------------------------------------------------------------------------------------
# Evaluation


def _lesion_rows(case: str, c: int, name: str, result: Mapping[str, Any]) -> list[dict[str, Any]]:
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


def _run_split(run_dir: Path, split: str, found: VolumeCases) -> tuple[list[str], str] | None:
    """The split a training run wrote into its folder (so evaluation uses the run's test cases)."""
    path = run_dir / "splits.json"
    if not path.is_file():
        return None
    data = validate_split_lists(path, read_json(path, DataError, "split file"), lambda c: c, required=())
    if not data.get(split):
        return None
    ids = data[split]
    labelled = {c.case_id for c in found.cases if c.label is not None}
    unknown = [i for i in ids if i not in labelled]
    if unknown:
        raise DataError(f"{path}: the {split} split lists {len(unknown)} case(s) without a label in "
                        f"{found.root}: {', '.join(unknown[:MAX_LISTED])}; on another dataset than the run's, "
                        "pass --split all to score every labelled case")
    return ids, str(path)


def _load_model(model, device):
    if isinstance(model, (str, os.PathLike)):
        from ..inference import load_inference_model

        return load_inference_model(model, device=device or "auto")
    return model


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
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else None
    model_file = str(model) if isinstance(model, (str, os.PathLike)) else None
    model = _load_model(model, device)
    try:
        found = find_volume_cases(data, fold=fold, channel=channel, seed=seed)
    except DataError:
        if predictions is None or channel is not None:
            raise
        # Predictions are scored against labels: the channel only picks the picture in the report.
        found = find_volume_cases(data, fold=fold, channel=0, seed=seed)
    if not found.is_3d:
        raise DataError(f"{data}: holds 2D images in an nnU-Net layout, not volumes; use the 2D evaluation")
    from_run = _run_split(run_dir, split, found) if run_dir is not None else None
    if from_run is not None:
        case_ids, split_source = from_run
    elif split == "all":
        case_ids = sorted(c.case_id for c in found.cases if c.label is not None)
        split_source = "every labelled case"
    else:
        if split not in found.splits:
            raise ConfigError(f"unknown split {split!r}; expected all or one of {', '.join(found.splits)}")
        case_ids, split_source = list(found.splits[split]), found.split_source
    if not case_ids:
        raise DataError(f"{found.root}: the {split} split has no labelled cases (split from {split_source}); "
                        "pass --split all to score every labelled case")
    by_id = {c.case_id: c for c in found.cases}
    cases = [by_id[i] for i in case_ids]

    settings = None
    if model is not None:
        from ..inference import check_input_kind
        from .intensity import read_volume_settings

        check_input_kind(model, "volume", cases[0].image if cases else None)

        settings = read_volume_settings(getattr(model.config, "volume", None))
        num_classes = int(model.config.num_classes)
        if found.labels:
            data_classes = max(found.labels) + 1
            if data_classes > max(num_classes, 2):
                raise DataError(f"{found.root / 'dataset.json'} names labels 0..{data_classes - 1}, but the model "
                                f"predicts {max(num_classes, 2)} classes (num_classes={num_classes})")
        pred_files, ignored = {}, []
    else:
        pred_files, ignored = match_predictions(predictions, found, case_ids)
        num_classes = _dataset_classes(found, cases)
    names = _class_names(num_classes, found, model)
    cleaned = largest_component_classes(largest_component, num_classes)  # bad class ids fail before any work

    rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    lesion_results: dict[int, list[Mapping[str, Any]]] = {c: [] for c in names}
    reoriented: list[str] = []
    resampled: list[str] = []
    pred_dir = out / "predictions"
    for case in track(cases, len(cases), "evaluate", "volume", show=progress):
        label = read_volume(case.label, label=True)
        if model is not None:
            pred_path = _prediction_path(pred_dir, case)
            pred_vol = _predict_case(model, case, label, pred_path, batch_size, device, largest_component,
                                     tile_overlap)
        else:
            pred_path = pred_files[case.case_id]
            pred_vol = read_volume(pred_path, label=True)
        pred, moved, was_resampled = prediction_on_label_grid(pred_vol, label, resample)
        if was_resampled:
            resampled.append(case.case_id)
        if model is None:
            pred = postprocess_labels(pred, largest_component, num_classes)
        if moved:
            reoriented.append(case.case_id)
        spacing = label.spacing
        try:
            case_r = case_rows(case.case_id, pred, label.array, num_classes, spacing, names, nsd_tolerance)
        except DataError as e:
            raise DataError(f"{pred_path} / {case.label}: {e}") from None
        for row in case_r:
            c = row["class"]
            p, g = (pred != 0, label.array != 0) if num_classes == 1 else (pred == c, label.array == c)
            les = lesion_metrics(p, g, spacing)
            lesion_results[c].append(les)
            lesion_rows += _lesion_rows(case.case_id, c, names[c], les)
            row.update(lesions=les["num_lesions"], lesions_found=les["found"], lesions_missed=les["missed"],
                       lesion_false_positives=les["false_positives"],
                       spacing_mm=" ".join(f"{s:.4g}" for s in spacing), prediction=str(pred_path))
        rows += case_r
        log.info("%s: %s", case.case_id,
                 ", ".join(f"{r['class_name']} Dice {r['dice']:.3f}" for r in case_r))

    summary = summarize(rows)
    summary["lesions"] = {names[c]: summarize_lesions(res) for c, res in lesion_results.items()}
    summary.update(
        data=str(found.root),
        layout=found.layout,
        split=split,
        split_source=split_source,
        cases=case_ids,
        predictions=str(predictions) if predictions is not None else None,
        model=_model_name(model, model_file),
        num_classes=num_classes,
        class_names={str(c): n for c, n in names.items()},
        distance_unit="mm",
        nsd_tolerance=float(nsd_tolerance),
        largest_component_classes=cleaned,
        reoriented=reoriented,
        resampled=resampled,
        ignored_predictions=ignored,
        dataset_issues=list(found.issues),
        pretrained=pretrained_of(run_dir, model_file),
    )
    _write_outputs(out, rows, lesion_rows, summary, found, pred_files, pred_dir, model, settings, run_dir,
                   largest_component)
    return summary


def _model_name(model, path: str | None) -> str | None:
    if model is None:
        return None
    cfg = model.config
    what = f"{getattr(cfg, 'backbone', '?')}, {cfg.num_classes} output(s)"
    return f"{path} ({what})" if path else what


def _prediction_path(pred_dir: Path, case: VolumeCase) -> Path:
    """Where a model's prediction of ``case`` is written: named after the case, in its image's format."""
    return pred_dir / f"{case.case_id}{prediction_ending(case.image)}"


def _predict_case(model, case: VolumeCase, label: Volume, pred_path: Path, batch_size: int, device,
                  largest_component, tile_overlap: float | None = None) -> Volume:
    from .predict import predict_volume

    image = read_volume(case.image, case.channel)
    # A label off its image's grid is a dataset problem: say so before predicting, naming the image.
    on_label_grid(image, label, what="image")
    labels = predict_volume(model, image, batch_size=batch_size, device=device, tile_overlap=tile_overlap)
    labels = postprocess_labels(labels, largest_component, int(model.config.num_classes))
    write_volume(pred_path, labels, image.affine)
    return Volume(labels, image.affine, pred_path)


def _write_outputs(out: Path, rows, lesion_rows, summary, found: VolumeCases, pred_files: Mapping[str, Path],
                   pred_dir: Path, model, settings, run_dir: Path | None, largest_component) -> None:
    from ..fileio import atomic_write_text
    from ..report import header_lines, write_case_csv, write_report, write_summary_json

    out.mkdir(parents=True, exist_ok=True)
    write_case_csv(out / "cases.csv", rows)
    if lesion_rows:
        write_case_csv(out / "lesions.csv", lesion_rows)
    else:  # no lesion and no false positive anywhere: the header alone
        atomic_write_text(out / "lesions.csv", ",".join(LESION_COLUMNS) + "\n")
    write_summary_json(out / "summary.json", summary)

    modality = None
    if found.channel_names:
        modality = found.channel_names[found.channel or 0] if (found.channel or 0) < len(found.channel_names) else None

    def view(case_id: str) -> _figures.CaseView:
        case = found.case(case_id)
        label = read_volume(case.label, label=True)
        pred_path = pred_files.get(case_id) or _prediction_path(pred_dir, case)
        pred, _, _ = prediction_on_label_grid(read_volume(pred_path, label=True), label, case_id in summary.get("resampled", ()))
        if model is None:
            pred = postprocess_labels(pred, largest_component, summary["num_classes"])
        try:  # the picture only: an unreadable or misplaced image leaves a blank background
            image = Volume(on_label_grid(read_volume(case.image, case.channel), label, what="image")[0],
                           label.affine)
        except DataError:
            image = Volume(np.zeros(label.shape, dtype=np.float32), label.affine)
        axis = resolve_axis(settings["axis"] if settings else "axial", label.affine)
        spec = settings["intensity"] if settings else None
        return _figures.CaseView(_display_image(image, spec, modality), label.array, pred, label.affine, axis,
                                 tuple(float(v) for v in label.spacing))

    def picture(case_id: str):
        v = view(case_id)
        return tuple(display_volume(a, v.affine, v.axis) for a in (v.image, v.gt, v.pred))

    log_csv = run_dir / "log.csv" if run_dir is not None and (run_dir / "log.csv").is_file() else None
    source = f"predictions in {summary['predictions']}" if model is None else f"model {summary['model']}"
    sections = _lesion_sections(out, rows, lesion_rows, view, summary["num_classes"])
    header = header_lines(model=summary["model"], predictions=summary["predictions"], data=summary["data"],
                          split=summary["split"], split_source=summary["split_source"],
                          pretrained=summary.get("pretrained"))
    write_report(out, rows, summary, cases=picture, log_csv=log_csv, sections=sections,
                 title=f"SegDINO volume evaluation: {summary['split']} split of {Path(summary['data']).name}, "
                       f"{source}",
                 distance_unit="mm", header=header)


#: Per-case strips are drawn for this many of the lowest-Dice cases.
STRIP_CASES = 3


def _lesion_sections(out: Path, rows, lesion_rows, view, num_classes: int) -> list[str]:
    """The report's lesion-centred figures and per-case strips (Markdown lines; PNGs in figures/)."""
    from ..report import FIGURES, LEGEND

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
