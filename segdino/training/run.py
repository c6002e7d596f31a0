"""A training run from start to end: hold the run folder, build the data, put what it decided
into the configuration (once, here), record the run's files and train.

docs/FORMATS.md describes the run folder; :mod:`segdino.run_files` names its files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .. import run_files
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from ..inference import resolve_device
from ..outputs import OutputFolder, open_output
from ..train_config import TrainConfig, dump_yaml
from .datasets import TrainingData, build_datasets, make_transform
from .distributed import barrier, init_distributed, shutdown_distributed
from .model_init import NO_PRETRAINED_WARNING, is_pretrained, resolve_runtime, run_record
from .trainer import Trainer

log = logging.getLogger("segdino.train")

# The resume check: a resumed run must train the same model on the same data.
RESUME_KEYS = ("backbone", "decoder_dim", "num_classes", "image_size", "data", "seed", "batch_size", "recipe",
               "taps", "no_tpa", "no_sad", "sad_blocks")  # the decoder switches change the model, not its weights' names


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
    holds_run = out.is_dir() and any((out / m).exists() for m in run_files.RUN_MARKERS)
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

    path = out / run_files.CONFIG
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--resume: cannot read {path} ({e})") from None
    for key in RESUME_KEYS:
        old, new = saved.get(key), cfg.to_dict().get(key)
        if key == "data" and isinstance(old, str) and isinstance(new, str) and _same_place(old, new):
            continue  # the same folder spelled otherwise (relative, absolute, trailing slash)
        if old is not None and old != new:
            raise ConfigError(f"--resume: {key} is {new!r} but the run in {out} used {old!r}")
    if int(saved.get("epochs", cfg.epochs)) != cfg.epochs:
        log.info("--resume: epochs changed from %s to %s", saved.get("epochs"), cfg.epochs)


def _same_place(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def run_paths(out: Path) -> dict[str, str]:
    """Paths of a run folder's main files (``best``, ``last``, ``config``, ``log``, ``train_log``)."""
    return {name: str(out / f) for name, f in (("best", run_files.BEST), ("last", run_files.LAST),
                                              ("config", run_files.CONFIG), ("log", run_files.LOG_CSV),
                                              ("train_log", run_files.TRAIN_LOG))}


def write_run_record(cfg: TrainConfig, out: Path, data: TrainingData, record: dict[str, Any]) -> None:
    """A new run's config.yaml, its split and (patch runs) its plan."""
    atomic_write_text(out / run_files.CONFIG, dump_yaml(cfg, record))
    if data.plan is not None:
        atomic_write_text(out / run_files.PLAN, json.dumps(data.plan.to_dict(), indent=1) + "\n")
    if data.splits is not None:
        atomic_write_text(out / run_files.SPLITS, json.dumps(data.splits, indent=1, sort_keys=True))


def _intensity_text(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "ct":
        name = f" ({spec['preset']})" if spec.get("preset") else ""
        return f"CT window {spec['low']:g}..{spec['high']:g} HU{name}"
    nz = ", non-zero voxels" if spec.get("nonzero") else ""
    return f"percentiles {spec['low']:g}..{spec['high']:g} per volume{nz}"


def describe_setup(cfg: TrainConfig, trainer: Trainer, train_set, val_set, record: dict[str, Any]) -> list[str]:
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


def _prepare(cfg: TrainConfig, out: Path, rank: int, device) -> TrainingData:
    """The run's data, with what it decided put into ``cfg``, checked against a resumed run."""
    data = build_datasets(cfg, run=out if cfg.resume else None)
    if len(data.train) == 0:
        raise DataError(f"{cfg.data}: the training split is empty")
    data.configure(cfg)
    if cfg.resume:
        check_resumed_config(cfg, out)
    resolve_runtime(cfg, device)
    if rank == 0 and not is_pretrained(cfg):
        # Said once the data is known to be usable, so that a user's mistake stays a one-line error.
        log.warning("%s", NO_PRETRAINED_WARNING)
    return data


def choose_postprocessing(cfg: TrainConfig, out: Path, data: TrainingData, trainer: Trainer) -> None:
    """Volumes: record the minimum component size (``--min-size``) in the best model, choosing it
    on the validation volumes for ``auto`` (:mod:`segdino.volumes.postprocess_plan`)."""
    from ..volumes.postprocess_plan import describe_choice, plan_min_size, record_min_size

    if not (out / run_files.BEST).is_file() or cfg.min_size == 0:
        return
    if cfg.min_size != "auto":
        choice = record_min_size(out, float(cfg.min_size))
    elif not getattr(data.val, "cases", None):
        trainer.say("post-processing: no validation volumes to choose a minimum component size on; none recorded")
        return
    else:
        choice = plan_min_size(out, data.val.cases, batch_size=cfg.batch_size, device=trainer.device,
                               tile_overlap=cfg.tile_overlap)
    trainer.say(describe_choice(choice))


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train per ``cfg`` into ``cfg.out``; returns the best epoch, its score and the run folder."""
    if not cfg.data or not cfg.out:
        raise ConfigError("training needs --data DIR and --out RUN_DIR")
    device = resolve_device(cfg.device)
    rank, world, _ = init_distributed(device.type)
    held = None
    try:
        out, held = open_run_folder(cfg, write=rank == 0)
        data = _prepare(cfg, out, rank, device)
        barrier(world)
        trainer = Trainer(cfg, data.train, data.val, make_transform(cfg), out=out, foreground=data.foreground)
        record = run_record(cfg, trainer.model)
        trainer.pretrained = record["pretrained"]
        if cfg.resume:
            trainer.resume()
        elif rank == 0:
            write_run_record(cfg, out, data, record)
        for line in describe_setup(cfg, trainer, data.train, data.val, record):
            trainer.say(line)
        trainer.fit()
        if rank == 0 and cfg.extra.get("volume"):
            choose_postprocessing(cfg, out, data, trainer)
        barrier(world)
        return {"best_epoch": trainer.best_epoch, "best_score": trainer.best,
                "has_validation": data.val is not None, "out": str(out), "pretrained": record["pretrained"],
                **run_paths(out)}
    finally:
        if held is not None:
            held.close()
        shutdown_distributed(world)


__all__ = ["check_resumed_config", "choose_postprocessing", "describe_setup", "open_run_folder", "prepare_run_folder", "run_paths",
           "run_training", "write_run_record"]
