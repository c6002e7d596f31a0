"""Training on volumes: a dataset of 2.5D slices that keeps only a few volumes in memory."""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .intensity import normalize_intensity, validate_intensity
from .io import Volume, is_volume_path, read_volume, require_same_grid, volume_header_info
from .layouts import VolumeCase, find_volume_cases
from .slicing import context_slice, label_slice, resolve_axis, slice_shape, validate_axis


#: Memory for decoded volumes per process (each DataLoader worker has its own cache) when no
#: cache size is given: 2 GiB holds ~2,000 LIDC-sized crops or ~50 whole 40x512x512 scans.
CACHE_BYTES = 2 * 2**30

class VolumeSliceDataset(Dataset):
    """Every slice of every case along one axis, as 2D samples for the SegDINO model.

    ``dataset[i]`` is a dict with the keys of the 2D dataset:

    - ``image``: float32 tensor (3, h, w) in [0, 1], slices i-k, i, i+k of the intensity-normalised
      volume, resized (bilinear, antialiased) to ``image_size``;
    - ``mask``: int64 tensor (h, w), resized by nearest neighbour; binary (``num_classes=1``):
      1 where the label is non-zero; multi-class: the label values, which must be < num_classes;
    - ``case_id``; ``orig_size``: int64 tensor (H, W), the slice's own size; ``index``: ``i``;
      ``slice_index``: the slice's index along the axis of its case.

    Memory: decoded, normalised volumes (image as float16 in [0, 1], finer than the 8-bit steps
    of 2D images, plus labels) are kept in an LRU cache of ``cache_size`` cases, by default as
    many as fit in :data:`CACHE_BYTES` (estimated from the headers); each DataLoader worker has
    its own cache. Shuffling slices across all cases makes every access decode a
    volume: :meth:`epoch_order` gives a shuffled order that visits cases in blocks that fit the
    cache.

    Args:
        cases: the cases to slice (from :func:`segdino.volumes.find_volume_cases`); cases
            without a label are refused.
        axis: ``axial`` (default), ``coronal``, ``sagittal`` or an array axis 0..2, resolved
            per case through its affine.
        context: the 2.5D context k (0 = the slice three times).
        intensity: an intensity spec (see :mod:`segdino.volumes.intensity`).
        image_size: (h, w) the model is fed, or one int.
        num_classes: 1 (binary) or K >= 2 classes including background.
        cache_size: how many decoded cases to keep; None: as many as fit in :data:`CACHE_BYTES`
            (:meth:`cache_capacity`), so a dataset of small crops is decoded once and a dataset
            of whole scans is not decoded again for every sample.
    """

    def __init__(self, cases: Sequence[VolumeCase], axis: str | int = "axial", context: int = 0,
                 intensity: Mapping[str, Any] | None = None, image_size: int | Sequence[int] = 256,
                 num_classes: int = 1, cache_size: int | None = 2):
        if intensity is None:
            raise ConfigError("a volume dataset needs an intensity setting (a CT window or MRI percentiles)")
        if not isinstance(context, int) or context < 0:
            raise ConfigError(f"slice context k must be an integer >= 0, got {context!r}")
        if cache_size is not None and cache_size < 1:
            raise ConfigError(f"cache_size must be >= 1, got {cache_size}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.cases = list(cases)
        unlabelled = [c.case_id for c in self.cases if c.label is None]
        if unlabelled:
            raise DataError(f"cases without a label volume cannot be trained on: {', '.join(unlabelled[:5])}")
        self.axis_setting = validate_axis(axis)
        self.context = int(context)
        self.intensity = validate_intensity(intensity)
        self.image_size = (int(image_size), int(image_size)) if isinstance(image_size, int) else \
            tuple(int(s) for s in image_size)
        self.num_classes = int(num_classes)
        self.cache_size = None if cache_size is None else int(cache_size)
        self._capacity: int | None = None
        self.splits: dict[str, list[str]] | None = None
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.loads = 0  # decoded cases so far (for tests and logging)
        self._label_index: list[tuple[int, ...]] | None = None
        self.shapes: list[tuple[int, int, int]] = []
        self.axes: list[int] = []
        self.spacings: list[np.ndarray] = []  # voxel size (mm) along each array axis, from the headers
        for c in self.cases:
            shape, affine = self._geometry(c)
            self._check_label_header(c, shape, affine)
            self.shapes.append(shape)
            self.axes.append(resolve_axis(self.axis_setting, affine))
            self.spacings.append(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))
        counts = [s[a] for s, a in zip(self.shapes, self.axes)]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @classmethod
    def from_folder(cls, root: str | os.PathLike, split: str = "train", fold: int = 0,
                    channel: int | str | None = None, seed: int = 0, **kwargs) -> "VolumeSliceDataset":
        """The slices of one split of a dataset folder (any layout of :mod:`segdino.volumes.layouts`)."""
        found = find_volume_cases(root, fold=fold, channel=channel, seed=seed)
        if not found.is_3d:
            raise DataError(f"{root}: holds 2D images ({found.file_ending}); use the 2D dataset")
        ds = cls(found.split_cases(split), **kwargs)
        ds.splits = found.splits
        return ds

    def _geometry(self, case: VolumeCase) -> tuple[tuple[int, int, int], np.ndarray]:
        if case.image.is_file() and is_volume_path(case.image):
            shape, affine = volume_header_info(case.image)
            shape = tuple(shape) + (1,) * max(0, 3 - len(shape))
            return tuple(int(s) for s in shape[:3]), affine
        vol = read_volume(case.image, case.channel)  # DICOM: headers and pixels come together
        return vol.shape, vol.affine

    @staticmethod
    def _check_label_header(case: VolumeCase, shape, affine: np.ndarray) -> None:
        """A label off its image's grid is refused before training starts, from headers."""
        if not (case.label.is_file() and is_volume_path(case.label)):
            return  # checked when the case is read
        lshape, laffine = volume_header_info(case.label)
        lshape = tuple(int(s) for s in (tuple(lshape) + (1,) * max(0, 3 - len(lshape)))[:3])
        # Zero-stride arrays: a Volume of the right shape that costs no memory.
        image = Volume(np.broadcast_to(np.zeros((), np.uint8), shape), affine, case.image)
        label = Volume(np.broadcast_to(np.zeros((), np.uint8), lshape), laffine, case.label)
        require_same_grid(image, label)

    # -- volumes --

    def _load(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        if ci in self._cache:
            self._cache.move_to_end(ci)
            return self._cache[ci]
        norm, labels = self._decode(ci)
        self._keep(ci, norm, labels)
        return norm, labels

    def _keep(self, ci: int, norm: np.ndarray, labels: np.ndarray) -> None:
        self.loads += 1
        self._cache[ci] = (norm, labels)
        while len(self._cache) > self.cache_capacity():
            self._cache.popitem(last=False)

    def _decode(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """Case ``ci`` read, checked, normalised and prepared; touches no shared state (threads run it)."""
        case = self.cases[ci]
        image = read_volume(case.image, case.channel)
        label = read_volume(case.label, label=True)
        require_same_grid(image, label)  # data check's rule: a label off its image trains on wrong voxels
        if image.shape != self.shapes[ci]:
            raise DataError(f"{case.image}: shape {image.shape} differs from its header {self.shapes[ci]}")
        labels = self._labels(label.array, case.label)
        norm = normalize_intensity(image.array, self.intensity, dtype=np.float16)
        return self._prepare(ci, norm, labels, image.spacing)

    def preload(self, num_threads: int | None = None, max_bytes: int | None = None) -> bool:
        """Decode every case now, on ``num_threads`` threads, and keep them all (the cache grows to hold them).

        Called before a DataLoader starts its workers, which then share these arrays instead of each
        decoding the volumes itself. With ``max_bytes``, nothing is done when the decoded cases would
        take more (:meth:`decoded_bytes`). Returns whether the cases were loaded.
        """
        if max_bytes is not None and sum(self.decoded_bytes(ci) for ci in range(len(self.cases))) > max_bytes:
            return False
        self.cache_size = max(self.cache_capacity(), len(self.cases))
        missing = [ci for ci in range(len(self.cases)) if ci not in self._cache]
        threads = max(1, min(num_threads or os.cpu_count() or 1, len(missing) or 1))
        with ThreadPoolExecutor(max_workers=threads) as pool:  # decompression releases the GIL in part
            for ci, (norm, labels) in zip(missing, pool.map(self._decode, missing)):
                self._keep(ci, norm, labels)
        return True

    def decoded_bytes(self, ci: int) -> int:
        """Estimated memory of case ``ci`` decoded: float16 image and uint8 labels."""
        return int(np.prod(self.shapes[ci], dtype=np.int64)) * 3

    def cache_capacity(self) -> int:
        """How many decoded cases the cache keeps: ``cache_size``, or by default as many cases of
        the median decoded size as fit in :data:`CACHE_BYTES` (at least 2, at most all)."""
        if self.cache_size is not None:
            return self.cache_size
        if self._capacity is None:
            median = float(np.median([self.decoded_bytes(i) for i in range(len(self.cases))])) if self.cases else 1.0
            self._capacity = int(min(max(2, CACHE_BYTES // max(median, 1.0)), max(2, len(self.cases))))
        return self._capacity

    def _prepare(self, ci: int, norm: np.ndarray, labels: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A hook for subclasses to change a decoded case (e.g. resample it) before it is cached."""
        return norm, labels

    def _labels(self, array: np.ndarray, path: Path) -> np.ndarray:
        a = np.asarray(array)
        if a.dtype.kind == "f":
            if not np.all(a == np.round(a)):
                raise DataError(f"{path}: label volume has non-integer values")
            a = a.astype(np.int64)
        if self.num_classes == 1:
            return (a > 0).astype(np.uint8)
        if a.size and (a.min() < 0 or a.max() >= self.num_classes):
            bad = np.unique(a[(a < 0) | (a >= self.num_classes)])[:5].tolist()
            raise DataError(f"{path}: label values {bad} outside 0..{self.num_classes - 1} (num_classes={self.num_classes})")
        return a.astype(np.uint8 if self.num_classes <= 256 else np.int32, copy=False)

    # -- indexing --

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global slice index -> (case position, slice index along its axis)."""
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} out of range 0..{len(self) - 1}")
        ci = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return ci, int(index - self.offsets[ci])

    def native_mask(self, index: int) -> np.ndarray:
        """(H, W) labels of slice ``index`` at its own size (binary: 0/1)."""
        ci, s = self.locate(index)
        _, labels = self._load(ci)
        return np.ascontiguousarray(label_slice(labels, self.axes[ci], s))

    def __getitem__(self, index: int) -> dict[str, Any]:
        ci, s = self.locate(int(index))
        norm, labels = self._load(ci)
        axis = self.axes[ci]
        img = context_slice(norm, axis, s, self.context, dtype=np.float32)  # (H, W, 3)
        h, w = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if (h, w) != self.image_size:
            x = F.interpolate(x[None], size=self.image_size, mode="bilinear", align_corners=False, antialias=True)[0]
            x = x.clamp_(0.0, 1.0)
        m = torch.from_numpy(np.ascontiguousarray(label_slice(labels, axis, s)).astype(np.int64))
        if (h, w) != self.image_size:
            m = F.interpolate(m[None, None].float(), size=self.image_size, mode="nearest-exact")[0, 0].long()
        return {
            "image": x.contiguous(),
            "mask": m,
            "case_id": self.cases[ci].case_id,
            "orig_size": torch.tensor((h, w), dtype=torch.int64),
            "index": int(index),
            "slice_index": s,
        }

    # -- label index and order --

    def slice_labels(self) -> list[tuple[int, ...]]:
        """For every global slice index, the label values present in it (background 0 included).

        Computed once by reading each label volume (not kept in the cache).
        """
        if self._label_index is None:
            out: list[tuple[int, ...]] = []
            for ci, case in enumerate(self.cases):
                if ci in self._cache:
                    labels = self._cache[ci][1]
                else:
                    labels = self._labels(read_volume(case.label, label=True).array, case.label)
                axis = self.axes[ci]
                moved = np.moveaxis(labels, axis, 0).reshape(labels.shape[axis], -1)
                for row in moved:
                    out.append(tuple(int(v) for v in np.flatnonzero(np.bincount(row, minlength=1))))
            self._label_index = out
        return self._label_index

    def label_index(self) -> dict[int, np.ndarray]:
        """Label value -> sorted global indices of the slices that contain it."""
        table: dict[int, list[int]] = {}
        for i, values in enumerate(self.slice_labels()):
            for v in values:
                table.setdefault(v, []).append(i)
        return {v: np.asarray(ix, dtype=np.int64) for v, ix in sorted(table.items())}

    def foreground_slices(self) -> np.ndarray:
        """Global indices of slices with any non-zero label."""
        return np.asarray([i for i, v in enumerate(self.slice_labels()) if any(x != 0 for x in v)], dtype=np.int64)

    def epoch_order(self, seed: int, epoch: int = 0, block: int | None = None) -> list[int]:
        """A shuffled order of all slices that visits ``block`` cases at a time (default: the cache size).

        Cases are shuffled, cut into blocks, and the slices of each block shuffled together, so a
        pass decodes each volume about once instead of once per slice.
        """
        block = self.cache_capacity() if block is None else int(block)
        rng = np.random.default_rng([int(seed), int(epoch)])
        case_order = rng.permutation(len(self.cases))
        order: list[int] = []
        for b in range(0, len(case_order), block):
            idx = np.concatenate([np.arange(self.offsets[c], self.offsets[c + 1]) for c in case_order[b : b + block]])
            order.extend(rng.permutation(idx).tolist())
        return order

    def slice_size(self, case_position: int) -> tuple[int, int]:
        """(H, W) of the slices of one case."""
        return slice_shape(self.shapes[case_position], self.axes[case_position])
