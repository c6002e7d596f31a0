"""Inputs larger than the model's: overlapping tiles with Gaussian blending, flips and ensembles.

One implementation serves 2D images and the slices of volumes:

- :func:`sliding_window` runs a model on overlapping tiles of its input size and blends their
  logits with a Gaussian weight that trusts each tile's centre more than its edges (nnU-Net's
  scheme). A model whose output moves with its input (translation-equivariant) gives, away from
  the borders, the same result as one pass over the whole input.
- :class:`AveragedModel` averages the probabilities of several models (an ensemble of folds or
  runs) and of mirrored inputs (test-time flips), and hands back logits of the average, so every
  predictor that takes a model takes an ensemble.
- :func:`logits_at_spacing` resamples a batch of images to a target pixel spacing, runs the
  sliding window there, and resamples the logits back to the input's grid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from .errors import CheckpointError, ConfigError
from .ops import resize_logits
from .resample import resampled_shape

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def check_overlap(overlap: float) -> float:
    """``--tile-overlap``: a share of the tile in [0, 1)."""
    try:
        v = float(overlap)
    except (TypeError, ValueError):
        raise ConfigError(f"--tile-overlap must be a number in [0, 1), got {overlap!r}") from None
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"--tile-overlap must be in [0, 1), got {overlap}")
    return v


def gaussian_weight(tile: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """(h, w) float32 blending weight: a Gaussian of sigma ``sigma_scale * tile``, peak 1, no zeros."""
    axes = []
    for n in tile:
        c = (n - 1) / 2.0
        x = torch.arange(n, dtype=torch.float64) - c
        axes.append(torch.exp(-0.5 * (x / max(sigma_scale * n, 1e-6)) ** 2))
    w = axes[0][:, None] * axes[1][None, :]
    w = w / w.max()
    return w.clamp_(min=float(w[w > 0].min())).float()


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    step = max(1, int(math.floor(tile * (1.0 - overlap))))
    n = int(math.ceil((size - tile) / step)) + 1
    return sorted({int(round(i * (size - tile) / (n - 1))) for i in range(n)})


@torch.no_grad()
def sliding_window(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: Sequence[int],
                   overlap: float = 0.5, batch_size: int = 8) -> torch.Tensor:
    """Logits of a (B, C, H, W) input, from tiles of size ``tile`` blended by a Gaussian weight.

    Inputs smaller than a tile are padded with zeros (the mean after normalisation) and cropped
    back. Tiles of all images go through ``model`` ``batch_size`` at a time.

    Returns:
        (B, K, H, W) float32 logits on ``x``'s device.
    """
    overlap = check_overlap(overlap)
    th, tw = (int(t) for t in tile)
    b, _, h, w = x.shape
    ph, pw = max(h, th), max(w, tw)
    if (ph, pw) != (h, w):
        x = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h))
    if (ph, pw) == (th, tw):
        return model(x).float()[..., :h, :w]
    boxes = [(i, y, xx) for i in range(b) for y in tile_starts(ph, th, overlap) for xx in tile_starts(pw, tw, overlap)]
    weight = gaussian_weight((th, tw)).to(x.device)
    acc = None
    norm = torch.zeros((ph, pw), device=x.device)
    for y, xx in {(y, xx) for _, y, xx in boxes}:
        norm[y : y + th, xx : xx + tw] += weight
    for s in range(0, len(boxes), batch_size):
        chunk = boxes[s : s + batch_size]
        tiles = torch.stack([x[i, :, y : y + th, xx : xx + tw] for i, y, xx in chunk])
        out = model(tiles).float()
        if acc is None:
            acc = torch.zeros((b, out.shape[1], ph, pw), device=x.device)
        for j, (i, y, xx) in enumerate(chunk):
            acc[i, :, y : y + th, xx : xx + tw] += out[j] * weight
    return (acc / norm)[..., :h, :w]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> sigmoid (K = 1) or softmax over K."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def logits_of(prob: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`probabilities`: logits whose sigmoid/softmax is ``prob``."""
    p = prob.clamp(1e-7, 1 - 1e-7) if prob.shape[1] == 1 else prob.clamp_min(1e-12)
    return torch.logit(p) if prob.shape[1] == 1 else torch.log(p)


def _name(model, i: int) -> str:
    return str(getattr(model, "source", None) or getattr(getattr(model, "config", None), "source", None)
               or f"model {i + 1}")


#: Volume settings that are post-processing each member chose for itself, not the task or input.
POSTPROCESS_KEYS = ("min_size_mm3", "min_size_source")


def _task_volume(volume):
    return None if volume is None else {k: v for k, v in volume.items() if k not in POSTPROCESS_KEYS}


def ensemble_config(models: Sequence):
    """The config an ensemble predicts with: the first member's, with the smallest minimum
    component size of the members that chose one (a size chosen on one member's predictions
    removes at most what that size removes from the average); none if a member chose none."""
    first = models[0].config
    sizes = [(getattr(m.config, "volume", None) or {}).get("min_size_mm3") for m in models]
    if len(models) == 1 or all(s == sizes[0] for s in sizes):
        return first
    volume = _task_volume(first.volume)
    if all(s is not None for s in sizes):
        volume.update(min_size_mm3=min(sizes), min_size_source=f"the smallest of {len(models)} ensemble members'")
    return dataclasses.replace(first, volume=volume)


def check_compatible(models: Sequence, names: Sequence[str] | None = None) -> None:
    """Ensemble members must agree on classes, input size, normalisation and volume settings
    (their post-processing, :data:`POSTPROCESS_KEYS`, may differ: :func:`ensemble_config`)."""
    names = list(names) if names is not None else [_name(m, i) for i, m in enumerate(models)]
    first = models[0].config
    for m, name in zip(models[1:], names[1:]):
        c = m.config
        for what, a, b in (("class count", first.num_classes, c.num_classes),
                           ("input size", tuple(first.image_size), tuple(c.image_size)),
                           ("normalisation", (tuple(first.mean), tuple(first.std)), (tuple(c.mean), tuple(c.std))),
                           ("volume settings", _task_volume(getattr(first, "volume", None)),
                            _task_volume(getattr(c, "volume", None)))):
            if a != b:
                raise CheckpointError(f"{name}: its {what} {b!r} differs from {names[0]}'s {a!r}; "
                                      "an ensemble averages models of one task and input")


class AveragedModel(torch.nn.Module):
    """Averages the probabilities of several models and flipped inputs; returns their logits.

    ``model(x)``: (B, 3, H, W) normalised -> (B, K, H, W) logits whose sigmoid/softmax is the
    mean, over members and flips, of each member's probabilities (flips undone first).

    Args:
        models: one or more models of one task (:func:`check_compatible`).
        flips: the flips to average, each a tuple of dims (``()`` = the input as it is);
            default none; :data:`TTA_FLIPS` = identity, left-right, up-down and both.
        names: for messages (the files the models came from).
    """

    def __init__(self, models: Sequence, flips: Sequence[Sequence[int]] = ((),), names: Sequence[str] | None = None):
        super().__init__()
        models = list(models)
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        check_compatible(models, names)
        if all(isinstance(m, torch.nn.Module) for m in models):
            self.members = torch.nn.ModuleList(models)
        else:
            self.members = models
            self.device = getattr(models[0], "device", None)
        self.flips = [tuple(int(d) for d in f) for f in flips] or [()]
        self.config = ensemble_config(models)
        self.num_classes = self.config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for m in self.members:
            for f in self.flips:
                xi = x.flip(f) if f else x
                p = probabilities(m(xi).float())
                p = p.flip(f) if f else p
                total = p if total is None else total + p
        return logits_of(total / (len(self.members) * len(self.flips)))


def ensemble(models: Sequence, tta: bool = False, names: Sequence[str] | None = None):
    """The model itself when there is one and no flips; else an :class:`AveragedModel`."""
    models = list(models)
    if len(models) == 1 and not tta:
        return models[0]
    return AveragedModel(models, TTA_FLIPS if tta else ((),), names)


@torch.no_grad()
def logits_at_spacing(model, x: torch.Tensor, spacing: Sequence[float] | None, target: Sequence[float] | None,
                      overlap: float = 0.5, batch_size: int = 8, device: torch.device | None = None) -> torch.Tensor:
    """Logits of a batch of same-size images predicted at a target pixel spacing.

    Args:
        model: maps normalised (N, 3, h, w) tiles of its ``config.image_size`` to logits.
        x: (B, 3, H, W) normalised float (CPU or the model's device); linear resampling commutes
            with the per-channel normalisation, so the order of the two does not matter.
        spacing: the images' (row, column) pixel size in mm; None (or ``target`` None): no resampling.
        target: the pixel size the model was trained at.
        overlap: share of a tile its neighbours overlap (``--tile-overlap``).

    Returns:
        (B, K, H, W) float32 logits on the input grid, on ``device`` (default: ``x``'s).
    """
    dev = device or x.device
    size = tuple(int(s) for s in x.shape[-2:])
    x = x.to(dev).float()
    shape = resampled_shape(size, spacing, target) if spacing is not None and target is not None else size
    # Resampled where the model runs, in and back: the grid of segdino.resample.resample_to_shape
    # (pixel centres, edges replicated, no anti-aliasing) within float rounding, without sending a
    # whole scan's slices through host memory and SciPy.
    logits = sliding_window(model, resize_logits(x, shape), model.config.image_size, overlap, batch_size)
    return resize_logits(logits.float(), size)


__all__ = ["TTA_FLIPS", "check_overlap", "gaussian_weight", "tile_starts", "sliding_window", "probabilities",
           "logits_of", "check_compatible", "ensemble_config", "POSTPROCESS_KEYS", "AveragedModel", "ensemble", "logits_at_spacing"]
