"""Inference at each image's own size (CONTRACTS, "Inference resolution").

Default: resize to the model's input size, predict, resize the logits back to the image's
size (bilinear), then threshold (binary) or argmax (multi-class). ``keep_size=True`` instead
pads the image to a multiple of 16 and crops the logits.

A model here is anything that maps a normalised (B, 3, H, W) float batch to (B, K, H, W)
logits and carries ``config`` (a :class:`ModelConfig`): a :class:`segdino.SegDINO`, the fast
wrapper of :mod:`segdino.fast`, or an ONNX Runtime model from :mod:`segdino.export`
(:func:`load_inference_model` loads any of them from a file).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .data.imageio import as_rgb_array
from .errors import CheckpointError, ConfigError, DataError
from .memory import check_memory, forward_bytes, memory_limit
# The tensor ops live in segdino.ops; they are named here too, where callers have long found them.
from .ops import (logits_to_labels, logits_to_probabilities, normalize, padded_size,  # noqa: F401
                  preprocess, resize_image, resize_logits, to_tensor)
from .sliding_window import sliding_window


@dataclass
class Prediction:
    """One image's result at its own size."""

    mask: np.ndarray  # (H, W) uint8 labels
    probabilities: np.ndarray | None = None  # (K, H, W) float32, or (1, H, W) for binary


def model_logits_at_size(
    model: torch.nn.Module,
    batch: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    keep_size: bool = False,
) -> list[torch.Tensor]:
    """Run ``model`` on a normalised batch and return each image's (K, H, W) float logits at its size."""
    logits = check_finite_logits(model(batch).float(), model)
    out = []
    for i, (h, w) in enumerate(sizes):
        li = logits[i : i + 1]
        li = li[..., :h, :w] if keep_size else resize_logits(li, (h, w))
        out.append(li[0])
    return out


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


def _prepare_model(model, device: str | torch.device | None):
    """The model to run and its device; a plain module is moved to an explicitly named device."""
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


def _compiled(model) -> bool:
    # A compiled fast model specialises on the input shape: keep batch shapes fixed.
    return getattr(model, "compiled", None) is not None


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


def _run(model, x: torch.Tensor, dev: torch.device, batch_size: int) -> torch.Tensor:
    """Logits of a normalised batch; compiled models always see ``batch_size`` images."""
    n = x.shape[0]
    if _compiled(model) and n < batch_size:
        x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
    return check_finite_logits(model(x.to(dev, non_blocking=True))[:n].float(), model)


def _finish(logits: torch.Tensor, probabilities: bool) -> np.ndarray | Prediction:
    """(K, H, W) logits of one image -> its mask (or a :class:`Prediction`)."""
    mask = logits_to_labels(logits[None])[0].cpu().numpy()
    if not probabilities:
        return mask
    prob = logits_to_probabilities(logits[None])[0].to(torch.float32).cpu().numpy()
    return Prediction(mask, prob)


def _check_any_size(model) -> None:
    """Refuse ``keep_size`` for an ONNX export, whose graph is fixed to one input size."""
    try:
        from .export import OnnxModel
    except ImportError:
        return
    if isinstance(model, OnnxModel):
        h, w = model.config.image_size
        raise ConfigError(f"--keep-size runs each image at its own size, but {model.path} was exported for "
                          f"{h}x{w} inputs only; drop --keep-size, or use the .safetensors checkpoint")


def _keep_size_batch(config: ModelConfig, padded: tuple[int, int], size: tuple[int, int], batch_size: int) -> int:
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


def predict_arrays(model, images: Sequence[np.ndarray], device: torch.device, batch_size: int = 8,
                   keep_size: bool = False, probabilities: bool = False, tile_overlap: float | None = None) -> list:
    """Segment (H, W, 3) uint8 images with a model already on ``device`` (see :func:`predict`)."""
    check_input_kind(model, "2d")
    config: ModelConfig = model.config
    if tile_overlap is not None:
        # At native resolution, by overlapping tiles of the model's input size (smaller images padded).
        out = []
        for im in images:
            x = normalize(to_tensor(im), config)[None]
            out.append(_finish(sliding_window(model, x.to(device), config.image_size, tile_overlap, batch_size)[0],
                               probabilities))
        return out
    if keep_size:
        _check_any_size(model)
    sizes = [tuple(int(s) for s in im.shape[:2]) for im in images]
    results: list = [None] * len(images)
    if keep_size:
        # Only images of the same padded size can share a batch.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(sizes):
            groups.setdefault(padded_size(h, w), []).append(i)
        batches = []
        for padded, idx in groups.items():
            step = _keep_size_batch(config, padded, sizes[idx[0]], batch_size)
            batches += [idx[k : k + step] for k in range(0, len(idx), step)]
    else:
        batches = [list(range(k, min(k + batch_size, len(images)))) for k in range(0, len(images), batch_size)]
    for idx in batches:
        x = torch.stack([preprocess(images[i], config, keep_size=keep_size) for i in idx])
        logits = _run(model, x, device, batch_size)
        for j, i in enumerate(idx):
            h, w = sizes[i]
            li = logits[j : j + 1]
            li = li[..., :h, :w] if keep_size else resize_logits(li, (h, w))
            results[i] = _finish(li[0], probabilities)
    return results


@torch.inference_mode()
def predict(
    model,
    images: Iterable,
    batch_size: int = 8,
    keep_size: bool = False,
    device: str | torch.device | None = None,
    probabilities: bool = False,
    tile_overlap: float | None = None,
) -> list[np.ndarray] | list[Prediction]:
    """Segment raw images at their own sizes.

    Args:
        model: a SegDINO model, a fast or ONNX model from :func:`load_inference_model`, or a
            model file / run folder (loaded with :func:`load_inference_model`). Its ``config``
            gives the input size and normalisation.
        images: one or several paths, PIL images or (H, W) / (H, W, C) uint8 arrays.
        batch_size: images per forward pass.
        keep_size: run at the native size padded to a multiple of 16 instead of resizing
            (images of one padded size share a batch).
        device: None keeps the model where it is; ``auto``/``cpu``/``cuda``/``mps`` moves a
            SegDINO model there (fast and ONNX models must be loaded for their device).
        probabilities: return :class:`Prediction` objects with probability maps too:
            (1, H, W) sigmoid foreground probability for a binary model, (K, H, W) softmax else.
        tile_overlap: run each image at its own resolution by overlapping tiles of the model's
            input size, blended with a Gaussian weight (:func:`segdino.sliding_window.sliding_window`);
            the value is the share of a tile its neighbours overlap, e.g. 0.5.

    Returns:
        one (H, W) uint8 label mask per image, at that image's size, in input order
        (or :class:`Prediction` objects).

    Raises:
        DataError: an image cannot be read or is not an image array (the message names it).
    """
    if isinstance(images, (str, bytes, os.PathLike)) or hasattr(images, "shape") or hasattr(images, "mode"):
        images = [images]
    images = list(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    model, dev = _prepare_model(model, device)
    check_input_kind(model, "2d", images[0] if images and isinstance(images[0], (str, os.PathLike)) else None)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        results: list = []
        # Decode one batch at a time so that a long list of paths is never all in memory.
        for start in range(0, len(images), batch_size):
            chunk = [as_rgb_array(im) for im in images[start : start + batch_size]]
            results += predict_arrays(model, chunk, dev, batch_size, keep_size, probabilities, tile_overlap)
        return results
    finally:
        if was_training:
            model.train()
