"""Choosing a trained model's post-processing on its validation cases, and recording it in the model.

After training on volumes, the best checkpoint predicts every validation volume as ``segdino
predict`` would (sliding windows at the model's spacing, no post-processing), and
:func:`segdino.volumes.postprocess.choose_min_size` picks the minimum predicted component size
that scores best there. The size goes into the checkpoint's volume settings (``min_size_mm3``,
with where it was chosen), so ``segdino predict`` and ``segdino evaluate --model`` apply it without
being told (``--min-size`` overrides it; ``--min-size 0`` keeps every component), and the run
keeps the whole choice in ``postprocessing.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import run_files
from ..checkpoint import load_model, save_model
from ..errors import DataError
from ..fileio import atomic_write_text
from ..weight_files import CONFIG_KEY, FORMAT_KEY, read_metadata
from .grids import on_label_grid
from .intensity import read_volume_settings, volume_settings
from .io import read_volume
from .layouts import VolumeCase
from .postprocess import choose_min_size
from .volume import Volume
from .predict import predict_volume


def predict_cases(model, cases: Sequence[VolumeCase], batch_size: int = 8, device=None,
                  tile_overlap: float | None = None):
    """(predicted labels, reference labels, spacing) of each labelled case, predicted without
    post-processing on the label's grid."""
    out = []
    for case in cases:
        if case.label is None:
            continue
        label = read_volume(case.label, label=True)
        image = read_volume(case.image, case.channel)
        on_label_grid(image, label, what="image")  # a label off its image's grid is named, not scored
        with torch.inference_mode():
            pred = predict_volume(model, image, batch_size=batch_size, device=device, tile_overlap=tile_overlap)
        pred, _ = on_label_grid(Volume(pred, image.affine), label)
        out.append((pred, label.array, tuple(float(s) for s in label.spacing)))
    return out


def plan_min_size(run: str | Path, cases: Sequence[VolumeCase], batch_size: int = 8, device=None,
                  tile_overlap: float | None = None) -> dict[str, Any]:
    """Choose the minimum component size of the run's best model on ``cases`` and record it.

    Writes the run's ``postprocessing.json`` (the choice, its scores with and without it) and
    rewrites ``best.safetensors`` with ``min_size_mm3`` in its volume settings (its other
    metadata kept). Returns the choice (:func:`~segdino.volumes.postprocess.choose_min_size`).

    Raises:
        DataError: no case has a label, or a label and its image disagree.
    """
    run = Path(run)
    best = run / run_files.BEST
    model = load_model(best, map_location=device or "cpu")
    scored = predict_cases(model, cases, batch_size, device, tile_overlap)
    if not scored:
        raise DataError(f"{run}: no labelled validation case to choose the minimum component size on")
    preds, refs, spacings = zip(*scored)
    choice = choose_min_size(preds, refs, spacings, int(model.config.num_classes))
    where = f"chosen on {choice['cases']} validation case{'s' if choice['cases'] != 1 else ''} in training"
    choice.update(chosen_on=[c.case_id for c in cases if c.label is not None], source=where)
    _record(model, best, choice)
    return choice


def record_min_size(run: str | Path, min_size_mm3: float, source: str = "--min-size in training") -> dict[str, Any]:
    """Record a given minimum component size in the run's best model (as :func:`plan_min_size` does)."""
    best = Path(run) / run_files.BEST
    choice = {"min_size_mm3": float(min_size_mm3), "source": source}
    _record(load_model(best), best, choice)
    return choice


def _record(model, best: Path, choice: dict[str, Any]) -> None:
    settings = read_volume_settings(model.config.volume)
    model.config.volume = volume_settings(settings["intensity"], settings["axis"], settings["context"],
                                          settings.get("spacing"), choice["min_size_mm3"], choice["source"])
    meta = read_metadata(best) or {}
    keep = {k: v for k, v in meta.items() if k not in (FORMAT_KEY, "format_version", CONFIG_KEY)}
    save_model(model, best, extra_metadata=keep)
    atomic_write_text(best.parent / run_files.POSTPROCESSING, json.dumps({"min_size": choice}, indent=1) + "\n")


def describe_choice(choice: dict[str, Any]) -> str:
    """One line for the training log."""
    if "dice" not in choice:
        return f"post-processing: predicted components under {choice['min_size_mm3']:.4g} mm^3 are removed ({choice['source']})"
    if not choice["min_size_mm3"]:
        return (f"post-processing: no minimum component size (removing components does not help on "
                f"{choice['cases']} validation case(s): Dice {choice['dice']:.3f}, lesion F1 {choice['lesion_f1']:.3f})")
    return (f"post-processing: predicted components under {choice['min_size_mm3']:.4g} mm^3 are removed "
            f"({choice['source']}: {choice['removed']} removed, Dice {choice['dice_without']:.3f} -> "
            f"{choice['dice']:.3f}, lesion F1 {choice['lesion_f1_without']:.3f} -> {choice['lesion_f1']:.3f}); "
            "predict and evaluate apply it unless given --min-size")


__all__ = ["describe_choice", "plan_min_size", "predict_cases", "record_min_size"]
