"""Training: one loop for both recipes, resumable to the bit, observable, writing a run folder.

Reproducibility rests on two rules: the sample order of epoch ``e`` is drawn from ``seed`` and
``e`` alone, and each sample's augmentation from a generator seeded by ``(seed, e, index)``
(:func:`segdino.data.dataset.sample_seed`). A run resumed from the end of any epoch therefore
sees exactly the batches the uninterrupted run saw, whatever the number of DataLoader workers.

The same code runs under ``torchrun`` (DistributedDataParallel): every rank draws the same
global order and takes its own slice of each global batch; validation is split across ranks
with no case counted twice; only rank 0 writes files.

The parts, each in its own module:

- :mod:`.run`: a run from start to end (:func:`run_training`), the run folder, the resume check;
- :mod:`.datasets`: the train and validation sets, and what the data decides (:class:`TrainingData`);
- :mod:`.model_init`: the model a run starts from (fresh, pretrained backbone, ``--init``);
- :mod:`.trainer`: the loop, :class:`Trainer`, whose steps a variant overrides;
- :mod:`.sampling`: the sample order of each epoch and rank, and augmentation seeds;
- :mod:`.optim`: the optimiser and the learning-rate schedule;
- :mod:`.validation`: the Dice that picks the best epoch;
- :mod:`.checkpoints`: ``best``/``last`` weights and the resume state;
- :mod:`.run_log`: ``log.csv``, TensorBoard, ``train.log``, skipped samples;
- :mod:`.distributed`: process group setup and teardown, rank shares, collectives.

docs/ARCHITECTURE.md places training among the other layers.
"""

from __future__ import annotations

from .checkpoints import RESUME_FILE, Checkpoints, load_resume_state, save_resume_state
from .datasets import (TrainingData, build_datasets, build_volume_datasets, is_volume_data, make_transform,
                       recorded_split, volume_settings_of)
from .distributed import dist_info, init_distributed, launch_local
from .model_init import NO_PRETRAINED_WARNING, build_run_model, init_from, is_pretrained, resolve_runtime, run_record
from .optim import backbone_lr_scale, lr_factor, make_optimizer
from .run import check_resumed_config, describe_setup, open_run_folder, prepare_run_folder, run_paths, run_training
from .run_log import EpochResult, RunLog
from .sampling import EpochSampler, RunSampler, TrainView, collate_eval, collate_train
from .trainer import Trainer, TrainingError
from .validation import dice_from_counts, overlap_counts

__all__ = [
    "Checkpoints", "EpochResult", "EpochSampler", "NO_PRETRAINED_WARNING", "RESUME_FILE", "RunLog", "RunSampler", "TrainView",
    "Trainer", "TrainingData", "TrainingError", "backbone_lr_scale", "build_datasets", "build_run_model",
    "build_volume_datasets", "check_resumed_config", "collate_eval", "collate_train", "describe_setup",
    "dice_from_counts", "dist_info", "init_distributed", "init_from", "is_pretrained", "is_volume_data",
    "launch_local", "load_resume_state", "lr_factor", "make_optimizer", "make_transform", "open_run_folder",
    "overlap_counts", "prepare_run_folder", "recorded_split", "resolve_runtime", "run_paths", "run_record",
    "run_training", "save_resume_state", "volume_settings_of",
]
