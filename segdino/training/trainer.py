"""The training loop: a :class:`Trainer` whose steps are methods a variant overrides.

One epoch is :meth:`Trainer.run_epoch` over :meth:`Trainer.train_step` (forward, NaN policy,
backward, optimiser step), then :meth:`Trainer.validate` when due and :meth:`Trainer.end_epoch`
(checkpoints, log row). The step never waits for the device: losses stay on it and are read every
:attr:`Trainer.loss_every` steps, where a non-finite one stops the run or is reported as skipped.
With ``cfg.fused_decoder`` the step runs the model rebuilt on the fused decoder
(:func:`segdino.fused.fuse_model`), which holds the model's own parameters
(:func:`share_parameters`): the optimiser, validation and checkpoints see the plain model. The parts it drives own their state: :class:`~.checkpoints.Checkpoints`
the weights and resume state, :class:`~.run_log.RunLog` the log files, :class:`~.sampling.EpochSampler`
the sample order, :mod:`.distributed` the collectives. Only rank 0 writes files.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import SegDINOError
from ..fileio import remove_stale_temporaries
from ..inference import normalize, resolve_device
from ..losses import segmentation_loss
from ..model import SegDINO
from ..train_config import TrainConfig
from . import validation
from .checkpoints import Checkpoints
from .distributed import dist_info, sum_over_ranks
from .model_init import build_run_model, is_pretrained
from .optim import lr_factor, make_optimizer
from .run_log import EpochResult, RunLog, epoch_progress
from .sampling import EpochSampler, RunSampler, TrainView, train_loader

log = logging.getLogger("segdino.train")


class TrainingError(SegDINOError):
    """Training cannot go on (a non-finite loss or weights)."""


def share_parameters(target: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    """Make ``target`` hold ``source``'s parameter and buffer objects under the same names, in place.

    For a module rebuilt from a copy of ``source`` (:func:`segdino.fused.fuse_model`): training
    ``target`` then trains ``source``, whose state dict stays the checkpoint format. Buffers with no
    counterpart of the same name and shape (a cache of the rebuilt module) stay its own.

    Raises:
        ValueError: a parameter of ``target`` has no parameter of the same name and shape in ``source``.
    """
    params, buffers = dict(source.named_parameters()), dict(source.named_buffers())
    missing = set(params) - {name for name, _ in target.named_parameters()}
    if missing:
        raise ValueError(f"the target module lacks parameter(s) {', '.join(sorted(missing)[:5])} of the source")
    for prefix, module in target.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            src = params.get(dot + name)
            if src is None or src.shape != p.shape:
                raise ValueError(f"parameter {dot + name} {tuple(p.shape)} has no counterpart in the source module")
            module._parameters[name] = src
        for name, b in list(module._buffers.items()):
            src = buffers.get(dot + name)
            if b is not None and src is not None and src.shape == b.shape:
                module._buffers[name] = src
    return target


class _Pending:
    """Steps whose losses are still on the device: (step number, case ids, samples, loss)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, list, int, torch.Tensor]] = []

    def add(self, step: int, cases: list, loss: torch.Tensor) -> None:
        self.steps.append((step, list(cases), len(cases), loss))

    def __len__(self) -> int:
        return len(self.steps)


class Trainer:
    """Trains a SegDINO model and writes the run folder (rank 0 only).

    ``loss_every``: steps between reads of the losses on the host (each read waits for the device).

    Args:
        cfg: the resolved configuration (with what the data decided already in it).
        train_set, val_set: the datasets (``val_set`` None: the best epoch is the lowest loss).
        transform: the training augmentation, called as ``transform(image, mask, generator=g)``.
        model: the model to train (default: :func:`~.model_init.build_run_model` of ``cfg``).
        out: the run folder (default ``cfg.out``).
        foreground: indices of samples the sampler draws ``cfg.foreground_ratio`` of each batch from.
    """

    loss_every = 20

    def __init__(self, cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None,
                 transform: Callable | None, model: SegDINO | None = None, out: Path | None = None,
                 foreground: np.ndarray | None = None):
        self.cfg = cfg
        self.out = Path(out or cfg.out)
        self.rank, self.world = dist_info()
        self.device = self._device()
        self.train_set, self.val_set = train_set, val_set
        self.transform = transform
        torch.manual_seed(cfg.seed)
        self.model = model if model is not None else build_run_model(cfg)
        self._place_model()
        self.train_module = self._training_module()
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
        self.forward: Callable = self._wrapped_forward()
        self.checkpoints = Checkpoints(self.out, cfg.save_every)
        self.run_log = RunLog(self.out, enabled=self.is_main)
        self._native_masks: dict[int, torch.Tensor] = {}
        self.loss_hook: Callable[[torch.Tensor, dict], torch.Tensor] | None = None  # tests inject faults here
        self.first_step_seconds: float | None = None  # the first step of this process (compilation included)
        self.pretrained = is_pretrained(cfg)

    def _device(self) -> torch.device:
        device = resolve_device(self.cfg.device)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def _place_model(self) -> None:
        self.model.to(self.device)
        self.channels_last = self.cfg.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _training_module(self) -> torch.nn.Module:
        """The module the step runs: the model, or (``cfg.fused_decoder``) the model on the fused
        decoder, holding the model's own parameters, with its RoPE table computed for the input size."""
        if not self.cfg.fused_decoder:
            return self.model
        from ..fused import TRAINING, fuse_model, prime_rope

        # TRAINING: the options the fused training step was measured with (docs/RESULTS.md, Speed).
        fused = share_parameters(fuse_model(self.model, **TRAINING), self.model).to(self.device)
        if self.channels_last:
            fused.to(memory_format=torch.channels_last)
        # The device as parameters report it (cuda:0, not cuda), the key the table is kept under.
        device = next(self.model.parameters()).device
        prime_rope(fused, tuple(self.model.config.image_size), device)
        return fused

    def _wrapped_forward(self) -> Callable:
        """The training forward: the training module, under DDP with several processes, compiled on request."""
        forward: Callable = self.train_module
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = torch.nn.parallel.DistributedDataParallel(self.train_module, device_ids=ids)
        if self.cfg.compile:
            from ..fast import compile_available, train_compile_options

            if compile_available(self.device):
                forward = torch.compile(forward, **train_compile_options(self.world))
        return forward

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def skipped(self) -> list[str]:
        """The notes of the samples skipped so far (``--on-bad-data skip``)."""
        return self.run_log.skipped

    # -- the loop --

    def train_loader(self, start: int | None = None, end: int | None = None) -> DataLoader:
        """The training DataLoader: the sampler's current epoch, or with ``start`` and ``end`` the
        epochs ``start`` to ``end - 1`` through one iterator (:class:`~segdino.training.sampling.RunSampler`)."""
        view = TrainView(self.train_set, self.transform, self.cfg.seed, skip_bad=self.cfg.on_bad_data == "skip")
        sampler = self.sampler if start is None else RunSampler(self.sampler, start, end)
        return train_loader(view, sampler, self.cfg.batch_size, self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda")

    def set_lr(self) -> float:
        f = lr_factor(self.step, self.total_steps, self.warmup_steps, self.cfg.schedule)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.opt.param_groups[0]["lr"]

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device, non_blocking=True).float(), self.model.config)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss_of(self, batch: dict[str, Any]) -> torch.Tensor:
        """The training loss of one batch: ``image`` (B, C, H, W) and ``mask`` (B, H, W)."""
        x = self._inputs(batch["image"])
        masks = batch["mask"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.forward(x)
        loss = segmentation_loss(logits.float(), masks, self.cfg.loss, batch_dice=self.cfg.dice == "batch")
        if self.loss_hook is not None:
            loss = self.loss_hook(loss, batch)
        return loss

    def train_step(self, batch: dict[str, Any], epoch: int) -> torch.Tensor:
        """One optimiser step on ``batch``; returns its loss, a tensor on the device, unread.

        Nothing here waits for the device. With ``--on-nan skip``, a step whose loss is not finite
        on some rank leaves the weights and the optimiser's state as they were on every rank (on
        the device with a fused optimiser; otherwise by reading the flag). :meth:`run_epoch`
        reads the losses and applies the policy (stop, naming the step and its cases).
        """
        self.set_lr()
        loss = self.loss_of(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.cfg.on_nan == "skip":
            self._step_if_finite(loss.detach())
        else:
            self.opt.step()
        self.step += 1
        return loss.detach()

    def _step_if_finite(self, loss: torch.Tensor) -> None:
        bad = sum_over_ranks((~torch.isfinite(loss)).float().reshape(()), self.world).clamp_(max=1.0)
        if self.opt.defaults.get("fused"):
            # A fused optimiser skips its update where found_inf is 1, on the device (the protocol
            # torch.amp.GradScaler speaks with fused optimisers).
            self.opt.found_inf = bad
            try:
                self.opt.step()
            finally:
                del self.opt.found_inf
        elif not bool(bad):
            self.opt.step()

    def run_epoch(self, epoch: int, loader: Iterable, bar) -> tuple[float, int]:
        """Train one epoch; (mean loss over every rank's steps, samples seen by all ranks).

        Losses are read every :attr:`loss_every` steps and at the end (one wait for the device
        each); a non-finite one then stops training (``--on-nan stop``, naming its step and cases)
        or is left out of the mean and reported (``--on-nan skip``, whose step changed nothing).
        """
        pending, tally = _Pending(), {"sum": torch.zeros((), device=self.device), "steps": 0, "seen": 0}
        for batch in loader:
            if batch["skipped"]:
                self.run_log.record_skipped(batch["skipped"])
            if batch["image"] is None:
                continue
            t0 = time.perf_counter() if self.first_step_seconds is None else None
            loss = self.train_step(batch, epoch)
            if t0 is not None:
                self._sync()
                self.first_step_seconds = time.perf_counter() - t0
            pending.add(self.step, batch["case_id"], loss)
            bar.update(1)
            if len(pending) >= self.loss_every:
                self._read_losses(pending, tally, epoch)
                # The running mean of the epoch: one step's loss jumps with its batch.
                bar.set_postfix(loss=f"{tally['mean']:.4f}")
        self._read_losses(pending, tally, epoch)
        stats = torch.stack([tally["sum"].float(), torch.tensor(float(tally["steps"]), device=self.device),
                             torch.tensor(float(tally["seen"]), device=self.device)])
        sum_over_ranks(stats, self.world)
        total, steps, seen = self._host(stats)
        return (total / steps if steps > 0 else float("nan")), int(seen)

    def _read_losses(self, pending: _Pending, tally: dict, epoch: int) -> None:
        """Add the pending steps' losses to ``tally`` (one wait for the device) and apply the NaN policy."""
        if not len(pending):
            return
        losses = torch.stack([loss.float().reshape(()) for *_, loss in pending.steps])
        finite = torch.isfinite(losses)
        tally["sum"] = tally["sum"] + torch.where(finite, losses, torch.zeros_like(losses)).sum()
        # Pooled over ranks, so that every rank stops or skips alike.
        bad = sum_over_ranks((~finite).float(), self.world)
        values = self._host(torch.cat([bad, tally["sum"].float().reshape(1)]))
        flags, total = values[:-1], values[-1]
        for (step, cases, n, _), b in zip(pending.steps, flags):
            if b:
                where = f"non-finite loss at step {step} (epoch {epoch + 1}) on cases {', '.join(map(str, cases))}"
                if self.cfg.on_nan == "stop":
                    pending.steps.clear()
                    raise TrainingError(f"{where}; stopped, {self.checkpoints.kept()} "
                                        "(--on-nan skip skips such steps)")
                log.warning("%s: step skipped", where)
            else:
                tally["steps"] += 1
                tally["seen"] += n
        tally["mean"] = total / max(1, tally["steps"])
        pending.steps.clear()

    def _host(self, t: torch.Tensor) -> list[float]:
        """``t``'s values on the host: the one place the epoch waits for the device."""
        return t.detach().cpu().tolist()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def validation_due(self, epoch: int) -> bool:
        """Whether epoch index ``epoch`` (from 0) ends with a validation."""
        done = epoch + 1
        return self.val_set is not None and (done % self.cfg.val_every == 0 or done == self.cfg.epochs)

    def fit(self) -> list[EpochResult]:
        """Train from ``start_epoch`` to the last epoch; one :class:`EpochResult` per epoch run."""
        cfg = self.cfg
        results = []
        batches = iter(self.train_loader(self.start_epoch, cfg.epochs))  # one iterator for all epochs
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self.sampler.set_epoch(epoch)
                self.model.train()
                self.train_module.train()
                bar = epoch_progress(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                                     quiet=cfg.quiet, enabled=self.is_main)
                t0 = time.perf_counter()
                train_loss, seen = self.run_epoch(epoch, itertools.islice(batches, self.steps_per_epoch), bar)
                self._sync()
                seconds = time.perf_counter() - t0
                self.check_weights(epoch + 1)  # before validation, which refuses non-finite outputs
                val, per_class = self.validate() if self.validation_due(epoch) else (None, None)
                res = EpochResult(epoch + 1, train_loss, val, per_class, self.opt.param_groups[0]["lr"],
                                  seconds, seen / max(seconds, 1e-9))
                bar.close()
                results.append(res)
                self.end_epoch(res)
        finally:
            self.run_log.close()
        return results

    @torch.no_grad()
    def validate(self) -> tuple[float, list[float]]:
        """Mean Dice over validation cases at native resolution (per class, then averaged).

        A case is an image (2D) or a volume (its slices' overlaps are summed first), so a
        volume's Dice is the 3D Dice. Ranks score disjoint samples and pool the counts.
        """
        self.model.eval()
        try:
            if hasattr(self.val_set, "predict_case"):
                counts = validation.case_counts(self.model, self.val_set, self.device, self.use_bf16,
                                                self.cfg.tile_overlap, self.cfg.batch_size, self.rank, self.world)
            else:
                counts = validation.image_counts(self.model, self.val_set, self.native_mask, self.device,
                                                 self.use_bf16, self.cfg.batch_size, self.rank, self.world,
                                                 channels_last=self.channels_last)
        finally:
            self.model.train()
        return validation.pooled_dice(counts)

    def native_mask(self, index: int) -> torch.Tensor:
        """Validation sample ``index``'s ground truth (H, W) at its own resolution (kept for reuse)."""
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
        self.check_weights(res.epoch)
        if not self.is_main:
            return
        meta = {"epoch": str(res.epoch), "val_dice": "" if res.val_dice is None else f"{res.val_dice:.6f}",
                "pretrained": "true" if self.pretrained else "false"}
        due = self.checkpoints.due(final=res.epoch == self.cfg.epochs)
        self.checkpoints.save_weights(self.model, meta, last=due, best=improved)
        self.run_log.append(res, self.step)
        if due:
            self.checkpoints.save_state(self.model, self.opt, {
                "epoch": res.epoch, "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
                "world": self.world, "log": self.run_log.text,
            })
        best = f"best {self.best:.4f} (epoch {self.best_epoch})" if res.val_dice is not None else ""
        val = f"val Dice {res.val_dice:.4f}  " if res.val_dice is not None else ""
        first = ""
        if res.epoch == self.start_epoch + 1 and self.first_step_seconds is not None:
            first = f" (first step {self.first_step_seconds:.1f} s: warm-up{', compilation' if self.cfg.compile else ''})"
        self.say(f"epoch {res.epoch}/{self.cfg.epochs}  loss {res.train_loss:.4f}  {val}{best}  "
                 f"{res.seconds:.1f} s, {res.images_per_s:.0f} img/s{first}")

    def check_weights(self, epoch: int) -> None:
        """Stop (:class:`TrainingError`) if a weight is NaN or infinite after ``epoch`` (from 1)."""
        finite = [torch.isfinite(p).all() for p in self.model.parameters()]
        if finite and not bool(torch.stack(finite).all()):  # one wait for the device
            raise TrainingError(f"non-finite weights after epoch {epoch}; nothing written, {self.checkpoints.kept()}")

    def say(self, line: str) -> None:
        """Print a line of the run's story (rank 0) and append it to the run folder's train.log."""
        self.run_log.say(line)

    def resume(self) -> None:
        """Continue from the run folder's last finished epoch."""
        if self.is_main:
            for p in remove_stale_temporaries(self.out, recursive=True):
                log.info("--resume: removed %s, left by an interrupted write", p)
        meta = self.checkpoints.load_state(self.model, self.opt)
        if meta is None:
            # Killed before the end of its first epoch: nothing finished to continue from.
            log.warning("--resume: %s holds no finished epoch; starting the run from the beginning", self.out)
            self.run_log.restart()
            return
        self.start_epoch = int(meta["epoch"])
        self.step = int(meta["step"])
        self.best = float(meta["best"])
        self.best_epoch = int(meta["best_epoch"])
        if int(meta.get("world", 1)) != self.world:
            # Another process count changes the steps per epoch; keep the schedule by epochs.
            self.step = self.start_epoch * self.steps_per_epoch
            log.warning("resuming a %s-process run with %d processes: the global batch changes, "
                        "results will differ from an uninterrupted run", meta.get("world", 1), self.world)
        self.run_log.restore(meta, self.start_epoch)


__all__ = ["EpochResult", "Trainer", "TrainingError"]
