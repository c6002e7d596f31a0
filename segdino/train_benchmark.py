"""Training speed (``segdino benchmark --train``): the step alone, and whole epochs through the DataLoader.

In one process, on the same initial weights (the seed's random ones):

- the training step alone (forward, loss, backward, AdamW step, through :class:`~segdino.training.Trainer`'s
  own ``train_step``) on one fixed batch already on the device, for three paths: eager fp32 at batch 4
  (the authors' recipe), the plain model (bf16 autocast, channels-last, ``torch.compile`` where it runs)
  and the fast path (the same on the fused decoder, :func:`segdino.fused.fuse_model`);
- with a dataset, whole epochs of a real run (the ``segdino`` recipe's augmentation, the run's DataLoader,
  no validation) on the path a run resolves to: images/s over epochs 2..N, the first epoch (warm-up and
  compilation) reported on its own, and the DataLoader alone.

Steps are timed in chunks of ``steps`` calls with one wait for the device per chunk, as a run waits only
when it reads its losses. The report has the shape of :class:`segdino.benchmark.BenchmarkReport`; each row
is a path with its images/s. Nothing here is a test of speed: it reports what it measured.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .benchmark import BenchmarkReport, PathResult, count_gflops
from .errors import ConfigError
from .timing import cpu_model_name, time_fn
from .train_config import TrainConfig, resolve_config
from .training import Trainer, build_datasets, make_transform
from .training.model_init import resolve_runtime

STEP_PATHS = ("eager", "plain", "fast")
EAGER_BATCH = 4  # the authors' recipe


class _Placeholder(Dataset):
    """``n`` samples that are never read: the step benchmark feeds one fixed batch itself."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise IndexError("the step benchmark feeds its own batch")


def step_config(path: str, backbone: str, image_size: tuple[int, int], decoder_dim: int, batch: int,
                device: torch.device, compile_: bool, seed: int = 0) -> TrainConfig:
    """The configuration of one step path (``eager``, ``plain`` or ``fast``), resolved for ``device``."""
    if path not in STEP_PATHS:
        raise ConfigError(f"unknown training path {path!r}; expected one of {', '.join(STEP_PATHS)}")
    common = dict(backbone=backbone, image_size=tuple(image_size), decoder_dim=decoder_dim, device=str(device),
                  quiet=True, seed=seed, num_workers=0)
    if path == "eager":
        cfg = resolve_config(dict(common, recipe="paper", batch_size=EAGER_BATCH, fused_decoder=False))
    else:
        cfg = resolve_config(dict(common, recipe="segdino", batch_size=batch, compile=compile_,
                                  fused_decoder=path == "fast"))
    fused = cfg.fused_decoder
    resolve_runtime(cfg, device)
    cfg.fused_decoder = fused  # the fast path is measured on the fused decoder even where nothing compiles
    return cfg


def path_name(trainer: Trainer) -> str:
    """What a trainer's step runs, in words (``plain model, bf16, channels-last, compiled``)."""
    cfg = trainer.cfg
    parts = ["fused decoder" if cfg.fused_decoder else "plain model", "bf16" if trainer.use_bf16 else "fp32"]
    if trainer.channels_last:
        parts.append("channels-last")
    parts.append("compiled" if cfg.compile else "eager")
    return ", ".join(parts)


def _fixed_batch(cfg: TrainConfig, device: torch.device, seed: int) -> dict[str, Any]:
    b, (h, w) = cfg.batch_size, cfg.image_size
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, h, w, generator=g).to(device),
            "mask": (torch.rand(b, h, w, generator=g) > 0.7).long().to(device),
            "case_id": [f"random{i}" for i in range(b)], "skipped": []}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(cfg: TrainConfig, device: torch.device, out: Path, warmup: int, steps: int, repeats: int,
                 seed: int = 0) -> tuple[PathResult, dict[str, Any]]:
    """Images/s of ``cfg``'s training step on one fixed random batch.

    ``warmup`` untimed steps (compilation happens in the first), then ``repeats`` chunks of ``steps``
    steps, each chunk timed with one wait for the device. Returns the row and facts for the notes
    (``warmup_s``, ``last_loss``, the trainer's ``model``).
    """
    trainer = Trainer(cfg, _Placeholder(cfg.batch_size), None, None, out=out)
    batch = _fixed_batch(cfg, device, seed)
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        trainer.train_step(batch, 0)
    _sync(device)
    warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last: list[torch.Tensor] = []

    def chunk() -> None:
        for _ in range(steps):
            last[:] = [trainer.train_step(batch, 0)]

    times = time_fn(chunk, device, 0, repeats)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    per_step = statistics.median(times) / steps
    name = f"train step: {path_name(trainer)}" + (" (the authors' recipe)" if cfg.recipe == "paper" else "")
    row = PathResult(name, cfg.batch_size, per_step * 1000, cfg.batch_size / per_step, mem,
                     precision="bf16" if trainer.use_bf16 else "fp32", runs=repeats * steps,
                     min_ms=min(times) / steps * 1000)
    facts = {"warmup_s": warm, "last_loss": float(last[0]), "model": trainer.model}
    del trainer, batch, last
    return row, facts


def measure_epochs(data: str | os.PathLike, backbone: str, image_size: tuple[int, int], decoder_dim: int,
                   batch: int, epochs: int, device: torch.device, compile_: bool, out: Path,
                   num_workers: int | None = None, seed: int = 0) -> tuple[list[PathResult], list[str]]:
    """Rows for whole epochs of a run on ``data`` (no validation) and for its DataLoader alone."""
    if epochs < 2:
        raise ConfigError(f"--epochs must be at least 2 (epoch 1 is warm-up), got {epochs}")
    opts = dict(data=str(data), out=str(out), backbone=backbone, image_size=tuple(image_size),
                decoder_dim=decoder_dim, batch_size=batch, epochs=epochs, device=str(device), quiet=True,
                compile=compile_, seed=seed, save_every=1e9, num_workers=num_workers)
    cfg = resolve_config({k: v for k, v in opts.items() if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    found = build_datasets(cfg)
    found.configure(cfg)
    resolve_runtime(cfg, device)
    trainer = Trainer(cfg, found.train, None, make_transform(cfg), out=out, foreground=found.foreground)
    name = path_name(trainer)
    results = trainer.fit()
    first, later = results[0], results[1:]
    seconds = [r.seconds for r in later]
    images = sum(r.images_per_s * r.seconds for r in later)
    rows = [
        PathResult(f"epoch 1 through the DataLoader (warm-up{', compilation' if cfg.compile else ''}): {name}",
                   batch, first.seconds * 1000, first.images_per_s, None, precision="bf16" if trainer.use_bf16 else "fp32",
                   runs=1, min_ms=first.seconds * 1000),
        PathResult(f"epochs 2-{epochs} through the DataLoader: {name}", batch, statistics.median(seconds) * 1000,
                   images / sum(seconds), None, precision="bf16" if trainer.use_bf16 else "fp32", runs=len(later),
                   min_ms=min(seconds) * 1000),
        _loader_row(trainer, epochs),
    ]
    notes = [f"epochs: {len(found.train)} training samples of {data}, batch {batch}, {cfg.num_workers} DataLoader "
             f"workers, augmentation {cfg.augment}, no validation; epoch times from the run's own log "
             f"(the step loop, waiting for the device at its end); first step {trainer.first_step_seconds:.1f} s"]
    del trainer
    return rows, notes


def _loader_row(trainer: Trainer, epochs: int) -> PathResult:
    """The DataLoader alone (decoding or cache, augmentation, collation): its second pass, timed."""
    loader = trainer.train_loader()
    seconds, count = 0.0, 0
    for e in (epochs, epochs + 1):  # the first pass starts the workers
        trainer.sampler.set_epoch(e)
        t0, count = time.perf_counter(), 0
        for b in loader:
            count += len(b["case_id"])
        seconds = time.perf_counter() - t0
    return PathResult("DataLoader alone (one pass, no model)", trainer.cfg.batch_size, seconds * 1000,
                      count / max(seconds, 1e-9), None, precision="-", runs=1, min_ms=seconds * 1000)


def run_train_benchmark(backbone: str = "vits16", image_size: tuple[int, int] = (256, 256), batch: int = 32,
                        device: str | torch.device = "cuda", decoder_dim: int = 256, warmup: int = 5,
                        steps: int = 10, repeats: int = 5, compile_: bool = True,
                        data: str | os.PathLike | None = None, epochs: int = 5, num_workers: int | None = None,
                        seed: int = 0) -> BenchmarkReport:
    """Time the training paths; see the module docstring.

    Args:
        batch: the batch of the plain and fast step paths and of the epochs (eager fp32 runs at 4).
        warmup: untimed steps per path before timing (the first compiles).
        steps, repeats: each path is timed as ``repeats`` chunks of ``steps`` steps.
        compile_: torch.compile the plain and fast paths (where it runs: CUDA with Triton).
        data: a dataset folder: also time ``epochs`` whole epochs through the DataLoader.

    Returns:
        a :class:`~segdino.benchmark.BenchmarkReport` (``to_json()``, ``table()``).
    """
    device = torch.device(device)
    for name, v in (("steps", steps), ("repeats", repeats), ("batch", batch)):
        if v < 1:
            raise ConfigError(f"--{name} must be at least 1, got {v}")
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report: BenchmarkReport | None = None
    rows: dict[str, PathResult] = {}
    with tempfile.TemporaryDirectory(prefix="segdino-train-bench-") as tmp:
        for path in STEP_PATHS:
            cfg = step_config(path, backbone, image_size, decoder_dim, batch, device, compile_, seed)
            row, facts = measure_step(cfg, device, Path(tmp) / path, warmup, steps, repeats, seed)
            if report is None:
                report = _report(facts["model"], device, image_size)
            if not math.isfinite(facts["last_loss"]):
                report.notes.append(f"{row.name}: the loss became non-finite while timing")
            report.notes.append(f"{row.name}: {max(1, warmup)} warm-up step(s) took {facts['warmup_s']:.1f} s")
            rows[path] = row
            report.results.append(row)
            del facts
            _release(device)
        eager = rows["eager"]
        for path in ("plain", "fast"):
            rows[path].ratio_vs_eager = rows[path].images_per_s / eager.images_per_s
            report.ratios[f"{rows[path].name} vs {eager.name} (images/s)"] = rows[path].ratio_vs_eager
        eager.ratio_vs_eager = 1.0
        report.ratios[f"{rows['fast'].name} vs {rows['plain'].name} (images/s)"] = \
            rows["fast"].images_per_s / rows["plain"].images_per_s
        if data is not None:
            epoch_rows, notes = measure_epochs(data, backbone, image_size, decoder_dim, batch, epochs, device,
                                               compile_, Path(tmp) / "epochs", num_workers, seed)
            for r in epoch_rows[:2]:
                r.ratio_vs_eager = r.images_per_s / eager.images_per_s
            report.results += epoch_rows
            report.notes += notes
            _release(device)
    report.timing = (f"training steps: median of {repeats} chunks of {steps} steps on one fixed random batch on the "
                     f"device, after {max(1, warmup)} warm-up steps, one wait for the device per chunk"
                     + (" (CUDA events)" if device.type == "cuda" else " (wall clock)")
                     + "; epochs: wall clock of each epoch's steps"
                     + "; ratios: images/s against the eager fp32 batch-4 step")
    report.notes.insert(0, "every path: the same initial weights (random, seeded), the recipe's loss, AdamW "
                           "(fused on CUDA); eager fp32 batch 4 is the authors' recipe (segdino train --recipe "
                           "paper); the others the segdino recipe, the fast one on the fused decoder "
                           "(segdino.fused: folded TPA, matrix-product resizes, cached RoPE)")
    if device.type == "cpu" and load_before is not None:
        report.load_average = {"before": load_before, "after": list(os.getloadavg())}
    return report


def _report(model, device: torch.device, image_size) -> BenchmarkReport:
    counts = model.count_parameters()
    cfg = model.config
    probe = torch.randn(1, 3, *cfg.image_size, device=device)
    was_training = model.training
    model.eval()
    gflops = count_gflops(model, probe)
    model.train(was_training)
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({cpu_model_name()}, {torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    report = BenchmarkReport(device=dev_name, torch=torch.__version__, backbone=cfg.backbone,
                             image_size=list(cfg.image_size), decoder_dim=cfg.decoder_dim,
                             params_total=counts["total"], params_decoder=counts["decoder"],
                             gflops_per_image=gflops, weights="random")
    if device.type == "cpu":
        report.threads, report.cpu = torch.get_num_threads(), cpu_model_name()
    report.notes.append("GFLOP/image: one forward pass (a training step costs about three)")
    return report


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = ["STEP_PATHS", "measure_epochs", "measure_step", "path_name", "run_train_benchmark", "step_config"]
