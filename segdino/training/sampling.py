"""Sampling: which samples each rank trains on in each epoch, and how they are augmented.

Reproducibility rests on two rules: the sample order of epoch ``e`` is drawn from ``seed`` and
``e`` alone, and each sample's augmentation from a generator seeded by ``(seed, e, index)``
(:func:`segdino.data.dataset.sample_seed`). A run resumed from the end of any epoch therefore
sees exactly the batches the uninterrupted run saw, whatever the number of DataLoader workers.
Under ``torchrun`` every rank draws the same global order and takes its own slice of each
global batch.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.dataset import sample_seed
from ..errors import DataError



class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys of one rank's share of every global batch of an epoch.

    The global order of epoch ``e`` depends only on (seed, e): a permutation for 2D data, or
    for volumes the dataset's block order (a few volumes at a time, so each is decoded about
    once per pass). It is cut to whole global batches (``batch_size * world``). With
    ``foreground`` (indices of slices that contain the rarest class) and ``foreground_ratio``
    r > 0, the first ``round(r * global batch)`` places of every global batch are taken by
    slices drawn from ``foreground``, preferring those of the volumes the batch already visits.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, steps: int | None = None,
                 rank: int = 0, world: int = 1, foreground: np.ndarray | None = None,
                 foreground_ratio: float = 0.0):
        self.dataset = dataset
        self.n = len(dataset)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.steps, self.rank, self.world = steps, rank, world
        self.foreground = None if foreground is None or len(foreground) == 0 else np.asarray(foreground)
        self.foreground_ratio = float(foreground_ratio)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def num_steps(self) -> int:
        steps = max(1, self.n // self.global_batch)
        return steps if self.steps is None else min(steps, self.steps)

    def forced_per_batch(self) -> int:
        if self.foreground is None or self.foreground_ratio <= 0:
            return 0
        return min(self.global_batch, int(round(self.foreground_ratio * self.global_batch)))

    def global_order(self, epoch: int | None = None) -> list[int]:
        """The global order of ``epoch`` (default: the one :meth:`set_epoch` set)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if hasattr(self.dataset, "epoch_order"):
            order = list(self.dataset.epoch_order(self.seed, epoch))
        else:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 1 << 40))
            order = torch.randperm(self.n, generator=g).tolist()
        if len(order) < self.global_batch:  # fewer samples than one batch: repeat them
            order = (order * math.ceil(self.global_batch / max(1, len(order))))[: self.global_batch]
        order = order[: self.num_steps() * self.global_batch]
        k = self.forced_per_batch()
        if k:
            order = self._force_foreground(order, k, epoch)
        return order

    def _force_foreground(self, order: list[int], k: int, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch, 7])
        locate = getattr(self.dataset, "locate", None)
        by_case: dict[int, np.ndarray] = {}
        if locate is not None:
            cases = np.asarray([locate(int(i))[0] for i in self.foreground])
            by_case = {c: self.foreground[cases == c] for c in np.unique(cases)}
        gb = self.global_batch
        out = list(order)
        for s in range(0, len(out), gb):
            batch = out[s : s + gb]
            pool = self.foreground
            if by_case:
                visited = {locate(int(i))[0] for i in batch}
                near = [by_case[c] for c in visited if c in by_case]
                if near:
                    pool = np.concatenate(near)
            out[s : s + k] = rng.choice(pool, size=k, replace=True).tolist()
        return out

    def keys(self, epoch: int) -> Iterator[tuple[int, int]]:
        """This rank's keys of ``epoch``, whole batches of them."""
        order = self.global_order(epoch)
        gb, b = self.global_batch, self.batch_size
        for s in range(0, len(order), gb):
            for i in order[s + self.rank * b : s + (self.rank + 1) * b]:
                yield (epoch, int(i))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self.keys(self.epoch)

    def __len__(self) -> int:
        return self.num_steps() * self.batch_size


class RunSampler(Sampler):
    """The keys of epochs ``start`` to ``end - 1`` of ``sampler`` back to back, for one DataLoader
    iterator over the whole run.

    Each epoch is whole batches, so batches never straddle two epochs and every key (and so every
    sample's augmentation) is the one the epoch alone would give. Through one iterator the
    workers keep preparing batches across an epoch's end, where a new iterator per epoch would
    stall the step until its first batches are made again (a fixed cost per epoch that short
    epochs feel: 0.5 s of Kvasir-SEG's 1.25 s epochs on one GPU).
    """

    def __init__(self, sampler: EpochSampler, start: int, end: int):
        self.sampler, self.start, self.end = sampler, int(start), int(end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.start, self.end):
            yield from self.sampler.keys(epoch)

    def __len__(self) -> int:
        return max(0, self.end - self.start) * len(self.sampler)


class TrainView(Dataset):
    """Augmented training samples keyed by ``(epoch, index)``.

    Bad samples (``DataError``) either propagate or, with ``skip_bad``, come back as a note
    naming the file, which the collate function drops from the batch.
    """

    def __init__(self, base: Dataset, transform: Callable | None, seed: int, skip_bad: bool = False):
        self.base, self.transform, self.seed, self.skip_bad = base, transform, seed, skip_bad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        # Patch datasets draw the patch position from the sample's generator too.
        train_sample = getattr(self.base, "train_sample", None)
        try:
            sample = train_sample(index, g) if train_sample is not None else self.base[index]
        except DataError as e:
            if not self.skip_bad:
                raise
            return {"skipped": str(e)}
        image, mask = sample["image"], sample["mask"]
        if self.transform is not None:
            image, mask = self.transform(image, mask, generator=g)
        return {"image": image, "mask": mask, "case_id": sample["case_id"]}


def collate_train(items: list[dict]) -> dict[str, Any]:
    """A training batch: ``image`` (B, C, H, W), ``mask`` (B, H, W), ``case_id``, and the notes of
    the samples that were skipped (``image`` None when every sample was)."""
    good = [it for it in items if "skipped" not in it]
    skipped = [it["skipped"] for it in items if "skipped" in it]
    if not good:
        return {"image": None, "mask": None, "case_id": [], "skipped": skipped}
    return {
        "image": torch.stack([it["image"] for it in good]),
        "mask": torch.stack([it["mask"] for it in good]),
        "case_id": [it["case_id"] for it in good],
        "skipped": skipped,
    }


def collate_eval(items: list[dict]) -> dict[str, Any]:
    """A validation batch: ``image`` (B, C, H, W) and each sample's case, native size and index."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "case_id": [it["case_id"] for it in items],
        "orig_size": [tuple(int(s) for s in it["orig_size"]) for it in items],
        "index": [int(it["index"]) for it in items],
    }


def default_workers(accelerated: bool) -> int:
    """DataLoader processes when none are asked for: 2 for a run on the CPU (the workers share its
    cores with the model); on a GPU, one per CPU core this process may use less two (the training
    process and the compiler's threads), at most 12 and at least 2. The segdino recipe's augmentation
    costs ~4-7 ms per 256x256 image on one core, so 8-12 workers are what 1,000 images/s needs."""
    if not accelerated:
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(12, cores - 2))


def train_loader(view: Dataset, sampler: Sampler, batch_size: int, workers: int | None, pin_memory: bool) -> DataLoader:
    """The DataLoader of a training run: ``sampler``'s keys (one epoch's, or a :class:`RunSampler`'s
    run of epochs), ``workers`` processes kept across epochs (None: :func:`default_workers`)."""
    if workers is None:
        workers = default_workers(pin_memory)
    return DataLoader(
        view, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_train,
        pin_memory=pin_memory, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
    )


__all__ = ["EpochSampler", "RunSampler", "TrainView", "collate_eval", "collate_train", "default_workers", "train_loader"]
