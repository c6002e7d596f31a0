"""``segdino predict``: segment image files and folders, writing masks at each image's own size.

Output layout in ``--out``::

    masks/<name>.png            labels at the input's own size: binary 0/255 (viewable), or 0/1
                                with --label-values index (as nnU-Net writes 2D labels; both are
                                read back as binary by `segdino evaluate --predictions`);
                                multi-class the class index 0..K-1
    probabilities/<name>.png    with --probabilities: the foreground probability as 8-bit grey
                                (value = round(255 p)); multi-class models write one
                                <name>_class<k>.png per foreground class k
    probabilities/<name>.npy    with --probability-format npy: float32, (H, W) foreground
                                probability for a binary model, (K, H, W) softmax otherwise
    overlays/<name>.png         with --overlays: the image with each predicted class tinted and
                                outlined; volumes: overlays/CASE/slice_SSS.png for every slice holding a
                                prediction and a montage overlays/CASE.png

``<name>`` is the file's stem, or its path relative to the folder given (sub-folders kept), so
files of the same stem in different folders never overwrite each other. An image of an nnU-Net
raw folder (``imagesTs/CASE_0000.png`` beside a ``dataset.json``) is named after its case,
``CASE``, as nnU-Net names predictions and labels.

An image that cannot be read is named on stderr and the others are still predicted; the exit
status is then 1. Volume inputs (NIfTI, MetaImage and NRRD files, DICOM series folders) go to the
volume predictor.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_bytes
from . import add_device_argument, add_quiet_argument, progress_mode

# Overlays are drawn as volume overlays and report figures draw them: one home, in segdino.report.
from ..report import CLASS_COLOURS, OVERLAY_ALPHA, overlay_prediction  # noqa: E402,F401


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images (files or folders) with a model",
        description="Segment image files and folders (searched recursively) at each image's own size. "
                    "Writes masks/ (binary 0/255, multi-class index values), and optionally probabilities/ "
                    "and overlays/, into --out. Unreadable images are named and skipped (exit status 1).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files or folders; volumes too (.nii[.gz], .mha, .mhd, .nrrd files, DICOM series folders)")
    parser.add_argument("--model", required=True, action="append", metavar="CKPT|RUN_DIR|FILE.onnx",
                        help="checkpoint (ours or the authors'), run folder (its best.safetensors) or ONNX file; "
                             "given several times, or a folder of run folders (folds), their probabilities are averaged")
    parser.add_argument("--tta", action="store_true", help="average the predictions of flipped inputs (4 flips)")
    parser.add_argument("--tile-overlap", type=float, default=None, metavar="F",
                        help="sliding-window prediction at native resolution with tiles overlapping by F (e.g. 0.5); "
                             "default for models trained on patches: 0.5")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--probabilities", action="store_true", help="also write probability maps")
    parser.add_argument("--probability-format", default="png", choices=["png", "npy"],
                        help="2D images: png: 8-bit grey per foreground class (default); npy: float32 arrays "
                             "(volumes write probabilities as volumes)")
    parser.add_argument("--overlays", action="store_true", help="also write the images with the prediction drawn on; volumes: a PNG per slice "
                             "holding a prediction and a montage per case")
    parser.add_argument("--label-values", default="255", choices=["255", "index"],
                        help="2D images, binary masks: 255 writes 0/255 (viewable, default); index writes the class "
                             "index 0/1, as nnU-Net's 2D labels")
    parser.add_argument("--keep-size", action="store_true",
                        help="2D images: run at each image's native size padded to a multiple of 16 instead of "
                             "resizing (volumes always keep their grid)")
    parser.add_argument("--batch-size", type=int, default=8, help="images (or volume slices) per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="2D images: threads decoding images ahead (default 2)")
    parser.add_argument("--channel", default=None, metavar="C",
                        help="volumes: the channel of multi-channel volumes (index or name)")
    parser.add_argument("--largest-component", action="store_true",
                        help="volumes: keep only the largest connected component of each predicted class")
    add_quiet_argument(parser)
    add_device_argument(parser)
    parser.set_defaults(func=run_predict)


# ---------------------------------------------------------------------------------------------
# Inputs and output names


@dataclass
class ImageInput:
    path: Path
    root: Path | None  # the folder given on the command line, or None for a file given directly

    def own_name(self) -> str:
        from ..data.layouts import in_nnunet_images_folder, nnunet_case_name

        stem = self.path.stem
        if in_nnunet_images_folder(self.path) and nnunet_case_name(stem):
            stem = nnunet_case_name(stem)
        if self.root is None:
            return stem
        return self.path.parent.relative_to(self.root).joinpath(stem).as_posix()


def _volume_checker() -> Callable[[Path], bool]:
    try:
        from ..volumes.predict import is_volume_input
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
    from ..data.imageio import is_image_file

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


# ---------------------------------------------------------------------------------------------
# Writing


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


#: ``--label-values`` choices: how a binary model's foreground is stored in a mask file.
LABEL_VALUES = ("255", "index")


def mask_for_file(mask: np.ndarray, num_classes: int, label_values: str = "255") -> np.ndarray:
    """Labels -> the values written: a binary model's foreground as 255 (viewable; ``label_values``
    ``"255"``) or 1 (``"index"``, nnU-Net's 2D labels); class indices for multi-class models."""
    if label_values not in LABEL_VALUES:
        raise ConfigError(f"--label-values must be one of {', '.join(LABEL_VALUES)}, got {label_values!r}")
    if num_classes != 1:
        return mask.astype(np.uint8)
    return (mask > 0).astype(np.uint8) * np.uint8(255 if label_values == "255" else 1)


def write_outputs(out: Path, name: str, image: np.ndarray, prediction, num_classes: int, probabilities: bool,
                  probability_format: str, overlays: bool, label_values: str = "255") -> Path:
    """Write one image's mask (and probability map, overlay) under ``out``; returns the mask path."""
    from ..inference import Prediction

    mask = prediction.mask if isinstance(prediction, Prediction) else prediction
    mask_path = out / "masks" / f"{name}.png"
    try:
        atomic_write_bytes(mask_path, _png(mask_for_file(mask, num_classes, label_values)))
        if probabilities:
            prob = prediction.probabilities
            base = out / "probabilities" / name
            if probability_format == "npy":
                atomic_write_bytes(base.with_name(base.name + ".npy"), _npy(prob[0] if num_classes == 1 else prob))
            elif num_classes == 1:
                atomic_write_bytes(base.with_name(base.name + ".png"), _png(_to_u8(prob[0])))
            else:
                for k in range(1, prob.shape[0]):
                    atomic_write_bytes(base.with_name(f"{base.name}_class{k}.png"), _png(_to_u8(prob[k])))
        if overlays:
            atomic_write_bytes(out / "overlays" / f"{name}.png", _png(overlay_prediction(image, mask)))
    except OSError as e:
        raise DataError(f"{out}: cannot write the outputs of {name} ({e})") from None
    return mask_path


def _to_u8(p: np.ndarray) -> np.ndarray:
    return np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Command


def _channel(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _read(item: ImageInput) -> tuple[np.ndarray | None, str | None]:
    from ..data.imageio import read_image

    try:
        return read_image(item.path), None
    except DataError as e:
        return None, str(e)


def predict_files(model, images: Sequence[ImageInput], out: Path, *, batch_size: int = 8, keep_size: bool = False,
                  probabilities: bool = False, probability_format: str = "png", overlays: bool = False,
                  workers: int = 2, progress: bool | str = False, on_error: Callable[[str], None] | None = None,
                  label_values: str = "255", tile_overlap: float | None = None) -> tuple[list[Path], list[str]]:
    """Predict image inputs in batches and write their outputs (layout in the module docstring).

    Returns:
        ``(written mask paths, error messages)``; an unreadable image is an error message and
        the others are still predicted.
    """
    import torch

    from ..evaluation import prefetch
    from ..predictor import Predictor

    names = output_names(images)
    predictor = Predictor(model, batch_size=batch_size, keep_size=keep_size, tile_overlap=tile_overlap)
    num_classes = int(model.config.num_classes)
    written: list[Path] = []
    errors: list[str] = []
    bar = None
    if progress:
        from ..progress import Progress

        bar = Progress(len(images), "predict", "image", quiet=progress == "quiet")
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            preds = predictor.predict([b[1] for b in batch], probabilities)
        for (name, image), pred in zip(batch, preds):
            written.append(write_outputs(out, name, image, pred, num_classes, probabilities, probability_format,
                                         overlays, label_values))
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for (image, error), name, item in zip(prefetch(_read, images, workers, 2 * batch_size), names, images):
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


def run_predict(args: argparse.Namespace) -> int:
    def report(message: str) -> None:
        print(f"segdino predict: {message}", file=sys.stderr)

    result = predict_from_args(args, on_error=report)
    errors = result["errors"]
    print(f"{len(result['masks'])} mask(s) written under {result['out']}"
          + (f"; {len(errors)} input(s) failed (named above)" if errors else ""))
    return 1 if errors else 0


def predict_from_args(args: argparse.Namespace, on_error: Callable[[str], None] | None = None) -> dict:
    """Predict as the command does; returns ``{"out", "masks": [paths], "errors": [messages]}``.

    ``args.model`` may also be a loaded model (the Python API). Inputs that cannot be read are
    errors passed to ``on_error`` as they happen; the others are still predicted.
    """
    from ..options import COUNT, POSITIVE_INT, check_numbers
    from ..outputs import open_output

    check_numbers(args, {"batch_size": POSITIVE_INT, "workers": COUNT})
    inputs = [args.inputs] if isinstance(args.inputs, (str, os.PathLike)) else list(args.inputs)
    args.inputs = inputs
    images, volumes, problems = collect_inputs(inputs)
    if not images and not volumes:
        raise DataError("nothing to predict: " + "; ".join(problems) if problems else "nothing to predict")
    if images and args.channel is not None:
        raise ConfigError("--channel applies to volume inputs; these are 2D images")
    if volumes:
        refuse_2d_options(args)
    with open_output(args.out, inputs=inputs):
        return _predict(args, images, volumes, problems, on_error)


def _predict(args: argparse.Namespace, images: list[ImageInput], volumes: list[Path], problems: list[str],
             on_error: Callable[[str], None] | None) -> dict:
    for p in problems:
        if on_error is not None:
            on_error(p)
    from ..ensemble import load_models
    from ..inference import check_input_kind, prepare_model
    from ..sliding_window import check_overlap, ensemble

    if args.tile_overlap is not None:
        check_overlap(args.tile_overlap)
    paths = [args.model] if isinstance(args.model, (str, os.PathLike)) else args.model
    if isinstance(paths, (list, tuple)) and all(isinstance(m, (str, os.PathLike)) for m in paths):
        model = load_models(list(paths), args.device, tta=args.tta)
    else:  # a loaded model (the Python API)
        model, _ = prepare_model(args.model, args.device)
        if args.tta:
            model = ensemble([model], tta=True)
    # Refused before anything is written: one line naming an input of the wrong kind.
    if images:
        check_input_kind(model, "2d", images[0].path)
    if volumes:
        check_input_kind(model, "volume", volumes[0])
    out = Path(args.out)

    def skipped(message: str) -> None:
        if on_error is not None:
            on_error(f"skipped {message}")

    written, errors = [], list(problems)
    if images:
        w, e = predict_files(model, images, out, batch_size=args.batch_size, keep_size=args.keep_size,
                             probabilities=args.probabilities, probability_format=args.probability_format,
                             overlays=args.overlays, workers=max(0, args.workers), progress=progress_mode(args),
                             on_error=skipped, label_values=args.label_values, tile_overlap=args.tile_overlap)
        written += w
        errors += e
    if volumes:
        w, e = _predict_volumes(model, volumes, out, args)
        for message in e:
            skipped(message)
        written += w
        errors += e
    return {"out": str(out), "masks": [str(p) for p in written], "errors": errors}


def refuse_2d_options(args: argparse.Namespace) -> None:
    """Options of 2D images given with volume inputs: refused before the model loads, each by its name."""
    if args.keep_size:
        raise ConfigError("--keep-size applies to 2D images; volumes are predicted slice by slice on their own grid")
    if args.probability_format != "png":
        raise ConfigError(f"--probability-format {args.probability_format} applies to 2D images; volume "
                          "probabilities are written as volumes in the input's format")
    if args.label_values != "255":
        raise ConfigError(f"--label-values {args.label_values} applies to 2D images; volume labels are always "
                          "written as class indices 0..K-1")


def _predict_volumes(model, volumes: list[Path], out: Path, args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    try:
        from ..volumes.predict import predict_volume_files
    except ImportError as e:
        return [], [f"{v}: volume prediction is unavailable ({e})" for v in volumes]
    results = predict_volume_files(model, volumes, out, probabilities=args.probabilities,
                                   largest_component=args.largest_component, batch_size=args.batch_size,
                                   device=None, channel=_channel(args.channel), overlays=args.overlays,
                                   tile_overlap=args.tile_overlap, progress=progress_mode(args))
    written = [Path(path) for _, path, err in results if path is not None and err is None]
    errors = [f"{src}: {err}" if str(src) not in str(err) else str(err) for src, _, err in results if err is not None]
    return written, errors
