"""Patch training on volumes: 2.5D slices resampled to a target spacing, cropped to patches.

:class:`VolumePatchDataset` is a :class:`~segdino.volumes.dataset.VolumeSliceDataset` whose cases
are resampled in-plane (image linear, labels one-hot; :mod:`segdino.resample`) to the plan's
spacing when decoded, and whose samples are patches of the plan's size cut at full resolution
instead of whole slices resized. Slices smaller than a patch are padded (image 0, label 0).

Foreground oversampling (nnU-Net's): index ``i`` in ``[0, N)`` is a patch at a random place of
slice ``i``; index ``N + i`` is a patch of slice ``i`` around a random voxel of the rarest
foreground class. The training sampler draws its forced share of every batch from
:meth:`VolumePatchDataset.foreground_indices`, which are such ``N + i`` indices, so the share of
patches that hold foreground is at least ``--foreground-ratio``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..inference import logits_to_labels, normalize
from ..resample import check_spacing, resample_image, resample_labels
from ..sliding_window import sliding_window
from .dataset import CACHE_BYTES, VolumeSliceDataset
from .layouts import VolumeCase
from .slicing import context_slice, label_slice



class VolumePatchDataset(VolumeSliceDataset):
    """Patches of 2.5D slices at a target in-plane spacing (see the module docstring).

    ``dataset.train_sample(index, generator)`` is a dict: ``image`` float32 (3, h, w) in [0, 1],
    ``mask`` int64 (h, w), ``case_id``; (h, w) = ``patch_size``.

    Args:
        cases: labelled cases.
        spacing: target in-plane (rows, columns) mm, or None to keep each case's own.
        patch_size: (h, w).
        **kwargs: as :class:`VolumeSliceDataset` (axis, context, intensity, num_classes, cache_size).
    """

    def __init__(self, cases: Sequence[VolumeCase], spacing: Sequence[float] | None, patch_size: Sequence[int],
                 **kwargs):
        kwargs.pop("image_size", None)
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ConfigError(f"patch size must be (h, w), got {patch_size!r}")
        self.target = None if spacing is None else check_spacing(spacing, "--spacing")
        super().__init__(cases, image_size=self.patch_size, **kwargs)
        self.rare_label: int | None = None

    # -- decoding --

    def _prepare(self, ci, norm, labels, spacing):
        if self.target is None:
            return norm, labels
        axis = self.axes[ci]
        target = [None if a == axis else self.target[[b for b in range(3) if b != axis].index(a)] for a in range(3)]
        where = str(self.cases[ci].image)
        img = resample_image(norm.astype(np.float32), spacing, target, order=1, where=where)
        lab = resample_labels(labels, spacing, target, where=where)
        return np.clip(img, 0.0, 1.0).astype(np.float16), lab

    def decoded_bytes(self, ci: int) -> int:
        """Estimated memory of case ``ci`` decoded at the target spacing."""
        if self.target is None:
            return super().decoded_bytes(ci)
        axis = self.axes[ci]
        rest = [a for a in range(3) if a != axis]
        scale = np.prod([self.spacings[ci][a] / t for a, t in zip(rest, self.target)])
        return int(np.prod(self.shapes[ci], dtype=np.int64) * scale) * 3

    def case_arrays(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """(image in [0, 1], labels) of case ``ci`` at the target spacing (cached)."""
        return self._load(ci)

    # -- indexing --

    def locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        return super().locate(index - n if n <= index < 2 * n else index)

    def foreground_indices(self) -> np.ndarray:
        """``N + i`` for every slice ``i`` holding the rarest foreground class (empty if none)."""
        table = self.label_index()
        fg = [v for v in table if v != 0]
        if not fg:
            return np.zeros(0, dtype=np.int64)
        self.rare_label = min(fg, key=lambda v: (len(table[v]), -v))
        return table[self.rare_label] + len(self)

    def _crop_start(self, size: int, patch: int, centre: int | None, g: torch.Generator) -> int:
        if size <= patch:
            return 0
        if centre is None:
            return int(torch.randint(0, size - patch + 1, (), generator=g))
        # Around the chosen voxel, shifted by up to a quarter patch so it is not always central.
        jitter = int(torch.randint(-(patch // 4), patch // 4 + 1, (), generator=g))
        return int(min(max(centre - patch // 2 + jitter, 0), size - patch))

    def train_sample(self, index: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """One patch (see the class docstring); ``index >= N`` centres it on foreground."""
        g = generator if generator is not None else torch.Generator().manual_seed(int(index))
        forced = int(index) >= len(self)
        ci, s = self.locate(int(index))
        norm, labels = self._load(ci)
        axis = self.axes[ci]
        lab = label_slice(labels, axis, s)
        centre = None
        if forced:
            if self.rare_label is None:
                self.foreground_indices()
            want = lab != 0 if self.num_classes == 1 else lab == (self.rare_label or 1)
            where = np.argwhere(want)
            if len(where):
                centre = where[int(torch.randint(0, len(where), (), generator=g))]
        ph, pw = self.patch_size
        h, w = lab.shape
        y0 = self._crop_start(h, ph, None if centre is None else int(centre[0]), g)
        x0 = self._crop_start(w, pw, None if centre is None else int(centre[1]), g)
        img = context_slice(norm, axis, s, self.context, dtype=np.float32)[y0 : y0 + ph, x0 : x0 + pw]
        lab = lab[y0 : y0 + ph, x0 : x0 + pw]
        image = np.zeros((ph, pw, 3), dtype=np.float32)
        mask = np.zeros((ph, pw), dtype=np.int64)
        image[: img.shape[0], : img.shape[1]] = img
        mask[: lab.shape[0], : lab.shape[1]] = lab
        return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "mask": torch.from_numpy(mask),
                "case_id": self.cases[ci].case_id, "index": int(index), "slice_index": s}

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.train_sample(index)
        sample["orig_size"] = torch.tensor(self.patch_size, dtype=torch.int64)
        return sample

    # -- validation --

    @torch.no_grad()
    def predict_case(self, model, ci: int, device: torch.device, bf16: bool = False, overlap: float = 0.5,
                     batch_size: int = 8):
        """Sliding-window labels of case ``ci`` at the target spacing, slice by slice.

        Yields ``(pred, gt)`` per batch of slices: (n, H, W) uint8 predicted and int64 true labels
        on ``device``. Used for validation during training, where the cases are already cached at
        the target spacing (the report scores on each label's own grid instead).
        """
        norm, labels = self._load(ci)
        axis = self.axes[ci]
        n = norm.shape[axis]
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            x = torch.stack([torch.from_numpy(context_slice(norm, axis, i, self.context)).permute(2, 0, 1)
                             for i in idx]).to(device)
            x = normalize(x, model.config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = sliding_window(model, x, self.patch_size, overlap, batch_size)
            gt = torch.stack([torch.from_numpy(np.ascontiguousarray(label_slice(labels, axis, i)).astype(np.int64))
                              for i in idx]).to(device)
            yield logits_to_labels(logits.float()), gt


def preload_cases(train: VolumeSliceDataset, val: VolumeSliceDataset | None, max_bytes: int = CACHE_BYTES) -> None:
    """Decode the training cases, then the validation cases, once and in parallel, while they fit in ``max_bytes``.

    The workers of the DataLoader then share them. Larger datasets are decoded as samples need them,
    the cache of each worker keeping what fits (:meth:`VolumeSliceDataset.cache_capacity`).
    """
    threads = min(8, os.cpu_count() or 1)
    if train.preload(threads, max_bytes) and val is not None:
        val.preload(threads, max_bytes - sum(train.decoded_bytes(ci) for ci in range(len(train.cases))))


def split_datasets(cls, found, common: dict, plan, preload: bool):
    """``cls``'s train and val (None without a val split) datasets of the cases ``found``, the train
    one carrying the split and ``plan``; with ``preload``, the cases decoded once (:func:`preload_cases`)."""
    train = cls(found.split_cases("train"), **common)
    train.splits = found.splits
    if plan is not None:
        train.plan = plan
    val_cases = found.split_cases("val") if "val" in found.splits else []
    val = cls(val_cases, **common) if val_cases else None
    if preload:  # with --on-bad-data skip, a bad volume is met (and skipped) when a sample needs it
        preload_cases(train, val)  # before the label indices, which then read no label file again
    return train, val


def patch_datasets(cfg, found, settings: dict):
    """Train and val patch datasets of a training configuration, planned from the training cases.

    Fills in what the plan decided, so that the run's config.yaml and model record it:
    ``cfg.spacing`` (resolved to numbers), ``cfg.patch_size``, ``cfg.image_size`` (= the patch:
    the model's input) and the target spacing in ``cfg.extra["volume"]``.

    Returns:
        ``(train, val or None, foreground indices or None)``, ``train.plan`` the
        :class:`~segdino.volumes.planning.VolumePlan`.
    """
    from ..resample import parse_spacing
    from .intensity import volume_settings
    from .planning import OBJECT_TOKENS, plan_volumes

    spacing = cfg.spacing if cfg.spacing in (None, "auto") else parse_spacing(cfg.spacing)
    train_cases = found.split_cases("train")
    plan = plan_volumes(train_cases, settings["axis"], spacing, cfg.patch_size, max_patch=max(cfg.image_size),
                        object_tokens=OBJECT_TOKENS)
    print(plan.describe())  # what the run will do, even with --quiet (which silences progress bars)
    cfg.spacing = ",".join(f"{v:.6g}" for v in plan.spacing)
    cfg.patch_size = plan.patch_size
    cfg.image_size = plan.patch_size
    settings = volume_settings(settings["intensity"], settings["axis"], settings["context"], plan.spacing)
    cfg.extra["volume"] = settings
    cfg.extra["plan"] = plan.to_dict()
    common = dict(spacing=plan.spacing, patch_size=plan.patch_size, axis=settings["axis"],
                  context=settings["context"], intensity=settings["intensity"], num_classes=cfg.num_classes,
                  cache_size=cfg.volume_cache)
    train, val = split_datasets(VolumePatchDataset, found, common, plan, preload=cfg.on_bad_data == "stop")
    foreground = None
    if cfg.foreground_ratio > 0:
        fg = train.foreground_indices()
        foreground = fg if len(fg) else None
    return train, val, foreground


__all__ = ["VolumePatchDataset", "patch_datasets", "preload_cases", "split_datasets"]
