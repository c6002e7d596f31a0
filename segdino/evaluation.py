"""Evaluation of a model, or of existing prediction masks, on a 2D dataset split.

Everything is scored at each image's own resolution (CONTRACTS, "Inference resolution"): the
model sees the image resized to its input size (or padded, ``keep_size``), its logits are resized
back to the image's size, and the metrics of :mod:`segdino.metrics` compare that mask with the
ground truth as released. Cases whose HD95/ASD are undefined are counted as failures, never
dropped (CONTRACTS, "Metrics").

Outputs, written into ``out`` by :func:`evaluate_model` and :func:`evaluate_predictions`::

    cases.csv      one row per case and foreground class (segdino.report.write_case_csv)
    summary.json   statistics per metric and class, and how they were obtained
    report.md      summary table, Dice histogram, learning curves (for a run), best/median/worst
    report.html    the same, one self-contained page with the figures embedded
    figures/       the report's pictures

Prediction masks from any tool are matched to the dataset's cases by file stem: ``x.png``,
``x_pred.png``, ``x_mask.png`` (a mask tag after the stem, as in dataset layouts) or the path
relative to the folder (``train/x.png``) all belong to case ``x``; so does ``x_0000.png`` (named
after an nnU-Net image file) where no case ``x_0000`` exists. They follow the dataset's mask
rules: binary masks are grey (foreground above the threshold, 0/1 read as such), multi-class masks
are index images; ``.npy`` files hold integer label arrays.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import run_files
from .data.layouts import nnunet_case_name
from .data.splits import validate_split_lists
from .errors import ConfigError, DataError
from .fileio import read_json
from .metrics import case_rows, summarize
from .report import pretrained_of

log = logging.getLogger("segdino.evaluation")

#: Files of a training run folder; a folder holding one of them (and a checkpoint's folder
#: holding one) is treated as the run that made the model.
RUN_FILES = run_files.RUN_READ_MARKERS
SPLITS_FILE = run_files.SPLITS
SPLIT_CHOICES = ("train", "val", "test", "all")
PREDICTION_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff", ".gif", ".npy", ".jpg", ".jpeg"})
_PRED_TAGS = ("prediction", "predicted", "pred", "segmentation", "seg", "mask", "label", "labels", "output")
_PRED_TAG_RE = re.compile(rf"[_\-. ](?:{'|'.join(_PRED_TAGS)})$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Run folders and splits


def find_run_dir(model_path: str | os.PathLike | None) -> Path | None:
    """The training run folder a model path belongs to, or None.

    A run folder itself, or the folder of a checkpoint inside one (``RUN/best.safetensors``),
    counts when it holds ``log.csv`` or ``config.yaml``.
    """
    if model_path is None:
        return None
    p = Path(model_path)
    folder = p if p.is_dir() else p.parent
    return folder if any((folder / f).is_file() for f in RUN_FILES) else None


def run_dataset(run_dir: str | os.PathLike | None) -> Path | None:
    """The dataset folder a training run was given (``data`` in its ``config.yaml``), or None."""
    if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
        return None
    import yaml

    try:
        saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = saved.get("data") if isinstance(saved, dict) else None
    return Path(data) if isinstance(data, str) else None


def is_run_dataset(run_dir: str | os.PathLike | None, data: str | os.PathLike) -> bool:
    """Whether ``data`` is the folder the run trained on (True when the run does not say).

    A run's ``data`` may be relative to where it was started; when it cannot be found from
    here, the folder names are compared.
    """
    trained = run_dataset(run_dir)
    if trained is None:
        return True
    try:
        if trained.exists():
            return os.path.samefile(trained, data)
        return trained.resolve().name == Path(data).resolve().name
    except OSError:
        return False


def _run_splits(run_dir: Path | None) -> dict[str, list[str]] | None:
    """The split a run trained with (``RUN/splits.json``), or None."""
    if run_dir is None or not (run_dir / SPLITS_FILE).is_file():
        return None
    path = run_dir / SPLITS_FILE
    # Cases are matched against the dataset afterwards; the file's form is checked by the one rule.
    return validate_split_lists(path, read_json(path, DataError, "split file"), lambda c: c, required=())


def load_split(
    data: str | os.PathLike,
    split: str = "test",
    num_classes: int = 1,
    image_size: tuple[int, int] | None = None,
    fold: int = 0,
    seed: int = 0,
    mask_threshold: int = 127,
    run_dir: str | os.PathLike | None = None,
):
    """The cases of one split of a 2D dataset, as a :class:`SegmentationDataset`.

    The split follows the dataset's rules (CONTRACTS, "Datasets"), except that the split a run
    trained with (``run_dir/splits.json``) is used when every case it names is in ``data``, so
    that a run is tested on exactly the cases it never trained on.

    Returns:
        ``(dataset, source)``: the dataset (``case_ids``, ``native_image``, ``native_mask``) and
        a sentence saying where the split came from.

    Raises:
        ConfigError: an unknown split name. DataError: layout problems, or an empty split.
    """
    from .data.dataset import SegmentationDataset
    from .data.layouts import find_pairs
    from .data.masks import require_foreground
    from .data.splits import resolve_splits

    if split not in SPLIT_CHOICES:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    pairs = find_pairs(root)
    if num_classes == 1:
        # Empty masks score a perfect Dice against an empty prediction: refuse what data check refuses.
        require_foreground((p.masks for p in pairs), root, mask_threshold)
    source = "every case of the dataset"
    splits = None
    if split != "all":
        ran = _run_splits(Path(run_dir) if run_dir is not None else None)
        known = {p.case_id for p in pairs}
        if ran is not None and ran[split] and set(ran[split]) <= known:
            splits, source = ran, f"the run's {Path(run_dir) / SPLITS_FILE}"
        else:
            splits = resolve_splits(root, pairs, seed=seed, fold=fold)
            source = getattr(splits, "source", "dataset rules")
            if ran is not None:
                log.info("%s names cases that %s lacks; using the dataset's own split (%s)",
                         Path(run_dir) / SPLITS_FILE, root, source)
    ds = SegmentationDataset(pairs, split="all" if split == "all" else split, num_classes=num_classes,
                             image_size=image_size, mask_threshold=mask_threshold, splits=splits)
    ds.root = root
    if len(ds) == 0:
        raise DataError(f"{root}: the {split} split is empty (split from {source}); pass --split all to score "
                        "every case, or add a splits.json")
    return ds, source


# ---------------------------------------------------------------------------------------------
# Reading labels with the task's class count


def _task(num_classes: int) -> str:
    if num_classes == 1:
        return "binary masks (num_classes=1: one foreground class)"
    return f"{num_classes} classes (num_classes={num_classes}: labels 0..{num_classes - 1}, background 0)"


def read_ground_truth(ds, index: int, context: str) -> np.ndarray:
    """Ground-truth labels (H, W) uint8 of case ``index``; a class-count mismatch says so.

    ``context`` names what sets the class count (the model, or ``--num-classes``): a mask whose
    values do not fit that count is the mark of a model trained for another task.
    """
    from .data.masks import read_mask_file

    try:
        return ds.native_mask(index)
    except DataError as e:
        for path in ds.pairs[index].masks:
            read_mask_file(path)  # an unreadable file raises its own error, unchanged
        raise DataError(f"{e}. {context} {_task(ds.num_classes)}, which these masks do not fit") from None


def read_prediction(path: Path, num_classes: int, threshold: int, context: str) -> np.ndarray:
    """A prediction mask file (image or ``.npy``) -> (H, W) uint8 labels under the task's rules."""
    from .data.masks import labels_from_values, read_mask_file

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
        raise DataError(f"{e}. {context} {_task(num_classes)}") from None


# ---------------------------------------------------------------------------------------------
# Matching prediction files to cases


def _prediction_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in PREDICTION_SUFFIXES:
                files.append(p)
    return files


def prediction_folder(folder: str | os.PathLike) -> Path:
    """``folder``, or its ``masks/`` subfolder when it is a ``segdino predict`` output folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such predictions folder")
    masks = folder / "masks"
    top = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PREDICTION_SUFFIXES]
    if masks.is_dir() and not top:
        return masks
    return folder


def _keys(path: Path, folder: Path) -> list[str]:
    rel = path.relative_to(folder).with_suffix("").as_posix()
    stem = path.with_suffix("").name
    keys = [rel, stem, _PRED_TAG_RE.sub("", rel), _PRED_TAG_RE.sub("", stem)]
    # Last: a prediction named after an nnU-Net image (CASE_0000) belongs to case CASE.
    keys += [k for k in (nnunet_case_name(stem), nnunet_case_name(_PRED_TAG_RE.sub("", stem))) if k]
    return list(dict.fromkeys(keys))


def match_predictions(folder: str | os.PathLike, case_ids: Sequence[str], known_ids: Iterable[str]) -> dict[str, Path]:
    """Assign the prediction files under ``folder`` to ``case_ids`` (the cases scored).

    Args:
        folder: prediction masks, searched recursively.
        case_ids: the cases of the split being scored: each must get exactly one file.
        known_ids: every case of the dataset; a file matching one outside the split is ignored.

    Raises:
        DataError: files that match no case of the dataset, two files for one case, or cases
            of the split without a prediction (all named).
    """
    folder = Path(folder)
    wanted = set(case_ids)
    known = set(known_ids) | wanted
    files = _prediction_files(folder)
    if not files:
        raise DataError(f"{folder}: no prediction files ({', '.join(sorted(PREDICTION_SUFFIXES))})")
    found: dict[str, Path] = {}
    unmatched: list[Path] = []
    for f in files:
        case = next((k for k in _keys(f, folder) if k in known), None)
        if case is None:
            unmatched.append(f)
        elif case in wanted:
            if case in found:
                raise DataError(f"two predictions for case {case}: {found[case]} and {f}")
            found[case] = f
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} prediction file(s) match no case of the dataset: "
                        + ", ".join(str(p) for p in unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""))
    missing = [c for c in case_ids if c not in found]
    if missing:
        problems.append(f"{len(missing)} case(s) of the split have no prediction in {folder}: "
                        + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if problems:
        raise DataError("; ".join(problems) + " (a prediction is matched by its file stem, e.g. case.png "
                        "or case_pred.png)")
    return found


# ---------------------------------------------------------------------------------------------
# Scoring


def prefetch(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, depth: int) -> Iterator[Any]:
    """``fn(item)`` for each item in order, computed up to ``depth`` items ahead on ``workers`` threads.

    Image decoding releases the GIL, so a few threads keep the model fed; an error raised by
    ``fn`` surfaces when its item is reached.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > max(1, depth):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _progress(iterable, total: int, desc: str, enabled: bool | str):
    """``enabled``: False (nothing), True (a bar on a terminal, else plain lines), ``"quiet"`` (plain lines)."""
    from .progress import track

    return track(iterable, total, desc, "case", show=enabled)


def _pack(mask: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
    # Predictions are kept compressed (exact, a few KB each) for the report's case pictures.
    return zlib.compress(np.ascontiguousarray(mask, dtype=np.uint8).tobytes(), 1), mask.shape


def _unpack(packed: tuple[bytes, tuple[int, ...]]) -> np.ndarray:
    data, shape = packed
    return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(shape)


def _missing_classes(max_label: int, num_classes: int) -> list[int]:
    return list(range(max_label + 1, num_classes)) if num_classes > 1 else []


def _class_names(config) -> Sequence[str] | None:
    return getattr(config, "class_names", None) if config is not None else None


def _row_extras(rows: list[dict[str, Any]], shape: tuple[int, int]) -> list[dict[str, Any]]:
    for r in rows:
        r["height"], r["width"] = int(shape[0]), int(shape[1])
    return rows


def _write_outputs(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any], cases, log_csv: Path | None,
                   title: str) -> dict[str, Any]:
    from .report import header_lines, write_case_csv, write_report, write_summary_json

    info = summary["evaluation"]
    header = header_lines(model=info.get("model"), predictions=info.get("predictions"), data=info["data"],
                          split=info["split"], split_source=info["split_source"], pretrained=info.get("pretrained"))

    out.mkdir(parents=True, exist_ok=True)
    outputs = {"cases_csv": str(out / "cases.csv"), "summary_json": str(out / "summary.json"),
               "report": str(out / "report.md"), "report_html": str(out / "report.html")}
    summary["outputs"] = outputs
    write_case_csv(out / "cases.csv", rows)
    write_summary_json(out / "summary.json", summary)
    write_report(out, rows, summary, cases=cases, log_csv=log_csv, title=title, header=header)
    return summary


def _model_title(model_path: Path | None, model) -> str:
    """How a report names the model: its file or run folder, so that a run's report and its export's differ."""
    if model_path is None:
        return type(model).__name__
    return model_path.name if model_path.name not in ("best.safetensors", "last.safetensors") else \
        f"{model_path.parent.name}/{model_path.name}"


def _log_csv(run_dir: Path | None) -> Path | None:
    if run_dir is None:
        return None
    path = Path(run_dir) / "log.csv"
    return path if path.is_file() else None


def evaluate_model(
    model,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    fold: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    keep_size: bool = False,
    device: str | torch.device | None = None,
    run_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Predict every case of a split at its own size, score it, and write the report.

    Args:
        model: a model file, run folder or ``.onnx`` file (loaded with
            :func:`segdino.inference.load_inference_model` on ``device``), or a loaded model
            (SegDINO, fast or ONNX model) with ``config``; it is left in eval mode.
        data: a 2D dataset folder (CONTRACTS, "Datasets").
        out: folder for ``cases.csv``, ``summary.json``, ``report.md`` and ``figures/``.
        split: ``test`` (default), ``val``, ``train`` or ``all``.
        fold, seed: select the split where the dataset's rules need them.
        batch_size: images per forward pass.
        keep_size: run at the native size padded to a multiple of 16 instead of resizing.
        device: where to run (``auto``, ``cpu``, ``cuda``, ``mps``); None keeps a loaded model's.
        run_dir: the training run of the model (learning curves, and the split it trained
            with); found automatically when ``model`` is a run folder or a checkpoint in one.
        workers: threads that decode images ahead of the model (0: none).
        progress: show progress: a bar on a terminal, plain lines elsewhere; ``"quiet"``: plain
            lines only.

    Returns:
        the summary written to ``summary.json``: :func:`segdino.metrics.summarize` of the
        per-case rows, plus ``evaluation`` (how) and ``outputs`` (where).

    Raises:
        DataError: unreadable files, image/mask size mismatches, masks that do not fit the
            model's class count, an empty split. CheckpointError: a bad model file.
    """
    from .inference import check_input_kind
    from .predictor import Predictor

    model_path = None
    if isinstance(model, (str, os.PathLike)):
        model_path = Path(model)
        if run_dir is None:
            run_dir = find_run_dir(model_path)
    predictor = Predictor(model, device, batch_size=batch_size, keep_size=keep_size)
    model, dev = predictor.model, predictor.device
    if hasattr(model, "eval"):
        model.eval()
    check_input_kind(model, "2d", data)
    config = model.config
    num_classes = int(config.num_classes)
    ds, source = load_split(data, split, num_classes=num_classes, image_size=tuple(config.image_size), fold=fold,
                            seed=seed, mask_threshold=int(config.mask_threshold), run_dir=run_dir)
    who = f"The model {model_path} predicts" if model_path is not None else "The model predicts"
    names = _class_names(config)

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        image = ds.native_image(i)
        gt = read_ground_truth(ds, i, who)
        if image.shape[:2] != gt.shape:
            pair = ds.pairs[i]
            raise DataError(f"{pair.masks[0]}: mask size {gt.shape[1]}x{gt.shape[0]} differs from its image "
                            f"{pair.image} ({image.shape[1]}x{image.shape[0]})")
        return image, gt

    rows: list[dict[str, Any]] = []
    preds: dict[str, tuple[bytes, tuple[int, ...]]] = {}
    index_of = {c: i for i, c in enumerate(ds.case_ids)}
    max_label = 0
    indices = list(range(len(ds)))
    loaded = prefetch(load, indices, workers, depth=2 * batch_size)
    bar = _progress(range(len(ds)), len(ds), "evaluate", progress)
    batch: list[tuple[int, np.ndarray, np.ndarray]] = []
    with torch.inference_mode():
        for i in bar:
            image, gt = next(loaded)
            batch.append((i, image, gt))
            if len(batch) < batch_size and i != indices[-1]:
                continue
            masks = predictor.labels([b[1] for b in batch])
            for (j, image, gt), pred in zip(batch, masks):
                case = ds.case_ids[j]
                max_label = max(max_label, int(gt.max(initial=0)))
                rows += _row_extras(case_rows(case, pred, gt, num_classes, class_names=names), gt.shape)
                preds[case] = _pack(pred)
            batch = []

    summary = summarize(rows)
    resolution = ("native size padded to a multiple of 16 (--keep-size)" if keep_size else
                  f"resized to the model's {config.image_size[0]}x{config.image_size[1]} input, logits resized "
                  "back to each image's own size (bilinear)")
    info = {
        "mode": "model",
        "model": str(model_path) if model_path is not None else type(model).__name__,
        "data": str(data),
        "split": split,
        "split_source": source,
        "num_classes": num_classes,
        "inference": resolution,
        "metrics_at": "each image's own resolution",
        "device": str(dev),
        "pretrained": pretrained_of(run_dir, model_path),
    }
    missing = _missing_classes(max_label, num_classes)
    if missing:
        info["warning"] = (f"classes {missing} never occur in the ground truth of this split; "
                           f"check that the model's {num_classes} classes match the dataset's masks")
        log.warning("%s", info["warning"])
    summary["evaluation"] = info

    def case_data(case: str):
        i = index_of[case]
        return ds.native_image(i), read_ground_truth(ds, i, who), _unpack(preds[case])

    title = f"SegDINO evaluation of {_model_title(model_path, model)}: {Path(data).name}, {split} split"
    return _write_outputs(Path(out), rows, summary, case_data, _log_csv(run_dir), title)


def evaluate_predictions(
    predictions: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_classes: int = 1,
    split: str = "test",
    fold: int = 0,
    seed: int = 0,
    mask_threshold: int = 127,
    class_names: Sequence[str] | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Score existing prediction masks (from any tool) against a dataset split; write the report.

    Args:
        predictions: folder of masks named after the cases (see the module docstring); a
            ``segdino predict`` output folder is read from its ``masks/``.
        data: the 2D dataset folder holding the ground truth.
        out: folder for ``cases.csv``, ``summary.json``, ``report.md`` and ``figures/``.
        num_classes: 1 = binary (grey masks), K >= 2 = index masks 0..K-1, for both the
            predictions and the ground truth.
        split: the cases to score (each needs a prediction); ``all`` for every case.
        mask_threshold: binary foreground = grey value above it (8-bit scale).
        class_names: names by class id, background first (for the tables).
        run_dir: a training run whose learning curves (and split) to use.

    Returns:
        the summary written to ``summary.json``.

    Raises:
        DataError: predictions that match no case, cases without a prediction, a prediction
            whose size differs from its ground truth, masks that do not fit ``num_classes``.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"--num-classes must be an integer >= 1 (1 = binary), got {num_classes!r}")
    ds, source = load_split(data, split, num_classes=num_classes, image_size=None, fold=fold, seed=seed,
                            mask_threshold=mask_threshold, run_dir=run_dir)
    from .data.layouts import find_pairs

    folder = prediction_folder(predictions)
    known = [p.case_id for p in find_pairs(Path(data))] if split != "all" else ds.case_ids
    files = match_predictions(folder, ds.case_ids, known)
    context = f"--num-classes {num_classes} means"
    index_of = {c: i for i, c in enumerate(ds.case_ids)}

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        case = ds.case_ids[i]
        gt = read_ground_truth(ds, i, context)
        pred = read_prediction(files[case], num_classes, mask_threshold, context)
        if pred.shape != gt.shape:
            raise DataError(f"{files[case]}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from the "
                            f"ground truth {ds.pairs[i].masks[0]} ({gt.shape[1]}x{gt.shape[0]}); predictions "
                            "must be at each image's own size")
        return pred, gt

    rows: list[dict[str, Any]] = []
    max_label = 0
    for i in _progress(range(len(ds)), len(ds), "score", progress):
        pred, gt = load(i)
        max_label = max(max_label, int(gt.max(initial=0)), int(pred.max(initial=0)))
        rows += _row_extras(case_rows(ds.case_ids[i], pred, gt, num_classes, class_names=class_names), gt.shape)

    summary = summarize(rows)
    info = {
        "mode": "predictions",
        "predictions": str(folder),
        "data": str(data),
        "split": split,
        "split_source": source,
        "num_classes": num_classes,
        "metrics_at": "each image's own resolution",
        "pretrained": pretrained_of(run_dir),
    }
    missing = _missing_classes(max_label, num_classes)
    if missing:
        info["warning"] = f"classes {missing} occur in neither the predictions nor the ground truth"
        log.warning("%s", info["warning"])
    summary["evaluation"] = info

    def case_data(case: str):
        i = index_of[case]
        pred, gt = load(i)
        return ds.native_image(i), gt, pred

    title = f"SegDINO evaluation of {folder.name}: {Path(data).name}, {split} split"
    return _write_outputs(Path(out), rows, summary, case_data, _log_csv(Path(run_dir) if run_dir else None), title)


# ---------------------------------------------------------------------------------------------
# Console summary


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def format_summary(summary: dict[str, Any], unit: str = "px") -> str:
    """A few lines for the console: per class mean Dice, IoU, HD95 (with failures), ASD and,
    when scored, NSD.

    ``unit``: of the surface distances (``px`` for images, ``mm`` for volumes with spacing).
    """
    lines = [f"{summary.get('num_cases', 0)} cases"
             + (f" ({summary['evaluation']['split']} split)" if "evaluation" in summary else "")]
    for cid, e in summary.get("per_class", {}).items():
        d, iou = e.get("dice", {}), e.get("iou", {})
        hd, asd = e.get("hd95", {}), e.get("asd", {})
        line = (f"  {e.get('class_name', cid)}: Dice {_num(d.get('mean'))} ± {_num(d.get('std'))} "
                f"(median {_num(d.get('median'))}), IoU {_num(iou.get('mean'))}, "
                f"HD95 {_num(hd.get('mean'), 2)} {unit} over {hd.get('count', 0)} cases")
        if hd.get("failures"):
            line += (f" ({hd['failures']} undefined: one mask empty; "
                     f"{_num(hd.get('with_failures_as_diagonal', {}).get('mean'), 2)} with them as the diagonal)")
        line += f", ASD {_num(asd.get('mean'), 2)} {unit}"
        if "nsd" in e and "nsd_tolerance" in summary:
            line += f", NSD at {summary['nsd_tolerance']:g} {unit} {_num(e['nsd'].get('mean'))}"
        lines.append(line)
    warning = summary.get("evaluation", {}).get("warning")
    if warning:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
