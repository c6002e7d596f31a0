"""The commands as Python functions: ``segdino.train``, ``segdino.evaluate``, ``segdino.predict``.

Each takes the options of its command under the same names (``image_size=64`` for
``--image-size 64``), with the same defaults and checks, because the options are read from the
command's own parser; and returns what the command writes: the run's summary and file paths,
the evaluation summary (as in ``summary.json``) with the paths of its files, the masks written.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from .errors import ConfigError


def _namespace(command: list[str], options: dict[str, Any], caller: str):
    from .cli import options_namespace

    return options_namespace(command, options, caller)


def train(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Train a model, as ``segdino train --data DATA --out OUT ...`` does.

    Args:
        data, out: the dataset folder and the run folder to write.
        **options: any option of ``segdino train`` by name (``backbone="vits16"``,
            ``backbone_weights=FILE``, ``epochs=50``, ``image_size=256``, ``config=FILE``,
            ``quiet=True``, ...); what is not given takes the recipe's default. ``print_config=True``
            resolves the configuration and returns it without training.

    Returns:
        ``best_epoch``, ``best_score`` (validation Dice, or minus the training loss without a
        validation split), ``has_validation``, ``pretrained``, ``out`` and the paths ``best``,
        ``last``, ``config``, ``log`` and ``train_log`` of the run folder; with ``print_config``,
        ``{"config": YAML text}``.
    """
    from .cli.train import resolved_config_text, train_from_args

    opts = dict(options, data=None if data is None else str(data), out=None if out is None else str(out))
    args = _namespace(["train"], opts, "segdino.train")
    if args.gpus not in (None, 1):
        raise ConfigError("segdino.train: gpus starts processes from the command line; run `segdino train --gpus N` "
                          "or torchrun instead")
    if args.print_config:
        return {"config": resolved_config_text(args)}
    return train_from_args(args)


def evaluate(model=None, data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             **options: Any) -> dict[str, Any]:
    """Score a model (or ``predictions=DIR``) on a dataset split, as ``segdino evaluate`` does.

    Args:
        model: a model file, run folder or ONNX file, or a list of them (an ensemble); ``None``
            with ``predictions``.
        data: the dataset folder with the ground truth (2D images or volumes).
        out: the report folder (default: ``RUN_DIR/report`` for a run folder).
        **options: any option of ``segdino evaluate`` by name (``split="all"``,
            ``predictions=DIR``, ``batch_size=8``, ``run=RUN_DIR``, ``quiet=True``, ...).

    Returns:
        the summary written to ``summary.json`` (per class: mean, std, median, count of each
        metric), with ``outputs``: the paths of ``cases.csv``, ``summary.json``, ``report.md``,
        ``report.html`` (and ``lesions.csv`` for volumes) and the distance unit.
    """
    from .cli.evaluate import evaluate_from_args

    models = None if model is None else [str(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    opts = dict(options, model=models, data=None if data is None else str(data), out=None if out is None else str(out))
    return evaluate_from_args(_namespace(["evaluate"], opts, "segdino.evaluate"))


def _is_volume(item: Any) -> bool:
    if not isinstance(item, (str, os.PathLike)):
        return False
    from .volumes.predict import is_volume_input

    return bool(is_volume_input(item))


def predict(model, images: Iterable | Any, out: str | os.PathLike | None = None, **options: Any):
    """Segment images or volumes.

    Without ``out``: returns the label arrays in input order, each at its input's own size:
    (H, W) uint8 masks of images (paths, PIL images or HxWxC uint8 arrays), and (D, H, W) label
    volumes, in the file's array order, of volume paths (NIfTI files, DICOM series folders).
    Options: ``batch_size``, ``keep_size``, ``device``, ``probabilities`` (see
    :func:`segdino.predictor.predict`).

    With ``out``: writes what ``segdino predict INPUT... --out OUT`` writes (``masks/``, and with
    ``probabilities=True`` / ``overlays=True`` those folders), taking any of its options by name,
    and returns ``{"out": OUT, "masks": [written paths], "errors": [inputs that failed]}``.

    ``model`` is a loaded model, or a model file / run folder / ONNX file.
    """
    if out is None:
        from .inference import load_inference_model
        from .predictor import predict as predict_images

        items = [images] if isinstance(images, (str, bytes, os.PathLike)) or hasattr(images, "shape") \
            or hasattr(images, "mode") else list(images)
        if not any(_is_volume(i) for i in items):
            return predict_images(model, items, **options)
        from .volumes.io import read_volume
        from .volumes.predict import predict_volume

        unknown = set(options) - {"batch_size", "device"}
        if unknown:
            raise ConfigError(f"segdino.predict: {', '.join(sorted(unknown))} apply to 2D images or need out=; "
                              "volumes take batch_size and device")
        if isinstance(model, (str, os.PathLike)):
            model = load_inference_model(model, options.get("device", "auto"))
        results = []
        for item in items:
            if _is_volume(item):
                results.append(predict_volume(model, read_volume(item), batch_size=options.get("batch_size", 8),
                                              device=options.get("device")))
            else:
                results += predict_images(model, [item], **options)
        return results
    from .cli.predict import predict_from_args

    inputs = [images] if isinstance(images, (str, os.PathLike)) else [str(i) for i in images]
    opts = dict(options, model=model, inputs=[str(i) for i in inputs], out=str(out))
    return predict_from_args(_namespace(["predict"], opts, "segdino.predict"))
