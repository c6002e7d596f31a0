"""Dataset building for training: the train and validation sets of ``--data`` by the split rules.

Building reads the config and never writes it: what the data decides (the class count and
class names a volume dataset's ``dataset.json`` gives, the intensity settings, the augmentation
volumes and greyscale images need, the optimiser greyscale images train with, a patch plan)
comes back in a :class:`TrainingData`, and the caller puts it into the config once, with
:meth:`TrainingData.configure`. docs/FORMATS.md describes the layouts and split files.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset

from .. import run_files
from ..data.transforms import recipe_for_modality, single_channel_images
from ..errors import ConfigError, DataError, SegDINOError
from ..train_config import TrainConfig, greyscale_options

log = logging.getLogger("segdino.train")


@dataclass
class TrainingData:
    """What dataset building found: the datasets, and the settings the data fixes.

    Attributes:
        train, val: the training set and the validation set (None when the split has none).
        foreground: volumes with ``--foreground-ratio``: indices of the training slices or patches
            that hold the rarest class, or None.
        settings: config fields the data decides (``num_classes``, ``augment``; patch runs also
            ``spacing``, ``patch_size``, ``image_size``; greyscale 2D images ``augment`` and the
            optimiser, :func:`segdino.train_config.greyscale_options`).
        extra: entries of ``cfg.extra`` the model records (``volume``, ``class_names``, ``plan``).
        splits: the case lists of the split (``train``, ``val``, ``test``), as the run records them.

    It unpacks as ``train, val, foreground``.
    """

    train: Dataset
    val: Dataset | None
    foreground: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[str]] | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.train, self.val, self.foreground))

    @property
    def plan(self):
        """The plan of a volume run (:class:`~segdino.volumes.planning.VolumePlan` for patches,
        :class:`~segdino.volumes.planning.CropPlan` for crops trained whole), or None."""
        return getattr(self.train, "plan", None)

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        """Put what the data decided into ``cfg`` (the one place it is written); returns ``cfg``."""
        for name, value in self.settings.items():
            setattr(cfg, name, value)
        cfg.extra.update(self.extra)
        cfg.match_loss_to_classes()
        return cfg


def recorded_split(out: Path, pairs: Sequence[Any]):
    """The split a run recorded (``out/splits.json``), checked against the cases now in the data.

    ``pairs`` are the dataset's :class:`~segdino.data.layouts.Pair` objects. Cases added to the
    data since are left out (and counted in ``unassigned``); a recorded case that is gone is a
    :class:`DataError` naming the file.
    """
    from ..data.splits import read_splits_file

    return read_splits_file(out / run_files.SPLITS, list(pairs))


def _note_recorded(out: Path, splits) -> None:
    extra = len(getattr(splits, "unassigned", []) or [])
    log.info("--resume: training on the split recorded in %s%s", out / run_files.SPLITS,
             f" ({extra} case(s) added to the data since are left out)" if extra else "")


def is_volume_data(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a volume dataset (an nnU-Net or Medical Decathlon layout of volumes)."""
    from ..volumes import is_volume_dataset

    try:
        return bool(is_volume_dataset(root))
    except SegDINOError:
        return False


def _splits_of(dataset: Dataset) -> dict[str, list[str]] | None:
    splits = getattr(dataset, "splits", None)
    return None if splits is None else {k: list(v) for k, v in splits.items()}


def build_datasets(cfg: TrainConfig, run: Path | None = None) -> TrainingData:
    """The datasets of ``cfg.data`` by the split rules (unpacks as ``train, val, foreground``).

    With ``run``, the split that run recorded (``run/splits.json``) is used instead, so a resumed
    run goes on with the cases it started with whatever was added to the data since. ``cfg`` is
    not changed: pass the result's :meth:`TrainingData.configure` the config the run trains with.
    """
    if not Path(cfg.data).is_dir():
        raise DataError(f"--data {cfg.data}: no such folder")
    if is_volume_data(cfg.data):
        return build_volume_datasets(cfg, run)
    from ..data.dataset import SegmentationDataset
    from ..data.layouts import find_pairs
    from ..data.masks import require_foreground

    splits = None
    if run is not None and (run / run_files.SPLITS).is_file():
        splits = recorded_split(run, find_pairs(cfg.data))
        _note_recorded(run, splits)
    common = dict(num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed, fold=cfg.fold,
                  mask_threshold=cfg.mask_threshold, cache=cfg.cache_images)
    train = SegmentationDataset(cfg.data, split="train", splits=splits, **common)
    settings = {}
    if cfg.augment == "segdino" or cfg.recipe == "segdino":
        # Greyscale images (ultrasound): no zoom, no colour; the authors' optimiser.
        grey = single_channel_images(p.image for p in train.pairs)
        if cfg.augment == "segdino":
            settings["augment"] = recipe_for_modality(cfg.augment, grey)
        chosen = greyscale_options(cfg, run_files.recorded_config(run)) if grey else {}
        if chosen:
            log.info("greyscale images: the segdino recipe trains them with %s",
                     ", ".join(f"{k.replace('_', '-')} {v}" for k, v in chosen.items()))
        settings.update(chosen)
    val = SegmentationDataset(cfg.data, split="val", splits=train.splits, **common)
    if cfg.num_classes == 1:
        # All-empty masks would train to predict nothing and validate at Dice 1: data check refuses them.
        require_foreground((p.masks for p in train.pairs + val.pairs), cfg.data, cfg.mask_threshold)
    if cfg.cache_images and cfg.on_bad_data == "stop":
        # Decode everything once, up front; with --on-bad-data skip the cache fills as samples
        # are read, so that a bad file is skipped and listed rather than stopping the preload.
        threads = max(1, min(8, os.cpu_count() or 1))
        train.preload(num_threads=threads)
        val.preload(num_threads=threads)
    return TrainingData(train, val if len(val) else None, settings=settings, splits=_splits_of(train))


def volume_settings_of(cfg: TrainConfig, labels: dict[int, str] | None, modality: str | None) -> dict[str, Any]:
    """The intensity window, slice axis and context of a volume run (a CT dataset needs a window)."""
    from ..volumes import parse_intensity, percentile_window, volume_settings

    if cfg.intensity:
        intensity = parse_intensity(cfg.intensity)
    elif modality and modality.strip().upper() == "CT":
        raise ConfigError(f"{cfg.data}: a CT dataset needs --intensity (a window such as abdomen, liver, "
                          "lung, bone, or ct:LOW,HIGH in HU)")
    else:
        intensity = percentile_window()
    return volume_settings(intensity, cfg.slice_axis, cfg.context)


def _volume_cases(cfg: TrainConfig, run: Path | None):
    """The volume cases of ``cfg.data`` and their split (the recorded one with ``run``)."""
    from ..data.layouts import Pair
    from ..volumes import find_volume_cases

    if cfg.folds is not None:
        from ..folds import ensure_folds
        from ..volumes.layouts import scan_volume_cases

        scanned = scan_volume_cases(cfg.data, channel=cfg.channel)
        ensure_folds(cfg.data, [c.case_id for c in scanned.cases if c.subset == "train" and c.label is not None],
                     cfg.folds, cfg.seed)
    found = find_volume_cases(cfg.data, fold=cfg.fold, channel=cfg.channel, seed=cfg.seed)
    if run is not None and (run / run_files.SPLITS).is_file():
        labelled = [Pair(c.case_id, c.image, [], layout="volumes") for c in found.cases if c.label is not None]
        recorded = recorded_split(run, labelled)
        _note_recorded(run, recorded)
        found.splits = {k: list(recorded[k]) for k in ("train", "val", "test")}
    if found.issues:
        raise DataError(f"{cfg.data}: " + "; ".join(found.issues[:5]))
    if not found.is_3d:
        raise DataError(f"{cfg.data}: holds 2D images in an nnU-Net layout; "
                        "use the images/ + masks/ layout for 2D training")
    return found


def _volume_decisions(cfg: TrainConfig, found) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, extra) a volume dataset decides: class count and names, augmentation, intensity."""
    modality = (found.channel_names or [None])[found.channel or 0] if found.channel_names else None
    num_classes = cfg.num_classes
    if found.labels and not cfg.extra.get("num_classes_explicit"):
        num_classes = 1 if len(found.labels) <= 2 else len(found.labels)
    extra: dict[str, Any] = {"volume": volume_settings_of(cfg, found.labels, modality)}
    if found.labels and num_classes == len(found.labels):
        extra["class_names"] = [found.labels.get(i, str(i)) for i in range(num_classes)]
    augment = recipe_for_modality(cfg.augment, True, volume=True)  # slices are not colours: no colour jitter
    return {"num_classes": num_classes, "augment": augment}, extra


def build_volume_datasets(cfg: TrainConfig, run: Path | None = None) -> TrainingData:
    """The slice (or, with ``--spacing``/``--patch-size``, patch) datasets of a volume dataset."""
    from ..volumes import VolumeSliceDataset
    from ..volumes.patches import split_datasets
    from ..volumes.planning import crop_plan, wants_patches

    found = _volume_cases(cfg, run)
    settings, extra = _volume_decisions(cfg, found)
    crops = None  # whole slices: asked for (--image-size), or the plan for crops
    if wants_patches(cfg):
        if cfg.spacing is not None or cfg.patch_size is not None:
            return _patch_data(cfg, found, settings, extra)
        crops = crop_plan(found.split_cases("train"), extra["volume"]["axis"], cfg.image_size)
        if crops is None:
            return _patch_data(cfg, found, settings, extra)
        print(crops.describe())  # what the run will do, even with --quiet
        extra["plan"] = crops.to_dict()
    vol = extra["volume"]
    common = dict(axis=vol["axis"], context=vol["context"], intensity=vol["intensity"],
                  image_size=cfg.image_size, num_classes=settings["num_classes"], cache_size=cfg.volume_cache)
    train, val = split_datasets(VolumeSliceDataset, found, common, crops, preload=cfg.on_bad_data == "stop")
    foreground = None
    if cfg.foreground_ratio > 0:
        table = train.label_index()
        fg_labels = [v for v in table if v != 0]
        if fg_labels:
            rarest = min(fg_labels, key=lambda v: (len(table[v]), -v))
            foreground = table[rarest]
    return TrainingData(train, val, foreground, settings, extra, _splits_of(train))


# The config fields a patch plan decides (volumes.patches.patch_datasets writes them into the
# configuration it is given: it gets a copy, and they are read back from it).
PLANNED_FIELDS = ("spacing", "patch_size", "image_size")
PLANNED_EXTRA = ("volume", "plan")


def _patch_data(cfg: TrainConfig, found, settings: dict[str, Any], extra: dict[str, Any]) -> TrainingData:
    from ..volumes.patches import patch_datasets

    scratch = copy.deepcopy(cfg)
    for name, value in settings.items():
        setattr(scratch, name, value)
    train, val, foreground = patch_datasets(scratch, found, extra["volume"])
    settings = {**settings, **{name: getattr(scratch, name) for name in PLANNED_FIELDS}}
    if cfg.dice == "auto":
        settings["dice"] = "batch"  # most patches are empty: see segdino.losses.soft_dice_loss
    extra = {**extra, **{name: scratch.extra[name] for name in PLANNED_EXTRA if name in scratch.extra}}
    return TrainingData(train, val, foreground, settings, extra, _splits_of(train))


def make_transform(cfg: TrainConfig) -> Callable | None:
    """The training augmentation ``cfg.augment`` names (None for ``none``)."""
    from ..data.transforms import build_transforms

    return build_transforms(cfg.augment)


__all__ = ["TrainingData", "build_datasets", "build_volume_datasets", "is_volume_data", "make_transform",
           "recorded_split", "volume_settings_of"]
