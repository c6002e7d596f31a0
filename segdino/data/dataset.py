"""A torch Dataset of image/mask pairs for training and evaluation."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..ops import resize_image, to_tensor
from .imageio import read_image
from .layouts import Pair, find_pairs
from .masks import DEFAULT_THRESHOLD, read_mask
from .splits import SPLIT_NAMES, resolve_splits

Transform = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of sample ``index`` in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (H, W) label mask (pixel centres aligned, like PIL's NEAREST)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    out = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest-exact")
    return out[0, 0].to(mask.dtype)


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/mask pairs of one split, resized for the model.

    ``dataset[i]`` is a dict:

    - ``image``: (3, h, w) float32 in [0, 1], ``(h, w) = image_size`` (bilinear, antialiased,
      as :func:`segdino.ops.resize_image`), then rounded to 1/255 steps so that the
      in-memory cache changes nothing. Not normalised: the model's mean/std are applied by
      the caller (:func:`segdino.ops.normalize`), as at inference.
    - ``mask``: (h, w) int64 labels (0/1 binary, 0..K-1 multi-class), nearest resize.
    - ``case_id``: str; ``orig_size``: int64 tensor ``(H, W)``, the image's own size;
      ``index``: int, ``i``.

    With ``transform``, it is called as ``transform(image, mask, generator=g)`` with ``g``
    seeded by ``(seed, epoch, i)`` (:meth:`set_epoch`), so the augmentation of every sample is
    reproducible whatever the worker count.

    Args:
        root_or_pairs: a dataset folder, or pairs from :func:`segdino.data.layouts.find_pairs`.
        split: ``train``, ``val``, ``test``, or ``all``/None (every pair).
        num_classes: 1 = binary, K >= 2 = index masks with labels 0..K-1.
        image_size: (h, w) or one int; None keeps each image's own size.
        splits: explicit splits (default: :func:`segdino.data.splits.resolve_splits` of ``root``).
        cache: keep decoded, resized samples in memory (uint8; about h*w*4 bytes per sample).
            Call :meth:`preload` before a multi-worker DataLoader so workers share one copy.
        allow_unpaired: leave out images without masks instead of failing.

    Raises:
        DataError: layout, pairing or split problems (at construction); an unreadable file,
            bad mask values or an image/mask size mismatch (when the sample is read), naming files.
    """

    def __init__(
        self,
        root_or_pairs: str | os.PathLike | Sequence[Pair],
        split: str | None = "train",
        num_classes: int = 1,
        image_size: int | tuple[int, int] | None = (256, 256),
        transform: Transform | None = None,
        seed: int = 0,
        fold: int = 0,
        mask_threshold: int = DEFAULT_THRESHOLD,
        cache: bool = False,
        splits: dict[str, list[str]] | None = None,
        allow_unpaired: bool = False,
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1 (1 = binary), got {num_classes!r}")
        if split not in (None, "all") + SPLIT_NAMES:
            raise ConfigError(f"split must be one of train, val, test, all; got {split!r}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if image_size is not None:
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) < 1:
                raise ConfigError(f"image_size must be (height, width) > 0, got {image_size}")
        if cache and image_size is None:
            raise ConfigError("cache needs a fixed image_size")
        if isinstance(root_or_pairs, (str, os.PathLike)):
            self.root: Path | None = Path(root_or_pairs)
            all_pairs = find_pairs(self.root, allow_unpaired=allow_unpaired)
        else:
            self.root = None
            all_pairs = list(root_or_pairs)
        if split in (None, "all"):
            self.splits = splits if splits is not None else None
            self.pairs = all_pairs
        else:
            if splits is None:
                if self.root is None:
                    raise ConfigError("pairs without a dataset folder need splits= (or split='all')")
                splits = resolve_splits(self.root, all_pairs, seed=seed, fold=fold)
            self.splits = splits
            wanted = set(splits[split])
            self.pairs = [p for p in all_pairs if p.case_id in wanted]
        self.split = split
        self.num_classes = num_classes
        self.image_size = image_size
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.mask_threshold = mask_threshold
        self.cache = cache
        self._cached_images: torch.Tensor | None = None
        self._cached_masks: torch.Tensor | None = None
        self._cached_sizes: torch.Tensor | None = None
        self._filled: torch.Tensor | None = None

    # --- public ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def case_ids(self) -> list[str]:
        return [p.case_id for p in self.pairs]

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of ``epoch`` (used only with ``transform``)."""
        self.epoch = int(epoch)

    def native_image(self, index: int) -> np.ndarray:
        """The image at its own size: (H, W, 3) uint8 RGB."""
        return read_image(self.pairs[index].image)

    def native_mask(self, index: int) -> np.ndarray:
        """The mask at the image's own size: (H, W) uint8 labels."""
        pair = self.pairs[index]
        return read_mask(pair.masks, self.num_classes, self.mask_threshold)

    def load_native(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 and mask (H, W) uint8 of sample ``index``, sizes checked.

        Raises:
            DataError: unreadable file, mask values that do not fit the task, or an image and
                mask of different sizes (the message names both files).
        """
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.masks, self.num_classes, self.mask_threshold)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{pair.masks[0]}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"{pair.image} ({image.shape[1]}x{image.shape[0]})"
            )
        return image, mask

    def sample(self, index: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Sample ``index``; with ``transform``, augmented with ``generator`` (default: seeded by epoch)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image_u8, mask_u8, size = self._resized(index)
        image = image_u8.float().div_(255.0)
        mask = mask_u8.long()
        if self.transform is not None:
            if generator is None:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            image, mask = self.transform(image, mask, generator=generator)
        return {
            "image": image,
            "mask": mask,
            "case_id": self.pairs[index].case_id,
            "orig_size": torch.tensor(size, dtype=torch.long),
            "index": index,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index)

    def preload(self, num_threads: int | None = None, indices: Iterable[int] | None = None) -> None:
        """Decode and cache samples now (all by default), on ``num_threads`` threads.

        Raises:
            ConfigError: the dataset was made without ``cache=True``.
            DataError: the first bad sample met.
        """
        if not self.cache:
            raise ConfigError("preload needs a dataset made with cache=True")
        wanted = list(range(len(self))) if indices is None else list(indices)
        self._ensure_cache()
        threads = num_threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(self._resized, wanted):
                pass

    # --- internals ------------------------------------------------------------------------------

    def _ensure_cache(self) -> None:
        if self._cached_images is None:
            n, (h, w) = len(self), self.image_size
            # One storage per tensor: forked DataLoader workers then share the pages.
            self._cached_images = torch.empty((n, 3, h, w), dtype=torch.uint8)
            self._cached_masks = torch.empty((n, h, w), dtype=torch.uint8)
            self._cached_sizes = torch.zeros((n, 2), dtype=torch.long)
            self._filled = torch.zeros(n, dtype=torch.bool)

    def _resized(self, index: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(3, h, w) uint8 image, (h, w) uint8 mask and native (H, W) of sample ``index``."""
        if self.cache:
            self._ensure_cache()
            if bool(self._filled[index]):
                size = tuple(int(s) for s in self._cached_sizes[index])
                return self._cached_images[index], self._cached_masks[index], size
        image, mask = self.load_native(index)
        size = (int(image.shape[0]), int(image.shape[1]))
        x = to_tensor(image)
        m = torch.from_numpy(mask)
        if self.image_size is not None:
            x = resize_image(x, self.image_size)
            m = resize_mask(m, self.image_size)
        x = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        if self.cache:
            self._cached_images[index] = x
            self._cached_masks[index] = m
            self._cached_sizes[index] = torch.tensor(size)
            self._filled[index] = True
        return x, m, size

    def __repr__(self) -> str:
        where = self.root if self.root is not None else f"{len(self.pairs)} pairs"
        return (f"SegmentationDataset({where}, split={self.split!r}, n={len(self)}, "
                f"num_classes={self.num_classes}, image_size={self.image_size})")

