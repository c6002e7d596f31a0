"""Segmenting a whole volume with a 2D SegDINO model, slice by slice, back on the source grid."""

from __future__ import annotations

import numpy as np
import torch

from ..inference import logits_to_labels, model_logits_at_size, normalize, resize_image, resolve_device
from .intensity import normalize_intensity, read_volume_settings
from .io import Volume
from .slicing import context_slice, reassemble, resolve_axis


@torch.inference_mode()
def predict_volume(model: torch.nn.Module, volume: Volume, batch_size: int = 8,
                   device: str | torch.device | None = None) -> np.ndarray:
    """Label every voxel of ``volume`` with a model trained on its slices.

    The model's ``config.volume`` gives the intensity spec, slice axis and 2.5D context used in
    training. Each slice is resized to the model's input size, its logits resized back to the
    slice's own size (bilinear) and thresholded/argmaxed, as for 2D images.

    Args:
        model: a SegDINO model whose config has volume settings.
        volume: the source volume (any orientation; the axis name is resolved through its affine).

    Returns:
        (I, J, K) uint8 labels on the source grid: write them with ``volume.affine``.
    """
    settings = read_volume_settings(getattr(model.config, "volume", None))
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    norm = normalize_intensity(volume.array, settings["intensity"])
    axis = resolve_axis(settings["axis"], volume.affine)
    n = norm.shape[axis]
    maps: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        slices = [context_slice(norm, axis, i, settings["context"]) for i in idx]
        size = slices[0].shape[:2]
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(s)).permute(2, 0, 1) for s in slices])
        x = normalize(resize_image(x, model.config.image_size).clamp_(0.0, 1.0), model.config).to(dev)
        for logits in model_logits_at_size(model, x, [size] * len(slices)):
            maps.append(logits_to_labels(logits[None])[0].cpu().numpy())
    return reassemble(maps, axis, volume.shape)
