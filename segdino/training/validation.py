"""Validation during training: the Dice that picks the best epoch.

A case is an image (2D) or a volume (its slices' overlap counts are summed first), so a volume's
Dice is the 3D Dice. Each rank scores its own share of the samples and the counts are pooled, so
no case is counted twice. Dice is 1 for a class that is absent from both prediction and ground
truth (an empty mask predicted empty).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..inference import normalize
from ..predictor import Predictor
from .distributed import all_gather, rank_share
from .sampling import collate_eval

Counts = dict[str, np.ndarray]  # case id -> (C, 3) overlap counts


def overlap_counts(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> np.ndarray:
    """(C, 3) int64: |P∩G|, |P|, |G| of each foreground class of two label maps of one shape."""
    classes = [1] if num_classes == 1 else range(1, num_classes)
    rows = []
    for c in classes:
        p, g = pred == c, gt == c
        rows.append(torch.stack([(p & g).sum(), p.sum(), g.sum()]))
    return torch.stack(rows).cpu().numpy().astype(np.int64)  # one transfer per image


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per class from (C, 3) counts; 1 where prediction and ground truth are both empty."""
    inter, p, g = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = p + g
    return np.where(denom == 0, 1.0, 2.0 * inter / np.maximum(denom, 1))


def add_counts(into: Counts, case: str, counts: np.ndarray) -> None:
    """Sum ``counts`` into ``into[case]``."""
    into[case] = into[case] + counts if case in into else counts


def pooled_dice(counts: Counts) -> tuple[float, list[float]]:
    """Mean Dice over the cases of every rank (per class, then averaged) and the per-class means.

    ``counts`` are this rank's cases; ranks score disjoint samples, so pooling sums each case's
    counts over ranks. ``(nan, [])`` when no rank scored a case.
    """
    merged: Counts = {}
    for part in all_gather(counts):
        for case, c in part.items():
            add_counts(merged, case, c)
    if not merged:
        return float("nan"), []
    per_case = np.stack([dice_from_counts(c) for c in merged.values()])  # (cases, classes)
    per_class = per_case.mean(axis=0).tolist()
    return float(np.mean(per_class)), per_class


def image_counts(model: torch.nn.Module, val_set: Dataset, native_mask: Callable[[int], torch.Tensor],
                 device: torch.device, use_bf16: bool, batch_size: int, rank: int, world: int,
                 channels_last: bool = False) -> Counts:
    """Overlap counts of this rank's share of ``val_set``'s samples, predicted at native size.

    The samples come at the model's input size; :class:`~segdino.predictor.Predictor` brings
    each one's labels back to its own size, as ``segdino predict`` does. ``native_mask(index)``
    is sample ``index``'s ground truth (H, W) at that resolution.
    """
    subset = Subset(val_set, list(rank_share(len(val_set), rank, world)))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_eval)
    predictor = Predictor(model, None, batch_size=batch_size, autocast=torch.bfloat16 if use_bf16 else None,
                          channels_last=channels_last)
    counts: Counts = {}
    for batch in loader:
        x = normalize(batch["image"].to(device, non_blocking=True).float(), model.config)
        preds = predictor.labels_at_sizes(x, batch["orig_size"])
        for pred, idx, case in zip(preds, batch["index"], batch["case_id"]):
            gt = native_mask(idx).to(pred.device, non_blocking=True)
            add_counts(counts, case, overlap_counts(pred, gt, model.num_classes))
    return counts


def case_counts(model: torch.nn.Module, val_set: Dataset, device: torch.device, use_bf16: bool,
                tile_overlap: float, batch_size: int, rank: int, world: int) -> Counts:
    """Overlap counts of this rank's share of a patch dataset's validation cases (whole volumes
    predicted by sliding windows: ``val_set.predict_case``)."""
    counts: Counts = {}
    for ci in rank_share(len(val_set.cases), rank, world):
        case = val_set.cases[ci].case_id
        pairs: Iterable = val_set.predict_case(model, ci, device, use_bf16, tile_overlap, batch_size)
        for pred, gt in pairs:
            add_counts(counts, case, overlap_counts(pred, gt, model.num_classes))
    return counts


__all__ = ["add_counts", "case_counts", "dice_from_counts", "image_counts", "overlap_counts", "pooled_dice"]
