"""Models made ready for inference, and the rules every prediction shares.

Loading a model file for inference (:func:`load_inference_model`), choosing and checking the
device (:func:`resolve_device`, :func:`prepare_model`), the image preprocessing, logits to labels
and probabilities, and the checks on a model's outputs and inputs. :mod:`segdino.predictor` runs
models with these; docs/ARCHITECTURE.md describes the layers.

Inference resolution: by default an image is resized to the model's input size, its logits
resized back to the image's size (bilinear), then thresholded (binary) or argmaxed
(multi-class); ``keep_size=True`` instead pads the image to a multiple of 16 and crops the logits.

A model here is anything that maps a normalised (B, 3, H, W) float batch to (B, K, H, W)
logits and carries ``config`` (a :class:`ModelConfig`): a :class:`segdino.SegDINO`, the fast
wrapper of :mod:`segdino.fast`, or an ONNX Runtime model from :mod:`segdino.export`
(:func:`load_inference_model` loads any of them from a file).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, DataError
from .memory import check_memory, forward_bytes, memory_limit
# The tensor ops live in segdino.ops; they are named here too, where callers have long found them.
from .ops import (logits_to_labels, logits_to_probabilities, normalize, padded_size,  # noqa: F401
                  preprocess, resize_image, resize_logits, to_tensor)


@dataclass
class Prediction:
    """One image's result at its own size."""

    mask: np.ndarray  # (H, W) uint8 labels
    probabilities: np.ndarray | None = None  # (K, H, W) float32, or (1, H, W) for binary


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda, else mps, else cpu; a named device is checked to exist."""
    if device is None or str(device) == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for, but MPS is not available")
    return dev


def model_device(model) -> torch.device:
    """Where ``model`` runs: its ``device`` attribute (fast and ONNX models), else its parameters'."""
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def is_onnx_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_inference_model(path: str | os.PathLike, device: str | torch.device | None = "auto",
                         fast: bool | str = "auto"):
    """Load a model file for inference, ready on ``device``.

    Args:
        path: our ``.safetensors`` file, the authors' state dict, a run folder (its
            ``best.safetensors``), or an ``.onnx`` file exported by ``segdino export``.
        device: ``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda`` or ``mps``. An ONNX model
            runs on the CPU through ONNX Runtime; ``auto`` then means the CPU.
        fast: ``auto`` or True: on CUDA, wrap the model with :func:`segdino.fast.fast_model`
            (bf16, channels-last, ``torch.compile``); False: the plain fp32 model.

    Returns:
        a model in eval mode: (B, 3, H, W) normalised float -> (B, K, H, W) logits, with ``config``.

    Raises:
        CheckpointError: missing or unreadable file, or weights that do not fit their config.
        ConfigError: an unavailable device, or ONNX asked for where ONNX support is missing.
    """
    if is_onnx_path(path):
        if device is not None and str(device) not in ("auto", "cpu"):
            raise ConfigError(f"{path}: an ONNX model runs on the CPU (ONNX Runtime); use --device cpu or auto, "
                              f"or the .safetensors checkpoint to run on {device}")
        try:
            from .export import load_onnx_model
        except ImportError as e:
            raise ConfigError(f"{path}: ONNX support is unavailable ({e}); install onnxruntime, or pass the "
                              ".safetensors checkpoint instead") from None
        return load_onnx_model(path)
    from .checkpoint import load_model

    dev = resolve_device(device)
    model = load_model(path, map_location=dev)
    if fast is not False and dev.type == "cuda":
        from .fast import fast_model

        model = fast_model(model, dev)
    model.source = Path(path)  # named in messages about the model's outputs
    return model.eval()


def prepare_model(model, device: str | torch.device | None = None):
    """The model to run and its device: the one place a model is made ready for prediction.

    Args:
        model: a loaded model, or a model file / run folder / ``.onnx`` file (loaded with
            :func:`load_inference_model` on ``device``, ``auto`` when None).
        device: None keeps a loaded model where it is; a named device moves a plain module there.
            A model with a ``device`` attribute (fast and ONNX models) was built for that device:
            ``auto`` means it, and another device is a :class:`ConfigError`.

    Returns:
        ``(model, device)``.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_inference_model(model, device if device is not None else "auto")
        return model, model_device(model)
    current = model_device(model)
    prepared = getattr(model, "device", None) is not None
    if device is None or (str(device) == "auto" and prepared):
        return model, current
    dev = resolve_device(device)
    if dev == current or (dev.type == current.type and dev.index is None):
        return model, current
    if prepared:
        # Fast and ONNX models are built for one device and cannot be moved.
        raise ConfigError(f"this model was prepared for {current}, not {dev}; load it again with "
                          f"load_inference_model(path, device={str(dev)!r})")
    return model.to(dev), dev


def model_source(model) -> str:
    """The file a model came from (``path`` of ONNX models, ``source`` set on loading), for messages."""
    where = getattr(model, "path", None) or getattr(model, "source", None)
    return str(where) if where is not None else "the model"


def check_finite_logits(logits: torch.Tensor, model) -> torch.Tensor:
    """``logits`` unchanged when every value is finite; else :class:`CheckpointError` naming the model.

    NaN logits threshold to background and argmax to class 0, so a model that overflows (a
    forged or damaged file, a normalisation that divides by almost nothing) would otherwise give
    empty masks and a successful exit.
    """
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise CheckpointError(f"{model_source(model)}: the model's outputs hold {bad:,} NaN or infinite value(s) of "
                              f"{logits.numel():,}; its weights or its config (mean, std) are damaged, so no "
                              "mask was written from them")
    return logits


def check_any_size(model) -> None:
    """Refuse ``keep_size`` for an ONNX export, whose graph is fixed to one input size."""
    try:
        from .export import OnnxModel
    except ImportError:
        return
    if isinstance(model, OnnxModel):
        h, w = model.config.image_size
        raise ConfigError(f"--keep-size runs each image at its own size, but {model.path} was exported for "
                          f"{h}x{w} inputs only; drop --keep-size, or use the .safetensors checkpoint")


def keep_size_batch(config: ModelConfig, padded: tuple[int, int], size: tuple[int, int], batch_size: int) -> int:
    """How many images of one padded size share a forward pass at their own size, within the memory limit.

    Raises:
        DataError: one such image alone is estimated to need more than the limit.
    """
    per_image = forward_bytes(config, padded, batch=1)
    check_memory(per_image, f"an image of {size[1]}x{size[0]} pixels run at its own size (--keep-size)"
                 f" by {config.backbone}", DataError)
    return max(1, min(batch_size, memory_limit() // per_image))


def volume_model_text(volume: Mapping[str, Any]) -> str:
    """A model's volume settings in words, e.g. ``CT window lung (-1350..150 HU), axial slices, 2.5D
    context 1``."""
    spec = volume.get("intensity") or {}
    if spec.get("kind") == "ct":
        preset = f" {spec['preset']}" if spec.get("preset") else ""
        what = f"CT window{preset} ({spec.get('low', 0):g}..{spec.get('high', 0):g} HU)"
    else:
        what = f"intensity percentiles {spec.get('low', '?')}..{spec.get('high', '?')}"
    context = int(volume.get("context") or 0)
    return f"{what}, {volume.get('axis', 'axial')} slices" + (f", 2.5D context {context}" if context else "")


def check_input_kind(model, kind: str, example: str | os.PathLike | None = None) -> None:
    """Refuse inputs of the other kind than the model was trained on, in one line.

    ``kind`` is ``"2d"`` (images) or ``"volume"``. A volume model was trained on windowed scanner
    values (Hounsfield units, MRI intensities) and would segment 8-bit or colour pixels it never
    saw without complaint; a 2D model knows no intensity window or slice axis for a volume.
    ConfigError naming the model's training and ``example`` (an input), if given.
    """
    volume = getattr(getattr(model, "config", None), "volume", None)
    such = f" such as {example}" if example is not None else ""
    if kind == "2d" and volume:
        raise ConfigError(f"this model was trained on volumes ({volume_model_text(volume)}); it cannot segment "
                          f"2D images{such}: give it volumes (.nii/.nii.gz, .mha, .nrrd files or DICOM series)")
    if kind == "volume" and not volume:
        raise ConfigError(f"this model was trained on 2D images (no intensity window or slice axis); it cannot "
                          f"segment volumes{such}: give it 2D images, or a model trained on volumes")
