"""Backbone weights from elsewhere (Meta, Hugging Face, timm), fitted to our backbone.

A file is read by :mod:`segdino.weight_files`, its layout recognised and converted to timm's
keys by :mod:`segdino.conversion`, then fitted to the model with one strict rule: keys no
inference backbone uses are dropped by name, missing qkv biases become zeros (files of timm's
non-qkvb models), and anything else missing, left over or of the wrong shape is a
:class:`CheckpointError` that lists the keys. The formats are described in docs/WEIGHTS.md.

The readers and converters are named here too, where callers have long imported them from; a
whole model from a foreign file is :func:`segdino.checkpoint.load_foreign_model`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Mapping

import torch

from .backbone import DINOv3Backbone
from .conversion import (  # noqa: F401  (re-exported)
    BACKBONE_FORMATS,
    FORMAT_DESCRIPTIONS,
    MODEL_FORMATS,
    authors_to_segdino,
    backbone_to_timm,
    describe_size,
    detect_backbone_format,
    detect_format,
    guess_backbone,
    hf_to_timm,
    infer_model_config,
    meta_to_timm,
    name_in_layout,
    timm_to_timm,
)
from .errors import CheckpointError
from .weight_files import (  # noqa: F401  (re-exported)
    WEIGHTS_DOC,
    download_from_hub,
    is_hub_name,
    is_segdino_file,
    list_keys,
    read_shard_index,
    read_state_dict,
    safe_torch_load,
    weights_checksum,
)

log = logging.getLogger("segdino.weights")

__all__ = [
    "FORMAT_DESCRIPTIONS",
    "safe_torch_load",
    "read_state_dict",
    "read_shard_index",
    "detect_format",
    "detect_backbone_format",
    "meta_to_timm",
    "hf_to_timm",
    "timm_to_timm",
    "backbone_to_timm",
    "guess_backbone",
    "authors_to_segdino",
    "infer_model_config",
    "fit_state_dict",
    "load_backbone_weights",
    "weights_checksum",
    "is_hub_name",
    "download_from_hub",
]


# --- fitting a converted state dict to a model -------------------------------------------

_QKV_BIAS = re.compile(r"(^|\.)blocks\.\d+\.attn\.[qv]_bias$")


def fit_state_dict(
    source,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    file_holds: str | None = None,
    file_name: Callable[[str], str] = str,
) -> dict[str, torch.Tensor]:
    """``state`` completed and checked against ``expected`` (a model's state dict); ``source``
    (the file) and ``what`` (the model, in words) start the messages.

    Missing qkv biases become zeros; qkv biases the model lacks are dropped when zero (timm's
    models without qkv bias compute the same function). Anything else missing or left over, a
    shape mismatch, or a non-finite value raises :class:`CheckpointError`. ``file_name`` maps a
    key (timm's naming) to the file's own name for that tensor, for messages.
    """
    state = dict(state)
    for k in [k for k in state if k not in expected and _QKV_BIAS.search(k)]:
        if not torch.count_nonzero(state[k]):
            del state[k]
    for k, ref in expected.items():
        if k not in state and _QKV_BIAS.search(k):
            state[k] = torch.zeros(ref.shape, dtype=ref.dtype)
    holds = f" (the file holds {file_holds})" if file_holds else ""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing: {list_keys(file_name(k) for k in missing)}")
        if unexpected:
            parts.append(f"left over: {list_keys(file_name(k) for k in unexpected)}")
        raise CheckpointError(f"{source} does not fit {what}{holds}; keys {'; '.join(parts)}")
    for k, ref in expected.items():
        t = state[k]
        if t.numel() == ref.numel() and t.numel() == 1 and t.shape != ref.shape:
            t = state[k] = t.reshape(ref.shape)  # a scalar stored as () or (1,)
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source} does not fit {what}{holds}: {file_name(k)} has shape {tuple(t.shape)} in the file, "
                f"the model expects {tuple(ref.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: {file_name(k)} holds non-finite values (NaN or infinity)")
        if not t.is_floating_point() and ref.is_floating_point():
            raise CheckpointError(f"{source}: {file_name(k)} has dtype {t.dtype}; expected floating point values")
    return state


def load_backbone_weights(backbone: DINOv3Backbone, weights: str | os.PathLike) -> dict[str, str]:
    """Load a DINOv3 backbone file (format 1, 2 or 3, detected from its keys) into ``backbone``.

    ``weights`` is a file, a folder holding one (a Hugging Face or timm download), or, when
    online, a hub name such as ``timm/vit_small_patch16_dinov3_qkvb.lvd1689m`` or
    ``facebook/dinov3-vits16-pretrain-lvd1689m``. Raises :class:`CheckpointError` when the file
    is unreadable, is a whole model, or does not match the backbone's size.

    Returns (and keeps as ``backbone.weights_info``) what was loaded: ``path``, ``format``
    (``meta``, ``hf`` or ``timm``), ``format_description`` and ``sha256`` of the file.
    """
    path = Path(weights)
    if not path.exists() and is_hub_name(str(weights)):
        path = download_from_hub(str(weights))
    state = read_state_dict(path)
    if path.is_file():
        _reject_our_model_file(path, state)
    fmt = detect_backbone_format(state, path)
    converted = backbone_to_timm(state, fmt, source=path)
    what = f"the {backbone.spec.name} backbone"
    fitted = fit_state_dict(path, converted, backbone.vit.state_dict(), what, file_holds=describe_size(converted),
                            file_name=name_in_layout(fmt))
    backbone.vit.load_state_dict(fitted, strict=True)
    info = {"path": str(path), "format": fmt, "format_description": FORMAT_DESCRIPTIONS[fmt],
            "sha256": weights_checksum(path)}
    backbone.weights_info = info
    log.info("backbone weights: %s (%s, sha256 %s)", path, info["format_description"], info["sha256"])
    return info


def _reject_our_model_file(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    if detect_format(state) == "segdino" or is_segdino_file(path):
        raise CheckpointError(
            f"{path} is a whole SegDINO model file, not a backbone; expected a DINOv3 backbone file (Meta .pth, "
            "Hugging Face or timm safetensors). Load it with segdino.load_model() (--model or --init on the "
            "command line)"
        )
