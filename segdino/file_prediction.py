"""Predicting files and folders: the inputs found, their output names, and the loop that
predicts and writes them, for 2D images and volumes (``segdino predict``, :func:`segdino.predict`
with ``out``).

Folders are searched recursively. ``<name>``, the output name of an image, is the file's stem,
or its path relative to the folder given (sub-folders kept), so files of the same stem in
different folders never overwrite each other. An image of an nnU-Net raw folder
(``imagesTs/CASE_0000.png`` beside a ``dataset.json``) is named after its case, ``CASE``, as
nnU-Net names predictions and labels. Volume inputs (NIfTI, MetaImage and NRRD files, DICOM
series folders) go to :func:`segdino.volumes.predict.predict_volume_files`. The layout written is
:mod:`segdino.prediction_writer`'s.

An input that cannot be read is reported (``on_error``) and the others are still predicted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .data.imageio import is_image_file, read_image
from .data.layouts import in_nnunet_images_folder, nnunet_case_name
from .ensemble import load_models
from .errors import ConfigError, DataError
from .evaluation import prefetch
from .inference import check_input_kind, prepare_model
from .outputs import open_output
from .prediction_writer import PredictionWriter
from .predictor import Predictor
from .progress import Progress
from .sliding_window import check_overlap, ensemble


@dataclass
class ImageInput:
    path: Path
    root: Path | None  # the folder given on the command line, or None for a file given directly

    def own_name(self) -> str:
        stem = self.path.stem
        if in_nnunet_images_folder(self.path) and nnunet_case_name(stem):
            stem = nnunet_case_name(stem)
        if self.root is None:
            return stem
        return self.path.parent.relative_to(self.root).joinpath(stem).as_posix()


def _volume_checker() -> Callable[[Path], bool]:
    try:
        from .volumes.predict import is_volume_input
    except ImportError:
        # Without the volume predictor, volume files are still recognised so as not to be read as images.
        return lambda p: p.name.lower().endswith((".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr"))
    return lambda p: bool(is_volume_input(p))


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[ImageInput], list[Path], list[str]]:
    """Expand files and folders (recursively) into image inputs and volume inputs.

    Returns:
        ``(images, volumes, problems)``: ``problems`` names inputs that do not exist or hold no
        image; they are reported, and the others are still predicted.
    """
    is_volume = _volume_checker()
    images: list[ImageInput] = []
    volumes: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add_image(p: Path, root: Path | None) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            images.append(ImageInput(p, root))

    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            problems.append(f"{p}: no such file or folder")
        elif p.is_file():
            if is_volume(p):
                volumes.append(p)
            else:
                add_image(p, None)  # named explicitly: tried whatever its suffix
        elif is_volume(p):
            volumes.append(p)
        else:
            before = len(images) + len(volumes)
            for dirpath, dirnames, filenames in os.walk(p):
                here = Path(dirpath)
                kept = []
                for d in sorted(dirnames):
                    if d.startswith("."):
                        continue
                    if is_volume(here / d):
                        volumes.append(here / d)
                    else:
                        kept.append(d)
                dirnames[:] = kept
                for name in sorted(filenames):
                    f = here / name
                    if name.startswith("."):
                        continue
                    if is_volume(f):
                        volumes.append(f)
                    elif is_image_file(f):
                        add_image(f, p)
            if len(images) + len(volumes) == before:
                problems.append(f"{p}: no image files in this folder")
    return images, volumes, problems


def output_names(items: Sequence[ImageInput]) -> list[str]:
    """A distinct output name (relative path without suffix) for every input.

    Each input is named after its stem (or its path inside the folder given). Where two names
    collide (the same stem in two folders), all names become paths relative to the common
    folder of the inputs; names that still collide (``x.png`` and ``x.jpg``) keep their suffix
    (``x_jpg``). Comparison ignores case, as some file systems do.
    """
    names = [it.own_name() for it in items]
    if _distinct(names):
        return names
    parents = [str(it.path.resolve().parent) for it in items]
    common = Path(os.path.commonpath(parents)) if parents else Path(".")
    names = [it.path.resolve().relative_to(common).with_suffix("").as_posix() for it in items]
    counts: dict[str, int] = {}
    for n in names:
        counts[n.lower()] = counts.get(n.lower(), 0) + 1
    out = []
    for n, it in zip(names, items):
        if counts[n.lower()] > 1:
            n = f"{n}_{it.path.suffix.lstrip('.').lower()}" if it.path.suffix else n
        out.append(n)
    if not _distinct(out):
        # Only names that differ by case alone are left: number them in input order.
        used: set[str] = set()
        for i, n in enumerate(out):
            k, base = 1, n
            while n.lower() in used:
                k += 1
                n = f"{base}_{k}"
            used.add(n.lower())
            out[i] = n
    return out


def _distinct(names: Sequence[str]) -> bool:
    return len({n.lower() for n in names}) == len(names)


def _read(item: ImageInput) -> tuple[np.ndarray | None, str | None]:
    try:
        return read_image(item.path), None
    except DataError as e:
        return None, str(e)


def predict_files(model, images: Sequence[ImageInput], out: Path, *, batch_size: int = 8, keep_size: bool = False,
                  probabilities: bool = False, probability_format: str = "png", overlays: bool = False,
                  workers: int = 2, progress: bool | str = False, on_error: Callable[[str], None] | None = None,
                  label_values: str = "255", tile_overlap: float | None = None) -> tuple[list[Path], list[str]]:
    """Predict image inputs in batches and write their outputs (:class:`~segdino.prediction_writer.PredictionWriter`).

    Returns:
        ``(written mask paths, error messages)``; an unreadable image is an error message and
        the others are still predicted.
    """
    names = output_names(images)
    predictor = Predictor(model, batch_size=batch_size, keep_size=keep_size, tile_overlap=tile_overlap)
    writer = PredictionWriter(out, int(predictor.config.num_classes), probability_format, label_values)
    written: list[Path] = []
    errors: list[str] = []
    bar = Progress(len(images), "predict", "image", quiet=progress == "quiet") if progress else None
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            preds = predictor.predict([b[1] for b in batch], probabilities)
        for (name, image), pred in zip(batch, preds):
            written.append(writer.write_image(name, image, pred, overlays))
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for (image, error), name in zip(prefetch(_read, images, workers, 2 * batch_size), names):
        if error is not None:
            errors.append(error)
            if on_error is not None:
                on_error(error)
            if bar is not None:
                bar.update(1)
            continue
        batch.append((name, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    return written, errors


@dataclass
class PredictOptions:
    """The options of ``segdino predict``, by the names of its flags (``--keep-size`` = ``keep_size``)."""

    batch_size: int = 8
    keep_size: bool = False
    probabilities: bool = False
    probability_format: str = "png"
    overlays: bool = False
    label_values: str = "255"
    tile_overlap: float | None = None
    tta: bool = False
    workers: int = 2
    channel: int | str | None = None
    largest_component: bool = False
    min_size: float | None = None  # mm^3, volumes
    device: str | None = "auto"
    progress: bool | str = False

    @classmethod
    def of(cls, namespace) -> "PredictOptions":
        """The options an ``argparse`` namespace (or any object with these attributes) holds."""
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)})


def refuse_2d_options(options) -> None:
    """Options of 2D images given with volume inputs: refused before the model loads, each by its name."""
    if options.keep_size:
        raise ConfigError("--keep-size applies to 2D images; volumes are predicted slice by slice on their own grid")
    if options.probability_format != "png":
        raise ConfigError(f"--probability-format {options.probability_format} applies to 2D images; volume "
                          "probabilities are written as volumes in the input's format")
    if options.label_values != "255":
        raise ConfigError(f"--label-values {options.label_values} applies to 2D images; volume labels are always "
                          "written as class indices 0..K-1")


def predict_paths(model, inputs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike,
                  options: PredictOptions | None = None, on_error: Callable[[str], None] | None = None) -> dict:
    """Predict image and volume files and folders into ``out``, as ``segdino predict`` does.

    Args:
        model: model files / run folders / ONNX files (several, or a folder of fold runs: an
            ensemble), or a loaded model.
        inputs: files and folders (searched recursively).
        out: the output folder, held while it is written (:func:`segdino.outputs.open_output`).
        options: :class:`PredictOptions`.
        on_error: called with each input that cannot be read or predicted, as it happens.

    Returns:
        ``{"out": OUT, "masks": [written paths], "errors": [messages]}``.

    Raises:
        DataError: nothing to predict. ConfigError: options that do not apply to the inputs,
        or a model trained on the other kind of input.
    """
    options = options or PredictOptions()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    images, volumes, problems = collect_inputs(inputs)
    if not images and not volumes:
        raise DataError("nothing to predict: " + "; ".join(problems) if problems else "nothing to predict")
    if images and options.channel is not None:
        raise ConfigError("--channel applies to volume inputs; these are 2D images")
    if volumes:
        refuse_2d_options(options)
    with open_output(out, inputs=inputs):
        for p in problems:
            if on_error is not None:
                on_error(p)
        if options.tile_overlap is not None:
            check_overlap(options.tile_overlap)
        model = _load(model, options)
        # Refused before anything is written: one line naming an input of the wrong kind.
        if images:
            check_input_kind(model, "2d", images[0].path)
        if volumes:
            check_input_kind(model, "volume", volumes[0])

        def skipped(message: str) -> None:
            if on_error is not None:
                on_error(f"skipped {message}")

        out = Path(out)
        written, errors = [], list(problems)
        if images:
            w, e = predict_files(model, images, out, batch_size=options.batch_size, keep_size=options.keep_size,
                                 probabilities=options.probabilities, probability_format=options.probability_format,
                                 overlays=options.overlays, workers=max(0, options.workers),
                                 progress=options.progress, on_error=skipped, label_values=options.label_values,
                                 tile_overlap=options.tile_overlap)
            written, errors = written + w, errors + e
        if volumes:
            w, e = _predict_volumes(model, volumes, out, options)
            for message in e:
                skipped(message)
            written, errors = written + w, errors + e
        return {"out": str(out), "masks": [str(p) for p in written], "errors": errors}


def _load(model, options: PredictOptions):
    """The model to predict with: files loaded (an ensemble when several), flips averaged with ``tta``."""
    paths = [model] if isinstance(model, (str, os.PathLike)) else model
    if isinstance(paths, (list, tuple)) and all(isinstance(m, (str, os.PathLike)) for m in paths):
        return load_models(list(paths), options.device, tta=options.tta)
    model, _ = prepare_model(model, options.device)  # a loaded model (the Python API)
    return ensemble([model], tta=True) if options.tta else model


def _channel(value: int | str | None) -> int | str | None:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _predict_volumes(model, volumes: list[Path], out: Path, options: PredictOptions) -> tuple[list[Path], list[str]]:
    try:
        from .volumes.predict import predict_volume_files
    except ImportError as e:
        return [], [f"{v}: volume prediction is unavailable ({e})" for v in volumes]
    results = predict_volume_files(model, volumes, out, probabilities=options.probabilities,
                                   largest_component=options.largest_component, batch_size=options.batch_size,
                                   device=None, channel=_channel(options.channel), overlays=options.overlays,
                                   tile_overlap=options.tile_overlap, min_size_mm3=options.min_size,
                                   progress=options.progress)
    written = [Path(path) for _, path, err in results if path is not None and err is None]
    errors = [f"{src}: {err}" if str(src) not in str(err) else str(err) for src, _, err in results if err is not None]
    return written, errors


__all__ = ["ImageInput", "PredictOptions", "collect_inputs", "output_names", "predict_files", "predict_paths",
           "refuse_2d_options"]
