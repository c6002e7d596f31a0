"""Our model file: one .safetensors file whose metadata holds the model config.

``load_model`` also accepts a run folder (its ``best.safetensors``) and the foreign formats that
:mod:`segdino.weights` converts (the authors' whole-model state dict).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .fileio import atomic_path
from .model import SegDINO

FORMAT_KEY = "format"
FORMAT_NAME = "segdino"
CONFIG_KEY = "segdino_config"
FORMAT_VERSION = "1"


def save_model(model: SegDINO, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` to one ``.safetensors`` file (config in its metadata), atomically."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}")
    metadata = {FORMAT_KEY: FORMAT_NAME, "format_version": FORMAT_VERSION, CONFIG_KEY: model.config.to_json()}
    if extra_metadata:
        metadata.update({str(k): str(v) for k, v in extra_metadata.items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder meaning its ``best.safetensors``."""
    p = Path(path)
    if p.is_dir():
        best = p / "best.safetensors"
        if not best.is_file():
            raise CheckpointError(f"{p} is a folder without best.safetensors; pass a checkpoint file or a run folder")
        return best
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty")
    return p


def read_metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header metadata, or None when ``path`` is not a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SegDINO:
    """Load a whole model: our ``.safetensors``, a run folder, or the authors' state dict."""
    p = resolve_model_path(path)
    meta = read_metadata(p)
    if meta is not None and meta.get(FORMAT_KEY) == FORMAT_NAME:
        model = _load_ours(p, meta)
    else:
        from .weights import load_foreign_model

        model = load_foreign_model(p)
    return model.to(map_location).eval()


def _load_ours(path: Path, meta: dict[str, str]) -> SegDINO:
    try:
        config = ModelConfig.from_json(meta.get(CONFIG_KEY, ""))
    except ConfigError as e:
        raise CheckpointError(f"{path}: its metadata config is invalid: {e}") from None
    model = SegDINO(config)
    expected = model.state_dict()
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read tensors ({e})") from None
    check_state_dict(path, state, expected)
    model.load_state_dict(state, strict=True)
    return model


def check_state_dict(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` on missing/unexpected keys or wrong shapes/dtypes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
        raise CheckpointError(f"{path} does not match its model config; {'; '.join(parts)}")
    for k, ref in expected.items():
        t = state[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(t.shape)}, the model expects {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise CheckpointError(f"{path}: {k} has dtype {t.dtype}, the model expects {ref.dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: {k} holds non-finite values")


def describe(path: str | os.PathLike) -> dict:
    """Config of one of our files, without building the model."""
    p = resolve_model_path(path)
    meta = read_metadata(p)
    if not meta or meta.get(FORMAT_KEY) != FORMAT_NAME:
        raise CheckpointError(f"{p} is not a SegDINO model file")
    return json.loads(meta[CONFIG_KEY])
