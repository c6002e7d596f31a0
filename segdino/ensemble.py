"""Loading several models (fold runs, seeds) as one averaged model, with optional test-time flips."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import CheckpointError
from .folds import fold_runs
from .inference import load_inference_model
from .sliding_window import ensemble


def model_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each ``--model``: a file, a run folder, or a folder of run folders (e.g. ``fold_0`` ... ``fold_4``)."""
    out: list[Path] = []
    for p in (Path(x) for x in paths):
        if p.is_dir() and not (p / "best.safetensors").is_file():
            runs = fold_runs(p)
            if not runs:
                raise CheckpointError(f"{p}: neither a run folder (best.safetensors) nor a folder of run folders")
            out += runs
        else:
            out.append(p)
    return out


def load_models(paths: Sequence[str | os.PathLike], device="auto", tta: bool = False, fast="auto"):
    """One model for inference from one or several ``--model`` values; averaged if several or ``tta``.

    Raises:
        CheckpointError naming the file when the models differ in classes, input size,
        normalisation or volume settings (see :func:`segdino.sliding_window.check_compatible`).
    """
    files = model_files(paths)
    models = [load_inference_model(f, device, fast=fast) for f in files]
    return ensemble(models, tta=tta, names=[str(f) for f in files])


__all__ = ["model_files", "load_models"]
