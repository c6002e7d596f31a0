"""Inference at each image's own size (CONTRACTS, "Inference resolution").

Default: resize to the model's input size, predict, resize the logits back to the image's
size (bilinear), then threshold (binary) or argmax (multi-class). ``keep_size=True`` instead
pads the image to a multiple of 16 and crops the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import PATCH_SIZE
from .config import ModelConfig
from .data.imageio import as_rgb_array


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Mean/std normalisation of a (..., 3, H, W) tensor in [0, 1]."""
    mean = torch.tensor(config.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (B, C, H, W) or (C, H, W) float image."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    squeeze = x.dim() == 3
    if squeeze:
        x = x[None]
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x[0] if squeeze else x


def padded_size(h: int, w: int, multiple: int = PATCH_SIZE) -> tuple[int, int]:
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> (B, H, W) uint8 labels (K=1: logit > 0, i.e. sigmoid > 0.5)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> foreground probability (K=1) or per-class softmax."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


@dataclass
class Prediction:
    """One image's result at its own size."""

    mask: np.ndarray  # (H, W) uint8 labels
    probabilities: np.ndarray | None = None  # (K, H, W) float32, or (1, H, W) for binary


def preprocess(image: np.ndarray, config: ModelConfig, keep_size: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 -> normalised (3, h, w) model input (resized, or padded when keep_size)."""
    x = to_tensor(image)
    if keep_size:
        h, w = x.shape[-2:]
        ph, pw = padded_size(h, w)
        x = normalize(x, config)
        return F.pad(x, (0, pw - w, 0, ph - h))  # zero = the mean colour after normalisation
    return normalize(resize_image(x, config.image_size), config)


def model_logits_at_size(
    model: torch.nn.Module,
    batch: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    keep_size: bool = False,
) -> list[torch.Tensor]:
    """Run ``model`` on a normalised batch and return each image's (K, H, W) float logits at its size."""
    logits = model(batch).float()
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
    from .errors import ConfigError

    if device is None or str(device) == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for, but MPS is not available")
    return dev


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    images: Iterable,
    batch_size: int = 8,
    keep_size: bool = False,
    device: str | torch.device | None = None,
    probabilities: bool = False,
) -> list[np.ndarray] | list[Prediction]:
    """Segment raw images at their own sizes.

    Args:
        model: a SegDINO model (its config gives the input size and normalisation).
        images: one or several paths, PIL images or (H, W, C) uint8 arrays.
        keep_size: run at the native size padded to a multiple of 16 instead of resizing.
        probabilities: return :class:`Prediction` objects with probability maps too.

    Returns:
        one (H, W) uint8 label mask per image (or :class:`Prediction` objects).
    """
    if isinstance(images, (str, bytes)) or hasattr(images, "shape") or hasattr(images, "mode"):
        images = [images]
    images = list(images)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    config: ModelConfig = model.config
    results: list = []
    for start in range(0, len(images), batch_size):
        chunk = [as_rgb_array(im) for im in images[start : start + batch_size]]
        sizes = [im.shape[:2] for im in chunk]
        if keep_size:
            # Images of different sizes run one at a time at their own padded size.
            logits = []
            for im, size in zip(chunk, sizes):
                x = preprocess(im, config, keep_size=True)[None].to(dev)
                logits += model_logits_at_size(model, x, [size], keep_size=True)
        else:
            x = torch.stack([preprocess(im, config) for im in chunk]).to(dev)
            logits = model_logits_at_size(model, x, sizes)
        for li in logits:
            mask = logits_to_labels(li[None])[0].cpu().numpy()
            if probabilities:
                prob = logits_to_probabilities(li[None])[0].cpu().numpy().astype(np.float32)
                results.append(Prediction(mask, prob))
            else:
                results.append(mask)
    return results
