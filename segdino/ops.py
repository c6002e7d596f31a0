"""Pure tensor operations shared by data loading, training, prediction and export.

Everything here maps tensors (or arrays) to tensors and holds no state: conversion of an image
to a float tensor, normalisation, the bilinear resizes of images and of logits, padding to the
patch grid, and logits to labels or probabilities. The module imports no other part of the
package, so the lowest layers (datasets, readers) can use the exact preprocessing of inference
without pulling in the model (see docs/ARCHITECTURE.md).

A ``config`` argument is anything with ``mean``, ``std`` (three floats each) and ``image_size``
(height, width), such as :class:`segdino.config.ModelConfig`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PATCH_SIZE",
    "to_tensor",
    "normalize",
    "resize_image",
    "padded_size",
    "resize_logits",
    "logits_to_labels",
    "logits_to_probabilities",
    "preprocess",
]

# The ViT's patch side: model inputs are multiples of it (segdino.backbone uses this value).
PATCH_SIZE = 16


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, config: Any) -> torch.Tensor:
    """Mean/std normalisation of a (..., 3, H, W) tensor in [0, 1] with ``config.mean``/``config.std``."""
    mean = torch.tensor(config.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (B, C, H, W) or (C, H, W) float image to ``size`` (H, W)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    squeeze = x.dim() == 3
    if squeeze:
        x = x[None]
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x[0] if squeeze else x


def padded_size(h: int, w: int, multiple: int = PATCH_SIZE) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``multiple``."""
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size`` (H, W) -> (B, K, H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> (B, H, W) uint8 labels (K=1: logit > 0, i.e. sigmoid > 0.5)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> foreground probability (K=1) or per-class softmax, same shape."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def preprocess(image: np.ndarray, config: Any, keep_size: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 -> normalised (3, h, w) model input.

    Resized to ``config.image_size``, or with ``keep_size`` kept at its size and padded on the
    bottom and right to a multiple of :data:`PATCH_SIZE`.
    """
    x = to_tensor(image)
    if keep_size:
        h, w = x.shape[-2:]
        ph, pw = padded_size(h, w)
        x = normalize(x, config)
        return F.pad(x, (0, pw - w, 0, ph - h))  # zero = the mean colour after normalisation
    return normalize(resize_image(x, config.image_size), config)
