"""Evaluation of a model, or of existing prediction masks, on a 2D dataset split.

Everything is scored at each image's own resolution (docs/FORMATS.md, "Inference resolution"):
the model sees the image resized to its input size (or padded, ``keep_size``), its logits are
resized back to the image's size, and the metrics of :mod:`segdino.metrics` compare that mask
with the ground truth as released. Cases whose HD95/ASD are undefined are counted as failures,
never dropped. The scoring, the summary and the report are the one evaluator's
(:mod:`segdino.evaluator`), shared with volumes; this module finds the images, their ground truth
and their predictions.

Outputs, written into ``out`` by :func:`evaluate_model` and :func:`evaluate_predictions`::

    cases.csv      one row per case and foreground class (segdino.report.write_case_csv)
    summary.json   statistics per metric and class, and how they were obtained (segdino.summary_file)
    report.md      summary table, Dice histogram, learning curves (for a run), best/median/worst
    report.html    the same, one self-contained page with the figures embedded
    figures/       the report's pictures

Prediction masks from any tool are matched to the dataset's cases by file stem
(:mod:`segdino.prediction_files`). They follow the dataset's mask rules: binary masks are grey
(foreground above the threshold, 0/1 read as such), multi-class masks are index images; ``.npy``
files hold integer label arrays.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import run_files
from .data.dataset import SegmentationDataset
from .data.layouts import find_pairs
from .data.masks import read_mask_file, require_foreground
from .data.splits import resolve_splits
from .errors import ConfigError, DataError
from .evaluator import ScoredCase, Source, evaluate
from .predictor import Predictor
from .prediction_files import (  # noqa: F401  (kept importable from here)
    PREDICTION_SUFFIXES,
    match_predictions,
    prediction_folder,
    read_prediction,
    task_text,
)
from .report import pretrained_of
from .runs import find_run_dir, is_run_dataset, run_dataset, run_log_csv, run_split_cases  # noqa: F401
from .summary_file import format_summary  # noqa: F401  (kept importable from here)

log = logging.getLogger("segdino.evaluation")

#: Files of a training run folder; a folder holding one of them (and a checkpoint's folder
#: holding one) is treated as the run that made the model.
RUN_FILES = run_files.RUN_READ_MARKERS
SPLITS_FILE = run_files.SPLITS
SPLIT_CHOICES = ("train", "val", "test", "all")
METRICS_AT = "each image's own resolution"


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

    The split follows the dataset's rules (docs/FORMATS.md, "Datasets"), except that the split a
    run trained with (``run_dir/splits.json``) is used when every case it names is in ``data``,
    so that a run is tested on exactly the cases it never trained on.

    Returns:
        ``(dataset, source)``: the dataset (``case_ids``, ``native_image``, ``native_mask``) and
        a sentence saying where the split came from.

    Raises:
        ConfigError: an unknown split name. DataError: layout problems, or an empty split.
    """
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
        ran = run_split_cases(run_dir, split, {p.case_id for p in pairs}, root)
        if ran is not None:
            splits, source = {split: ran[0]}, ran[1]
        else:
            splits = resolve_splits(root, pairs, seed=seed, fold=fold)
            source = getattr(splits, "source", "dataset rules")
    ds = SegmentationDataset(pairs, split="all" if split == "all" else split, num_classes=num_classes,
                             image_size=image_size, mask_threshold=mask_threshold, splits=splits)
    ds.root = root
    if len(ds) == 0:
        raise DataError(f"{root}: the {split} split is empty (split from {source}); pass --split all to score "
                        "every case, or add a splits.json")
    return ds, source


def read_ground_truth(ds, index: int, context: str) -> np.ndarray:
    """Ground-truth labels (H, W) uint8 of case ``index``; a class-count mismatch says so.

    ``context`` names what sets the class count (the model, or ``--num-classes``): a mask whose
    values do not fit that count is the mark of a model trained for another task.
    """
    try:
        return ds.native_mask(index)
    except DataError as e:
        for path in ds.pairs[index].masks:
            read_mask_file(path)  # an unreadable file raises its own error, unchanged
        raise DataError(f"{e}. {context} {task_text(ds.num_classes)}, which these masks do not fit") from None


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


def _pack(mask: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
    # Predictions are kept compressed (exact, a few KB each) for the report's case pictures.
    return zlib.compress(np.ascontiguousarray(mask, dtype=np.uint8).tobytes(), 1), mask.shape


def _unpack(packed: tuple[bytes, tuple[int, ...]]) -> np.ndarray:
    data, shape = packed
    return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(shape)


def _image_case(case_id: str, pred: np.ndarray, gt: np.ndarray) -> ScoredCase:
    return ScoredCase(case_id, pred, gt, extras={"height": int(gt.shape[0]), "width": int(gt.shape[1])})


def _model_title(model_path: Path | None, model) -> str:
    """How a report names the model: its file or run folder, so that a run's report and its export's differ."""
    if model_path is None:
        return type(model).__name__
    return model_path.name if model_path.name not in (run_files.BEST, run_files.LAST) else \
        f"{model_path.parent.name}/{model_path.name}"


def _open_model(model, device, batch_size: int, keep_size: bool):
    """(the :class:`~segdino.predictor.Predictor` of ``model``, its file or None)."""
    model_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    predictor = Predictor(model, device, batch_size=batch_size, keep_size=keep_size)
    if hasattr(predictor.model, "eval"):
        predictor.model.eval()
    return predictor, model_path


def _model_cases(predictor: Predictor, ds, who: str, workers: int, packed: dict) -> Iterator[ScoredCase]:
    """Each case of ``ds`` predicted in batches, at the image's own size."""
    batch_size = predictor.batch_size

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        image = ds.native_image(i)
        gt = read_ground_truth(ds, i, who)
        if image.shape[:2] != gt.shape:
            pair = ds.pairs[i]
            raise DataError(f"{pair.masks[0]}: mask size {gt.shape[1]}x{gt.shape[0]} differs from its image "
                            f"{pair.image} ({image.shape[1]}x{image.shape[0]})")
        return image, gt

    indices = list(range(len(ds)))
    loaded = prefetch(load, indices, workers, depth=2 * batch_size)
    batch: list[tuple[int, np.ndarray, np.ndarray]] = []
    with torch.inference_mode():
        for i in indices:
            image, gt = next(loaded)
            batch.append((i, image, gt))
            if len(batch) < batch_size and i != indices[-1]:
                continue
            masks = predictor.labels([b[1] for b in batch])
            for (j, _, gt), pred in zip(batch, masks):
                packed[ds.case_ids[j]] = _pack(pred)
                yield _image_case(ds.case_ids[j], pred, gt)
            batch = []


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
        data: a 2D dataset folder (docs/FORMATS.md, "Datasets").
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
        the summary written to ``summary.json`` (:mod:`segdino.summary_file`): the statistics of
        :func:`segdino.metrics.summarize`, ``evaluation`` (what and how) and ``outputs`` (where).

    Raises:
        DataError: unreadable files, image/mask size mismatches, masks that do not fit the
            model's class count, an empty split. CheckpointError: a bad model file.
    """
    from .inference import check_input_kind

    if isinstance(model, (str, os.PathLike)) and run_dir is None:
        run_dir = find_run_dir(model)
    predictor, model_path = _open_model(model, device, batch_size, keep_size)
    model, dev = predictor.model, predictor.device
    check_input_kind(model, "2d", data)
    config = model.config
    num_classes = int(config.num_classes)
    ds, split_source = load_split(data, split, num_classes=num_classes, image_size=tuple(config.image_size),
                                  fold=fold, seed=seed, mask_threshold=int(config.mask_threshold), run_dir=run_dir)
    who = f"The model {model_path} predicts" if model_path is not None else "The model predicts"
    packed: dict[str, tuple[bytes, tuple[int, ...]]] = {}
    index_of = {c: i for i, c in enumerate(ds.case_ids)}

    def picture(case: str):
        i = index_of[case]
        return ds.native_image(i), read_ground_truth(ds, i, who), _unpack(packed[case])

    resolution = ("native size padded to a multiple of 16 (--keep-size)" if keep_size else
                  f"resized to the model's {config.image_size[0]}x{config.image_size[1]} input, logits resized "
                  "back to each image's own size (bilinear)")
    facts = dict(mode="model", model=str(model_path) if model_path is not None else type(model).__name__,
                 data=str(data), split=split, split_source=split_source, cases=list(ds.case_ids),
                 num_classes=num_classes, inference=resolution, metrics_at=METRICS_AT, device=str(dev),
                 pretrained=pretrained_of(run_dir, model_path))
    source = Source(
        "images", num_classes, getattr(config, "class_names", None), facts,
        title=f"SegDINO evaluation of {_model_title(model_path, model)}: {Path(data).name}, {split} split",
        picture=picture, log_csv=run_log_csv(run_dir),
        missing_warning=(f"never occur in the ground truth of this split; check that the model's {num_classes} "
                         "classes match the dataset's masks"),
    )
    cases = _model_cases(predictor, ds, who, workers, packed)
    return evaluate(cases, source, out, total=len(ds), progress=progress)


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
        predictions: folder of masks named after the cases (:mod:`segdino.prediction_files`);
            a ``segdino predict`` output folder is read from its ``masks/``.
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
    ds, split_source = load_split(data, split, num_classes=num_classes, image_size=None, fold=fold, seed=seed,
                                  mask_threshold=mask_threshold, run_dir=run_dir)
    folder = prediction_folder(predictions)
    known = [p.case_id for p in find_pairs(Path(data))] if split != "all" else ds.case_ids
    files = match_predictions(folder, ds.case_ids, known)
    context = f"--num-classes {num_classes} means"

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        case = ds.case_ids[i]
        gt = read_ground_truth(ds, i, context)
        pred = read_prediction(files[case], num_classes, mask_threshold, context)
        if pred.shape != gt.shape:
            raise DataError(f"{files[case]}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from the "
                            f"ground truth {ds.pairs[i].masks[0]} ({gt.shape[1]}x{gt.shape[0]}); predictions "
                            "must be at each image's own size")
        return pred, gt

    index_of = {c: i for i, c in enumerate(ds.case_ids)}

    def picture(case: str):
        i = index_of[case]
        pred, gt = load(i)
        return ds.native_image(i), gt, pred

    facts = dict(mode="predictions", predictions=str(folder), data=str(data), split=split,
                 split_source=split_source, cases=list(ds.case_ids), num_classes=num_classes,
                 metrics_at=METRICS_AT, pretrained=pretrained_of(run_dir),
                 ignored_predictions=files.ignored)
    source = Source("images", num_classes, class_names, facts,
                    title=f"SegDINO evaluation of {folder.name}: {Path(data).name}, {split} split",
                    picture=picture, log_csv=run_log_csv(run_dir))
    cases = (_image_case(ds.case_ids[i], *load(i)) for i in range(len(ds)))
    return evaluate(cases, source, out, total=len(ds), progress=progress)
