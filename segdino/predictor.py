"""One predictor: a model's logits at each input's own size, for images, volume slices,
validation during training and the benchmark.

:class:`Predictor` owns what every caller needs once: the model made ready on its device
(:func:`segdino.inference.prepare_model`), batches of at most ``batch_size`` inputs, the last
batch padded for a compiled model (it specialises on the input shape), optional autocast and
channels-last inputs, and a check that the logits are finite. How an image becomes model inputs
and its logits come back to the image's size is a *strategy*:

- :class:`Resize` (default): the image resized to the model's input size, the logits resized
  back to the image's size (bilinear);
- :class:`Pad` (``keep_size=True``): the image at its own size padded to a multiple of 16, the
  logits cropped; images of one padded size share a batch;
- :class:`Tiles` (``tile_overlap=F``): overlapping tiles of the model's input size blended by a
  Gaussian weight (:func:`segdino.sliding_window.sliding_window`).

Ensembles and test-time flips are a model wrapped by :func:`segdino.sliding_window.ensemble`, so
every strategy takes them. Volumes are slices through the same predictor
(:mod:`segdino.volumes.predict`). docs/ARCHITECTURE.md places this module among the others.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .data.imageio import as_rgb_array
from .errors import ConfigError
from .inference import Prediction, check_any_size, check_finite_logits, check_input_kind, keep_size_batch, prepare_model
from .ops import (logits_to_labels, logits_to_probabilities, normalize, padded_size, preprocess, resize_logits,
                  to_tensor)
from .sliding_window import check_overlap, ensemble, sliding_window


def is_compiled(model) -> bool:
    """Whether ``model`` (or a member of an ensemble) runs compiled, i.e. specialises on input shapes."""
    if getattr(model, "compiled", None) is not None:
        return True
    return any(is_compiled(m) for m in getattr(model, "members", ()) or ())


class Resize:
    """Each image resized to the model's input size; logits resized back (bilinear)."""

    crop = False

    def batches(self, predictor: "Predictor", sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        step = predictor.batch_size
        return [list(range(k, min(k + step, len(sizes)))) for k in range(0, len(sizes), step)]

    def logits(self, predictor: "Predictor", images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """(H, W, 3) uint8 images -> each one's (K, H, W) float32 logits on the predictor's device."""
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        out: list = [None] * len(images)
        for idx in self.batches(predictor, sizes):
            x = torch.stack([preprocess(images[i], predictor.config, keep_size=self.crop) for i in idx])
            for i, li in zip(idx, predictor.logits_at_sizes(x, [sizes[i] for i in idx], crop=self.crop)):
                out[i] = li
        return out


class Pad(Resize):
    """Each image at its own size padded to a multiple of 16; logits cropped (``--keep-size``)."""

    crop = True

    def batches(self, predictor: "Predictor", sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        # Only images of the same padded size can share a batch, as many as fit in memory.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(sizes):
            groups.setdefault(padded_size(h, w), []).append(i)
        batches = []
        for padded, idx in groups.items():
            step = keep_size_batch(predictor.config, padded, sizes[idx[0]], predictor.batch_size)
            batches += [idx[k : k + step] for k in range(0, len(idx), step)]
        return batches


class Tiles:
    """Each image at its own resolution by overlapping tiles of the model's input size."""

    def __init__(self, overlap: float):
        self.overlap = check_overlap(overlap)

    def logits(self, predictor: "Predictor", images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        config = predictor.config
        out = []
        for im in images:
            x = normalize(to_tensor(im), config)[None].to(predictor.device)
            out.append(sliding_window(predictor, x, config.image_size, self.overlap, predictor.batch_size)[0])
        return out


class Predictor:
    """A model's logits, labels and probabilities at each input's own size.

    Args:
        model: a SegDINO model, a fast or ONNX model from :func:`segdino.inference.load_inference_model`,
            a model file or run folder (loaded), a list of models (averaged: an ensemble), or any
            callable mapping a normalised (B, 3, h, w) batch to (B, K, h, w) logits (then give
            ``config``).
        device: None keeps the model where it is; ``auto``/``cpu``/``cuda``/``mps`` moves a plain
            module there (fast and ONNX models must be loaded for their device).
        batch_size: inputs per forward pass; a compiled model always sees exactly this many.
        keep_size: the :class:`Pad` strategy instead of :class:`Resize`.
        tile_overlap: the :class:`Tiles` strategy with this overlap (a share of the tile, in [0, 1)).
        tta: average the four flips of every input (:data:`segdino.sliding_window.TTA_FLIPS`).
        autocast: a dtype (``torch.bfloat16``) to run the model under autocast; None: as it is.
        channels_last: hand the model channels-last inputs (a model converted to that layout).
        config: the :class:`~segdino.config.ModelConfig` (input size, normalisation) when the model
            carries none.
    """

    def __init__(self, model, device: str | torch.device | None = None, *, batch_size: int = 8,
                 keep_size: bool = False, tile_overlap: float | None = None, tta: bool = False,
                 autocast: torch.dtype | None = None, channels_last: bool = False,
                 config: ModelConfig | None = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(model, (list, tuple)):
            members = [prepare_model(m, device) for m in model]
            model, self.device = ensemble([m for m, _ in members], tta=tta), members[0][1]
        else:
            model, self.device = prepare_model(model, device)
            if tta:
                model = ensemble([model], tta=True)
        self.model = model
        self.config: ModelConfig = config if config is not None else getattr(model, "config", None)
        self.batch_size = batch_size
        self.autocast = autocast
        self.channels_last = channels_last
        self.compiled = is_compiled(model)
        if tile_overlap is not None:
            self.strategy = Tiles(tile_overlap)
        elif keep_size:
            check_any_size(model)
            self.strategy = Pad()
        else:
            self.strategy = Resize()

    # -- batches of model inputs --

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised float -> (B, K, h, w) float32 logits on the predictor's device.

        Runs ``batch_size`` inputs at a time (a compiled model's last batch padded with zeros,
        the mean colour after normalisation); raises :class:`~segdino.errors.CheckpointError`
        on NaN or infinite logits.
        """
        parts = [self._forward(x[k : k + self.batch_size]) for k in range(0, x.shape[0], self.batch_size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.compiled and n < self.batch_size:
            x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
              else contextlib.nullcontext()):
            logits = self.model(x)
        return check_finite_logits(logits[:n].float(), self.model)

    def logits_at_sizes(self, x: torch.Tensor, sizes: Sequence[tuple[int, int]],
                        crop: bool = False) -> list[torch.Tensor]:
        """Each input's (K, H, W) float32 logits at its own size ``sizes[i]``.

        ``x`` (B, 3, h, w) normalised; the logits are resized to each size (bilinear, inputs of
        one size as one batch), or with ``crop`` cut to it (inputs padded at the bottom right).
        """
        logits = self(x)
        if crop:
            return [logits[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
        out: list = [None] * len(sizes)
        same: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            same.setdefault((int(size[0]), int(size[1])), []).append(i)
        for size, idx in same.items():
            for i, li in zip(idx, resize_logits(logits[idx], size)):
                out[i] = li
        return out

    def labels_at_sizes(self, x: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Each input's (H, W) uint8 labels at its own size, on the predictor's device (see
        :meth:`logits_at_sizes`)."""
        return [logits_to_labels(li[None])[0] for li in self.logits_at_sizes(x, sizes)]

    # -- raw images --

    def logits(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """(H, W, 3) uint8 images -> each one's (K, H, W) float32 logits at its size, by the strategy."""
        check_input_kind(self.model, "2d")
        return self.strategy.logits(self, list(images))

    def labels(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W, 3) uint8 images -> (H, W) uint8 labels (K=1: sigmoid > 0.5; else argmax)."""
        return [logits_to_labels(li[None])[0].cpu().numpy() for li in self.logits(images)]

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W, 3) uint8 images -> (1, H, W) foreground (sigmoid) or (K, H, W) softmax float32."""
        return [_probabilities(li) for li in self.logits(images)]

    def predict(self, images: Sequence[np.ndarray], probabilities: bool = False) -> list:
        """Labels of each image, or :class:`~segdino.inference.Prediction` objects (labels and
        probabilities) with ``probabilities``."""
        out = []
        for li in self.logits(images):
            mask = logits_to_labels(li[None])[0].cpu().numpy()
            out.append(Prediction(mask, _probabilities(li)) if probabilities else mask)
        return out

    @contextlib.contextmanager
    def eval_mode(self):
        """The model in eval mode inside the block, its earlier mode restored after it."""
        was_training = bool(getattr(self.model, "training", False))
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            yield self
        finally:
            if was_training:
                self.model.train()


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    return logits_to_probabilities(logits[None])[0].to(torch.float32).cpu().numpy()


def _as_list(images) -> list:
    if isinstance(images, (str, bytes, os.PathLike)) or hasattr(images, "shape") or hasattr(images, "mode"):
        return [images]
    return list(images)


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
        model: a SegDINO model, a fast or ONNX model from :func:`segdino.inference.load_inference_model`,
            or a model file / run folder (loaded with it). Its ``config`` gives the input size and
            normalisation.
        images: one or several paths, PIL images or (H, W) / (H, W, C) uint8 arrays.
        batch_size: images per forward pass.
        keep_size: run at the native size padded to a multiple of 16 instead of resizing
            (images of one padded size share a batch).
        device: None keeps the model where it is; ``auto``/``cpu``/``cuda``/``mps`` moves a
            SegDINO model there (fast and ONNX models must be loaded for their device).
        probabilities: return :class:`~segdino.inference.Prediction` objects with probability
            maps too: (1, H, W) sigmoid foreground probability for a binary model, (K, H, W) softmax else.
        tile_overlap: run each image at its own resolution by overlapping tiles of the model's
            input size, blended with a Gaussian weight (:func:`segdino.sliding_window.sliding_window`);
            the value is the share of a tile its neighbours overlap, e.g. 0.5.

    Returns:
        one (H, W) uint8 label mask per image, at that image's size, in input order
        (or :class:`~segdino.inference.Prediction` objects).

    Raises:
        DataError: an image cannot be read or is not an image array (the message names it).
    """
    images = _as_list(images)
    predictor = Predictor(model, device, batch_size=batch_size, keep_size=keep_size, tile_overlap=tile_overlap)
    check_input_kind(predictor.model, "2d",
                     images[0] if images and isinstance(images[0], (str, os.PathLike)) else None)
    results: list = []
    with predictor.eval_mode():
        # Decode one batch at a time so that a long list of paths is never all in memory.
        for start in range(0, len(images), batch_size):
            chunk = [as_rgb_array(im) for im in images[start : start + batch_size]]
            results += predictor.predict(chunk, probabilities)
    return results


__all__ = ["Predictor", "Resize", "Pad", "Tiles", "is_compiled", "predict"]
