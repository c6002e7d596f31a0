"""Training: one loop for both recipes, resumable to the bit, observable, writing a run folder.

Reproducibility rests on two rules: the sample order of epoch ``e`` is drawn from ``seed`` and
``e`` alone, and each sample's augmentation from a generator seeded by ``(seed, e, index)``
(:func:`segdino.data.dataset.sample_seed`). A run resumed from the end of any epoch therefore
sees exactly the batches the uninterrupted run saw, whatever the number of DataLoader workers.

The same code runs under ``torchrun`` (DistributedDataParallel): every rank draws the same
global order and takes its own slice of each global batch; validation is split across ranks
with no case counted twice; only rank 0 writes files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, Sampler

from . import run_files
from .checkpoint import load_model, save_model, save_tensors
from .run_files import RUN_MARKERS
from .data.dataset import sample_seed
from .errors import CheckpointError, ConfigError, DataError, SegDINOError
from .fileio import atomic_write_text, remove_stale_temporaries
from .inference import logits_to_labels, normalize, resize_logits, resolve_device
from .losses import segmentation_loss
from .model import SegDINO, build_model
from .progress import Progress
from .progress import write as progress_write
from .outputs import OutputFolder, open_output, record_folder
from .train_config import TrainConfig, dump_yaml

log = logging.getLogger("segdino.train")

RESUME_FILE = run_files.RESUME_STATE


class TrainingError(SegDINOError):
    """Training cannot go on (a non-finite loss or weights)."""


# --- distributed helpers ------------------------------------------------------------------------


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes in the environment (env://).

    Returns (rank, world size, local rank); (0, 1, 0) when not launched by torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank


def _all_gather(obj: Any) -> list[Any]:
    rank, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


# --- data order ---------------------------------------------------------------------------------


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

    def global_order(self) -> list[int]:
        if hasattr(self.dataset, "epoch_order"):
            order = list(self.dataset.epoch_order(self.seed, self.epoch))
        else:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 1 << 40))
            order = torch.randperm(self.n, generator=g).tolist()
        if len(order) < self.global_batch:  # fewer samples than one batch: repeat them
            order = (order * math.ceil(self.global_batch / max(1, len(order))))[: self.global_batch]
        order = order[: self.num_steps() * self.global_batch]
        k = self.forced_per_batch()
        if k:
            order = self._force_foreground(order, k)
        return order

    def _force_foreground(self, order: list[int], k: int) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order()
        gb, b = self.global_batch, self.batch_size
        for s in range(0, len(order), gb):
            for i in order[s + self.rank * b : s + (self.rank + 1) * b]:
                yield (self.epoch, int(i))

    def __len__(self) -> int:
        return self.num_steps() * self.batch_size


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
    return {
        "image": torch.stack([it["image"] for it in items]),
        "case_id": [it["case_id"] for it in items],
        "orig_size": [tuple(int(s) for s in it["orig_size"]) for it in items],
        "index": [int(it["index"]) for it in items],
    }


# --- Dice during training ---------------------------------------------------------------------


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


# --- optimiser and schedule -------------------------------------------------------------------


def backbone_lr_scale(cfg: TrainConfig) -> float:
    """The backbone's learning rate relative to the decoder's.

    Unset, it is 0.1 when the backbone starts from pretrained weights (keep what it knows), and
    1.0 from random weights (it has everything to learn).
    """
    if cfg.backbone_lr_scale is not None:
        return float(cfg.backbone_lr_scale)
    return 0.1 if (cfg.backbone_weights or cfg.init) else 1.0


def make_optimizer(model: SegDINO, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over two groups, decoder at ``lr`` and backbone at ``lr * backbone_lr_scale``."""
    groups = model.parameter_groups()
    param_groups = [{"params": groups["decoder"], "lr": cfg.lr, "name": "decoder"}]
    if groups["backbone"]:
        param_groups.append({"params": groups["backbone"], "lr": cfg.lr * backbone_lr_scale(cfg), "name": "backbone"})
    kwargs: dict[str, Any] = dict(weight_decay=cfg.weight_decay)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups, **kwargs)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- the resumable state ----------------------------------------------------------------------


def save_resume_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Model, optimiser and loop state in one safetensors file (tensors) with JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    osd = opt.state_dict()
    for pid, state in osd["state"].items():
        for k, v in state.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = t.detach().cpu().contiguous().clone()
    meta = dict(meta)
    meta["param_groups"] = osd["param_groups"]
    meta["rng_cpu"] = torch.get_rng_state().tolist()
    save_tensors(path, tensors, {"segdino_resume": json.dumps(meta)})


def _check_resume_meta(path: Path, meta: Any, n_groups: int) -> dict[str, Any]:
    """The loop metadata of a training state, checked field by field (a forged or damaged file is one
    :class:`CheckpointError` naming the field, never a traceback later)."""
    def bad(field: str, expected: str) -> CheckpointError:
        shown = json.dumps(meta.get(field)) if isinstance(meta, dict) else ""
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return CheckpointError(f"{path}: the training state's field {field!r} must be {expected}, found {shown}")

    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the training state's metadata must be a JSON object")
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for field in ("epoch", "step", "best_epoch"):
        if not is_int(meta.get(field)) or meta[field] < 0:
            raise bad(field, "an integer >= 0")
    if not (is_int(meta.get("best")) or isinstance(meta.get("best"), float)) or math.isnan(meta["best"]):
        raise bad("best", "a number")
    if not is_int(meta.get("world", 1)) or meta.get("world", 1) < 1:
        raise bad("world", "an integer >= 1")
    if "log" in meta and not isinstance(meta["log"], str):
        raise bad("log", "the text of log.csv")
    rng = meta.get("rng_cpu")
    if not isinstance(rng, list) or not rng or not all(is_int(v) and 0 <= v <= 255 for v in rng):
        raise bad("rng_cpu", "a list of byte values")
    groups = meta.get("param_groups")
    if (not isinstance(groups, list) or len(groups) != n_groups
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                       and all(is_int(i) for i in g["params"]) for g in groups)):
        raise bad("param_groups", f"a list of {n_groups} parameter group(s) of this model")
    for g in groups:
        for k, v in g.items():
            if k in ("lr", "weight_decay", "eps") and not (is_int(v) or isinstance(v, float)):
                raise CheckpointError(f"{path}: the training state's parameter group field {k!r} must be a number")
    return meta


def load_resume_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_resume_state` wrote; returns its loop metadata.

    Raises:
        CheckpointError: the file is unreadable, truncated or forged (a field of the wrong type or
            range, tensors or parameter groups that do not fit this run), naming the file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["segdino_resume"])
        tensors = load_file(str(path))
    except Exception as e:  # any unreadable state is reported as such
        raise CheckpointError(f"{path}: cannot read the training state to resume ({e})") from None
    meta = _check_resume_meta(path, meta, len(opt.param_groups))
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the saved model does not fit this run's configuration ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(torch.tensor(meta["rng_cpu"], dtype=torch.uint8))
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the saved optimiser does not fit this run ({e})") from None
    return meta


# --- the trainer ------------------------------------------------------------------------------


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_dice: float | None
    val_dice_per_class: list[float] | None
    lr: float
    seconds: float
    images_per_s: float


class Trainer:
    """Trains a SegDINO model and writes the run folder (rank 0 only)."""

    def __init__(self, cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None,
                 transform: Callable | None, model: SegDINO | None = None, out: Path | None = None,
                 foreground: np.ndarray | None = None):
        self.cfg = cfg
        self.out = Path(out or cfg.out)
        self.rank, self.world = dist_info()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.train_set, self.val_set = train_set, val_set
        self.transform = transform
        torch.manual_seed(cfg.seed)
        self.model = model if model is not None else build_run_model(cfg)
        self.model.to(self.device)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.sampler = EpochSampler(train_set, cfg.batch_size, cfg.seed, steps=cfg.steps_per_epoch,
                                    rank=self.rank, world=self.world, foreground=foreground,
                                    foreground_ratio=cfg.foreground_ratio)
        self.steps_per_epoch = self.sampler.num_steps()
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.start_epoch = 0
        self.best = -math.inf
        self.best_epoch = 0
        self.use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.forward: Callable = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            from .fast import compile_available

            if compile_available(self.device):
                self.forward = torch.compile(self.forward)
        self.skipped: list[str] = []
        self._native_masks: dict[int, torch.Tensor] = {}
        self._tb: Any = None
        self._log_text = ""  # log.csv as written so far; saved with the resume state
        self._last_save = -math.inf  # the first epoch is always saved
        self.loss_hook: Callable[[torch.Tensor, dict], torch.Tensor] | None = None  # tests inject faults here
        self.pretrained = is_pretrained(cfg)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the loop --

    def train_loader(self) -> DataLoader:
        view = TrainView(self.train_set, self.transform, self.cfg.seed, skip_bad=self.cfg.on_bad_data == "skip")
        workers = self.cfg.num_workers
        return DataLoader(
            view, batch_size=self.cfg.batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate_train, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        )

    def set_lr(self) -> float:
        f = lr_factor(self.step, self.total_steps, self.warmup_steps, self.cfg.schedule)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.opt.param_groups[0]["lr"]

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device, non_blocking=True).float(), self.model.config)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss_of(self, batch: dict[str, Any]) -> torch.Tensor:
        x = self._inputs(batch["image"])
        masks = batch["mask"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.forward(x)
        loss = segmentation_loss(logits.float(), masks, self.cfg.loss)
        if self.loss_hook is not None:
            loss = self.loss_hook(loss, batch)
        return loss

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        ok = torch.isfinite(loss.detach()).all().float()
        if self.world > 1:  # every rank must take the same branch
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def run_epoch(self, epoch: int, loader: DataLoader, bar) -> tuple[float, int]:
        cfg = self.cfg
        losses, seen = [], 0
        for batch in loader:
            if batch["skipped"]:
                self.record_skipped(batch["skipped"])
            if batch["image"] is None:
                continue
            self.set_lr()
            loss = self.loss_of(batch)
            if not self._finite_everywhere(loss):
                where = (f"non-finite loss at step {self.step + 1} (epoch {epoch + 1}) on cases "
                         f"{', '.join(map(str, batch['case_id']))}")
                if cfg.on_nan == "stop":
                    raise TrainingError(f"{where}; stopped, {self._kept()} (--on-nan skip skips such steps)")
                log.warning("%s: step skipped", where)
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            losses.append(loss.detach())
            seen += len(batch["case_id"])
            bar.update(1)
            if len(losses) % 10 == 1:
                # The running mean of the epoch: one step's loss jumps with its batch.
                bar.set_postfix(loss=f"{float(torch.stack(losses).mean()):.4f}")
        total = torch.stack(losses).sum().float() if losses else torch.zeros((), device=self.device)
        stats = torch.tensor([float(total), float(len(losses)), float(seen)], device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(stats)
        mean = float(stats[0] / stats[1]) if stats[1] > 0 else float("nan")
        return mean, int(stats[2])

    def fit(self) -> list[EpochResult]:
        cfg = self.cfg
        results = []
        loader = self.train_loader()
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self.sampler.set_epoch(epoch)
                self.model.train()
                bar = _progress(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                                quiet=cfg.quiet, enabled=self.is_main)
                t0 = time.perf_counter()
                train_loss, seen = self.run_epoch(epoch, loader, bar)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                val, per_class = None, None
                if self.val_set is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                    val, per_class = self.validate()
                res = EpochResult(epoch + 1, train_loss, val, per_class, self.opt.param_groups[0]["lr"],
                                  seconds, seen / max(seconds, 1e-9))
                bar.close()
                results.append(res)
                self.end_epoch(res)
        finally:
            if self._tb:
                self._tb.close()
        return results

    @torch.no_grad()
    def validate(self) -> tuple[float, list[float]]:
        """Mean Dice over validation cases at native resolution (per class, then averaged).

        A case is an image (2D) or a volume (its slices' overlaps are summed first), so a
        volume's Dice is the 3D Dice. Ranks score disjoint samples and pool the counts.
        """
        self.model.eval()
        if hasattr(self.val_set, "predict_case"):
            return self.validate_cases()
        indices = list(range(len(self.val_set)))[self.rank :: self.world]
        subset = torch.utils.data.Subset(self.val_set, indices)
        loader = DataLoader(subset, batch_size=self.cfg.batch_size, shuffle=False, num_workers=0,
                            collate_fn=collate_eval)
        counts: dict[str, np.ndarray] = {}
        for batch in loader:
            x = self._inputs(batch["image"])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                logits = self.model(x)
            for j, (idx, size, case) in enumerate(zip(batch["index"], batch["orig_size"], batch["case_id"])):
                pred = logits_to_labels(resize_logits(logits[j : j + 1].float(), size))[0]
                gt = self.native_mask(idx).to(pred.device, non_blocking=True)
                c = overlap_counts(pred, gt, self.model.num_classes)
                counts[case] = counts[case] + c if case in counts else c
        self.model.train()
        merged: dict[str, np.ndarray] = {}
        for part in _all_gather(counts):
            for case, c in part.items():
                merged[case] = merged[case] + c if case in merged else c
        if not merged:
            return float("nan"), []
        per_case = np.stack([dice_from_counts(c) for c in merged.values()])  # (cases, classes)
        per_class = per_case.mean(axis=0).tolist()
        return float(np.mean(per_class)), per_class

    def validate_cases(self) -> tuple[float, list[float]]:
        """Per-case 3D Dice of sliding-window predictions of a patch dataset's validation cases."""
        counts: dict[str, np.ndarray] = {}
        for ci in range(self.rank, len(self.val_set.cases), self.world):
            case = self.val_set.cases[ci].case_id
            for pred, gt in self.val_set.predict_case(self.model, ci, self.device, self.use_bf16,
                                                      self.cfg.tile_overlap, self.cfg.batch_size):
                c = overlap_counts(pred, gt, self.model.num_classes)
                counts[case] = counts[case] + c if case in counts else c
        self.model.train()
        merged: dict[str, np.ndarray] = {}
        for part in _all_gather(counts):
            merged.update(part)
        if not merged:
            return float("nan"), []
        per_class = np.stack([dice_from_counts(c) for c in merged.values()]).mean(axis=0).tolist()
        return float(np.mean(per_class)), per_class

    def native_mask(self, index: int) -> torch.Tensor:
        if index not in self._native_masks:
            mask = torch.from_numpy(np.ascontiguousarray(self.val_set.native_mask(index)))
            if len(self._native_masks) < 4096:  # bounded: volumes have many slices
                self._native_masks[index] = mask
            return mask
        return self._native_masks[index]

    # -- files --

    def end_epoch(self, res: EpochResult) -> None:
        """Write last, best (when improved), the log row and then the resume state.

        The resume state goes last: a run killed before it re-runs this epoch and rewrites
        the same files, so every order of interruption ends in the same run folder. ``last`` and
        the resume state (model and optimiser, the larger writes) are written when
        ``save_every`` seconds have passed since the previous write and after the final epoch;
        an interrupted run loses at most that much work and resumes to the same result.
        """
        score = res.val_dice if res.val_dice is not None else -res.train_loss
        improved = bool(score > self.best)
        if improved:
            self.best, self.best_epoch = score, res.epoch
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingError(f"non-finite weights after epoch {res.epoch}; nothing written, {self._kept()}")
        if self.is_main:
            meta = {"epoch": str(res.epoch), "val_dice": "" if res.val_dice is None else f"{res.val_dice:.6f}",
                    "pretrained": "true" if self.pretrained else "false"}
            due = res.epoch == self.cfg.epochs or time.monotonic() - self._last_save >= self.cfg.save_every
            if due:
                save_model(self.model, self.out / "last.safetensors", extra_metadata=meta)
            if improved:
                save_model(self.model, self.out / "best.safetensors", extra_metadata=meta)
            self.append_log(res)
            if due:
                save_resume_state(self.out / RESUME_FILE, self.model, self.opt, {
                    "epoch": res.epoch, "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
                    "world": self.world, "log": self._log_text,
                })
                self._last_save = time.monotonic()
            best = f"best {self.best:.4f} (epoch {self.best_epoch})" if res.val_dice is not None else ""
            val = f"val Dice {res.val_dice:.4f}  " if res.val_dice is not None else ""
            self.say(f"epoch {res.epoch}/{self.cfg.epochs}  loss {res.train_loss:.4f}  {val}{best}  "
                     f"{res.seconds:.1f} s, {res.images_per_s:.0f} img/s")

    def say(self, line: str) -> None:
        """Print a line of the run's story (rank 0) and append it to the run folder's train.log."""
        if not self.is_main:
            return
        _progress_write(line)
        path = self.out / TRAIN_LOG
        old = path.read_text() if path.exists() else ""
        atomic_write_text(path, old + line + "\n")

    def _kept(self) -> str:
        """What a stopped run leaves to use: its last good checkpoint, or nothing yet."""
        if (self.out / "last.safetensors").is_file() or (self.out / "best.safetensors").is_file():
            return f"the last good checkpoint in {self.out} is kept"
        return f"no checkpoint was written yet (none in {self.out})"

    def append_log(self, res: EpochResult) -> None:
        path = self.out / "log.csv"
        row = {
            "epoch": res.epoch, "step": self.step, "train_loss": f"{res.train_loss:.6f}",
            "val_dice": "" if res.val_dice is None else f"{res.val_dice:.6f}",
            "lr": f"{res.lr:.4e}", "seconds": f"{res.seconds:.2f}", "images_per_s": f"{res.images_per_s:.1f}",
        }
        if res.val_dice_per_class and len(res.val_dice_per_class) > 1:
            for c, d in enumerate(res.val_dice_per_class, start=1):
                row[f"val_dice_class{c}"] = f"{d:.6f}"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
        if not self._log_text:
            writer.writeheader()
        writer.writerow(row)
        self._log_text += buf.getvalue()
        atomic_write_text(path, self._log_text)
        self.tensorboard(res)

    def tensorboard(self, res: EpochResult) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # TensorBoard is optional
                self._tb = False
                return
            record_folder(self.out / "tensorboard")  # TensorBoard writes its own files there
            self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=res.epoch)
        if self._tb:
            self._tb.add_scalar("train/loss", res.train_loss, res.epoch)
            self._tb.add_scalar("train/lr", res.lr, res.epoch)
            self._tb.add_scalar("train/images_per_s", res.images_per_s, res.epoch)
            if res.val_dice is not None:
                self._tb.add_scalar("val/dice", res.val_dice, res.epoch)
            self._tb.flush()

    def record_skipped(self, messages: list[str]) -> None:
        for m in messages:
            if m not in self.skipped:
                self.skipped.append(m)
                log.warning("skipped: %s", m)
        if self.is_main:
            atomic_write_text(self.out / "skipped.txt", "".join(f"{m}\n" for m in self.skipped))

    def resume(self) -> None:
        """Continue from the run folder's last finished epoch."""
        if self.is_main:
            for p in remove_stale_temporaries(self.out, recursive=True):
                log.info("--resume: removed %s, left by an interrupted write", p)
        path = self.out / RESUME_FILE
        if not path.is_file():
            # Killed before the end of its first epoch: nothing finished to continue from.
            log.warning("--resume: %s holds no finished epoch; starting the run from the beginning", self.out)
            if self.is_main and (self.out / "log.csv").exists():
                (self.out / "log.csv").unlink()  # rows of epochs that no state records
            return
        meta = load_resume_state(path, self.model, self.opt)
        self.start_epoch = int(meta["epoch"])
        self.step = int(meta["step"])
        self.best = float(meta["best"])
        self.best_epoch = int(meta["best_epoch"])
        if int(meta.get("world", 1)) != self.world:
            # Another process count changes the steps per epoch; keep the schedule by epochs.
            self.step = self.start_epoch * self.steps_per_epoch
            log.warning("resuming a %s-process run with %d processes: the global batch changes, "
                        "results will differ from an uninterrupted run", meta.get("world", 1), self.world)
        if self.is_main:
            if "log" in meta:
                # The log as it stood when this state was saved: rows written after it (by a run
                # killed before its next state) are dropped, and none is ever repeated.
                self._log_text = meta["log"]
                atomic_write_text(self.out / "log.csv", self._log_text)
            else:  # a state written before the log travelled with it
                _trim_log(self.out / "log.csv", self.start_epoch)
                log_path = self.out / "log.csv"
                self._log_text = log_path.read_text() if log_path.is_file() else ""
        skipped = self.out / "skipped.txt"
        if skipped.is_file():
            self.skipped = [line for line in skipped.read_text().splitlines() if line]


def _trim_log(path: Path, last_epoch: int) -> None:
    """Drop log rows after ``last_epoch`` (written by a run killed before its resume state)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= last_epoch]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


def _progress(total: int, desc: str, quiet: bool, enabled: bool) -> Progress:
    # The epoch's own line (end_epoch) closes each epoch, so a plain-text bar writes no last line.
    return Progress(total, desc, "step", quiet=quiet, enabled=enabled, final_line=False, tenths=False)


def _progress_write(text: str) -> None:
    progress_write(text)


# --- what a run starts from, and what it tells the user -------------------------------------

TRAIN_LOG = "train.log"

NO_PRETRAINED_WARNING = (
    "warning: training without pretrained weights: the DINOv3 backbone starts from random values and must "
    "learn its features from this dataset alone, which gives far lower scores than the pretrained features "
    "SegDINO is built on (Kvasir-SEG test Dice about 0.75 instead of 0.88). Get a DINOv3 backbone file as "
    "docs/WEIGHTS.md explains and pass --backbone-weights FILE (or --init a trained model)."
)


def is_pretrained(cfg: TrainConfig) -> bool:
    """Whether the run starts from learnt weights: a DINOv3 backbone file, or a whole model (--init)."""
    return bool(cfg.backbone_weights or cfg.init)


def run_record(cfg: TrainConfig, model: SegDINO) -> dict[str, Any]:
    """Facts written beside the options in config.yaml: ``pretrained``, and the weights file's
    format and SHA-256 when a backbone file was loaded."""
    record: dict[str, Any] = {"pretrained": is_pretrained(cfg)}
    info = getattr(model.backbone, "weights_info", None)
    if info:
        record["backbone_weights_format"] = info["format"]
        record["backbone_weights_sha256"] = info["sha256"]
    return record


def resolve_runtime(cfg: TrainConfig, device: torch.device) -> None:
    """Make ``cfg`` say what will run on ``device``: torch.compile only where it works (CUDA with Triton)."""
    from .fast import compile_available

    cfg.compile = bool(cfg.compile and compile_available(device))


def run_files(out: Path) -> dict[str, str]:
    """Paths of a run folder's main files."""
    return {name: str(out / f) for name, f in (("best", "best.safetensors"), ("last", "last.safetensors"),
                                              ("config", "config.yaml"), ("log", "log.csv"),
                                              ("train_log", TRAIN_LOG))}


def _intensity_text(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "ct":
        name = f" ({spec['preset']})" if spec.get("preset") else ""
        return f"CT window {spec['low']:g}..{spec['high']:g} HU{name}"
    nz = ", non-zero voxels" if spec.get("nonzero") else ""
    return f"percentiles {spec['low']:g}..{spec['high']:g} per volume{nz}"


def describe_setup(cfg: TrainConfig, trainer: "Trainer", train_set: Dataset, val_set: Dataset | None,
                   record: dict[str, Any]) -> list[str]:
    """A few lines saying what the run resolved to, printed before its first step."""
    c = trainer.model.config
    task = "binary" if c.num_classes == 1 else f"{c.num_classes} classes with background"
    lines = [f"model: {c.backbone} backbone, decoder width {c.decoder_dim}, {task}, input {c.image_size[0]}x"
             f"{c.image_size[1]} px"]
    info = getattr(trainer.model.backbone, "weights_info", None)
    if info:
        lines.append(f"weights: {info['path']} ({info['format_description']}, sha256 {info['sha256']})")
    elif cfg.init:
        lines.append(f"weights: whole model {cfg.init} (--init)")
    else:
        lines.append("weights: none, the backbone starts from random values")
    lines.append(f"pretrained: {'true' if record['pretrained'] else 'false'}")
    vol = getattr(c, "volume", None)
    if vol:
        k = int(vol["context"])
        context = f"2.5D, slices i-{k}..i+{k} as {2 * k + 1} inputs" if k else "one slice per input"
        cases = len(getattr(train_set, "cases", []))
        lines.append(f"volumes: {_intensity_text(vol['intensity'])}, {vol['axis']} slices, {context}; "
                     f"{cases} training volume(s), {len(train_set)} slices")
    else:
        lines.append(f"data: {len(train_set)} training image(s)")
    lines[-1] += f", {len(val_set) if val_set is not None else 0} validation sample(s)"
    precision = "bf16 autocast" if trainer.use_bf16 else "fp32"
    procs = f" x {trainer.world} processes" if trainer.world > 1 else ""
    lines.append(f"device: {trainer.device}, {precision}, torch.compile {'on' if cfg.compile else 'off'}; "
                 f"batch {cfg.batch_size}{procs}, {trainer.steps_per_epoch} steps per epoch, {cfg.epochs} epochs")
    return lines


# --- model, data and run folder ---------------------------------------------------------------


def build_run_model(cfg: TrainConfig) -> SegDINO:
    """The model a run starts from: fresh (optionally with a pretrained backbone) or ``--init``."""
    if cfg.init:
        model = init_from(cfg)
    else:
        model = build_model(
            cfg.backbone, num_classes=cfg.num_classes, decoder_dim=cfg.decoder_dim,
            backbone_weights=cfg.backbone_weights, image_size=cfg.image_size,
            mask_threshold=cfg.mask_threshold, **_model_extras(cfg),
        )
    if cfg.freeze_backbone:
        model.freeze_backbone(True)
    return model


def _model_extras(cfg: TrainConfig) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if cfg.extra.get("volume"):
        extras["volume"] = cfg.extra["volume"]
    if cfg.extra.get("class_names"):
        extras["class_names"] = tuple(cfg.extra["class_names"])
    return extras


def init_from(cfg: TrainConfig) -> SegDINO:
    """A whole model to fine-tune (``--init``): ours or the authors'; a new head if classes differ."""
    src = load_model(cfg.init)
    c = src.config
    if cfg.extra.get("backbone_explicit") and cfg.backbone != c.backbone:
        raise ConfigError(f"--backbone {cfg.backbone} contradicts --init {cfg.init}, whose backbone is {c.backbone}")
    if cfg.extra.get("decoder_dim_explicit") and cfg.decoder_dim != c.decoder_dim:
        raise ConfigError(f"--decoder-dim {cfg.decoder_dim} contradicts --init {cfg.init}, "
                          f"whose decoder width is {c.decoder_dim}")
    cfg.backbone, cfg.decoder_dim = c.backbone, c.decoder_dim
    model = build_model(c.backbone, num_classes=cfg.num_classes, decoder_dim=c.decoder_dim, taps=c.taps,
                        norm=c.norm, image_size=cfg.image_size, mean=c.mean, std=c.std,
                        mask_threshold=cfg.mask_threshold, no_tpa=c.no_tpa, no_sad=c.no_sad,
                        **_model_extras(cfg))
    state = src.state_dict()
    if cfg.num_classes != c.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        log.info("--init: %s has %d output channel(s), the task needs %d: the head starts afresh",
                 cfg.init, c.num_classes, cfg.num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise CheckpointError(f"--init {cfg.init}: keys do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


def open_run_folder(cfg: TrainConfig, write: bool = True) -> tuple[Path, OutputFolder | None]:
    """Check the output folder and, on rank 0 (``write``), hold it: never mix two runs.

    The folder is locked for this process (:func:`segdino.outputs.open_output`: it must not
    overlap the data or the models it starts from, and may hold only files SegDINO wrote there);
    with ``--overwrite`` the files the previous run wrote are deleted, and nothing else.

    Returns:
        ``(folder, held)``: ``held`` is None unless ``write``; close it when the run ends.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    holds_run = out.is_dir() and any((out / m).exists() for m in RUN_MARKERS)
    if holds_run and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if cfg.resume and not holds_run:
        raise ConfigError(f"--resume: {out} holds no run to continue")
    if not write:
        return out, None
    held = open_output(out, inputs=[cfg.data, cfg.init, cfg.backbone_weights])
    try:
        if holds_run and cfg.overwrite:
            for p in held.remove_own_files():
                log.debug("--overwrite: removed %s", p)
    except BaseException:
        held.close()
        raise
    return out, held


def prepare_run_folder(cfg: TrainConfig, write: bool = True) -> Path:
    """:func:`open_run_folder` for callers that write into the folder without holding it."""
    out, held = open_run_folder(cfg, write)
    if held is not None:
        held.close()
    return out


def check_resumed_config(cfg: TrainConfig, out: Path) -> None:
    """A resumed run must train the same model on the same data; other options may change."""
    import yaml

    path = out / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--resume: cannot read {path} ({e})") from None
    for key in ("backbone", "decoder_dim", "num_classes", "image_size", "data", "seed", "batch_size", "recipe"):
        old, new = saved.get(key), cfg.to_dict().get(key)
        if key == "data" and isinstance(old, str) and isinstance(new, str) and _same_place(old, new):
            continue  # the same folder spelled otherwise (relative, absolute, trailing slash)
        if old is not None and old != new:
            raise ConfigError(f"--resume: {key} is {new!r} but the run in {out} used {old!r}")
    if int(saved.get("epochs", cfg.epochs)) != cfg.epochs:
        log.info("--resume: epochs changed from %s to %s", saved.get("epochs"), cfg.epochs)


def _same_place(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def recorded_split(out: Path, pairs: Sequence[Any]):
    """The split a run recorded (``out/splits.json``), checked against the cases now in the data.

    ``pairs`` are the dataset's :class:`~segdino.data.layouts.Pair` objects. Cases added to the
    data since are left out (and counted in ``unassigned``); a recorded case that is gone is a
    :class:`DataError` naming the file.
    """
    from .data.splits import read_splits_file

    return read_splits_file(out / "splits.json", list(pairs))


def _note_recorded(out: Path, splits) -> None:
    extra = len(getattr(splits, "unassigned", []) or [])
    log.info("--resume: training on the split recorded in %s%s", out / "splits.json",
             f" ({extra} case(s) added to the data since are left out)" if extra else "")


def is_volume_data(root: str | os.PathLike) -> bool:
    from .volumes import is_volume_dataset

    try:
        return bool(is_volume_dataset(root))
    except SegDINOError:
        return False


def build_datasets(cfg: TrainConfig, run: Path | None = None):
    """(train, val or None, foreground slice indices or None) of ``cfg.data`` by the split rules.

    With ``run``, the split that run recorded (``run/splits.json``) is used instead, so a resumed
    run goes on with the cases it started with whatever was added to the data since.
    """
    if not Path(cfg.data).is_dir():
        raise DataError(f"--data {cfg.data}: no such folder")
    if is_volume_data(cfg.data):
        return build_volume_datasets(cfg, run)
    from .data.dataset import SegmentationDataset
    from .data.layouts import find_pairs
    from .data.masks import require_foreground

    splits = None
    if run is not None and (run / "splits.json").is_file():
        splits = recorded_split(run, find_pairs(cfg.data))
        _note_recorded(run, splits)
    common = dict(num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed, fold=cfg.fold,
                  mask_threshold=cfg.mask_threshold, cache=cfg.cache_images)
    train = SegmentationDataset(cfg.data, split="train", splits=splits, **common)
    from .data.transforms import recipe_for_modality, single_channel_images

    if cfg.augment == "segdino":  # greyscale images (ultrasound): intensity augmentation, no colour jitter
        cfg.augment = recipe_for_modality(cfg.augment, single_channel_images(p.image for p in train.pairs))
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
    return train, (val if len(val) else None), None


def volume_settings_of(cfg: TrainConfig, labels: dict[int, str] | None, modality: str | None) -> dict[str, Any]:
    from .volumes import parse_intensity, percentile_window, volume_settings

    if cfg.intensity:
        intensity = parse_intensity(cfg.intensity)
    elif modality and modality.strip().upper() == "CT":
        raise ConfigError(f"{cfg.data}: a CT dataset needs --intensity (a window such as abdomen, liver, "
                          "lung, bone, or ct:LOW,HIGH in HU)")
    else:
        intensity = percentile_window()
    return volume_settings(intensity, cfg.slice_axis, cfg.context)


def build_volume_datasets(cfg: TrainConfig, run: Path | None = None):
    from .data.layouts import Pair
    from .volumes import VolumeSliceDataset, find_volume_cases

    if cfg.folds is not None:
        from .folds import ensure_folds
        from .volumes.layouts import scan_volume_cases

        scanned = scan_volume_cases(cfg.data, channel=cfg.channel)
        ensure_folds(cfg.data, [c.case_id for c in scanned.cases if c.subset == "train" and c.label is not None],
                     cfg.folds, cfg.seed)
    found = find_volume_cases(cfg.data, fold=cfg.fold, channel=cfg.channel, seed=cfg.seed)
    if run is not None and (run / "splits.json").is_file():
        labelled = [Pair(c.case_id, c.image, [], layout="volumes") for c in found.cases if c.label is not None]
        recorded = recorded_split(run, labelled)
        _note_recorded(run, recorded)
        found.splits = {k: list(recorded[k]) for k in ("train", "val", "test")}
    if found.issues:
        raise DataError(f"{cfg.data}: " + "; ".join(found.issues[:5]))
    if not found.is_3d:
        raise DataError(f"{cfg.data}: holds 2D images in an nnU-Net layout; "
                        "use the images/ + masks/ layout for 2D training")
    modality = (found.channel_names or [None])[found.channel or 0] if found.channel_names else None
    settings = volume_settings_of(cfg, found.labels, modality)
    cfg.extra["volume"] = settings
    if found.labels and not cfg.extra.get("num_classes_explicit"):
        cfg.num_classes = 1 if len(found.labels) <= 2 else len(found.labels)
    if found.labels and cfg.num_classes == len(found.labels):
        cfg.extra["class_names"] = [found.labels.get(i, str(i)) for i in range(cfg.num_classes)]
    from .data.transforms import recipe_for_modality
    from .volumes.planning import wants_patches

    cfg.augment = recipe_for_modality(cfg.augment, True)  # slices are not colours: no colour jitter
    if wants_patches(cfg):
        from .volumes.patches import patch_datasets

        return patch_datasets(cfg, found, settings)
    common = dict(axis=settings["axis"], context=settings["context"], intensity=settings["intensity"],
                  image_size=cfg.image_size, num_classes=cfg.num_classes, cache_size=cfg.volume_cache)
    train = VolumeSliceDataset(found.split_cases("train"), **common)
    train.splits = found.splits
    val_cases = found.split_cases("val") if "val" in found.splits else []
    val = VolumeSliceDataset(val_cases, **common) if val_cases else None
    foreground = None
    if cfg.foreground_ratio > 0:
        table = train.label_index()
        fg_labels = [v for v in table if v != 0]
        if fg_labels:
            rarest = min(fg_labels, key=lambda v: (len(table[v]), -v))
            foreground = table[rarest]
    return train, val, foreground


def make_transform(cfg: TrainConfig) -> Callable | None:
    from .data.transforms import build_transforms

    return build_transforms(cfg.augment)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train per ``cfg`` into ``cfg.out``; returns the best epoch, its score and the run folder."""
    if not cfg.data or not cfg.out:
        raise ConfigError("training needs --data DIR and --out RUN_DIR")
    device = resolve_device(cfg.device)
    rank, world, _ = init_distributed(device.type)
    held = None
    try:
        out, held = open_run_folder(cfg, write=rank == 0)
        if cfg.resume:
            check_resumed_config(cfg, out)
        train_set, val_set, foreground = build_datasets(cfg, run=out if cfg.resume else None)
        if len(train_set) == 0:
            raise DataError(f"{cfg.data}: the training split is empty")
        cfg.match_loss_to_classes()
        resolve_runtime(cfg, device)
        if rank == 0 and not is_pretrained(cfg):
            # Said once the data is known to be usable, so that a user's mistake stays a one-line error.
            log.warning("%s", NO_PRETRAINED_WARNING)
        if world > 1:
            torch.distributed.barrier()
        trainer = Trainer(cfg, train_set, val_set, make_transform(cfg), out=out, foreground=foreground)
        record = run_record(cfg, trainer.model)
        trainer.pretrained = record["pretrained"]
        if cfg.resume:
            trainer.resume()
        elif rank == 0:
            atomic_write_text(out / "config.yaml", dump_yaml(cfg, record))
            plan = getattr(train_set, "plan", None)
            if plan is not None:
                atomic_write_text(out / "plan.json", json.dumps(plan.to_dict(), indent=1) + "\n")
            splits = getattr(train_set, "splits", None)
            if splits is not None:
                atomic_write_text(out / "splits.json", json.dumps({k: list(v) for k, v in splits.items()},
                                                                  indent=1, sort_keys=True))
        for line in describe_setup(cfg, trainer, train_set, val_set, record):
            trainer.say(line)
        trainer.fit()
        return {"best_epoch": trainer.best_epoch, "best_score": trainer.best,
                "has_validation": val_set is not None, "out": str(out), "pretrained": record["pretrained"],
                **run_files(out)}
    finally:
        if held is not None:
            held.close()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch_local(n: int, argv: Sequence[str]) -> int:
    """Start ``n`` training processes on this machine through torchrun; returns their exit code."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "segdino", "train", *argv]
    env = dict(os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    return subprocess.call(cmd, env=env)
