"""The names of every file SegDINO writes into a run folder, a prediction folder and a report folder.

One place for them, so that training, prediction, evaluation, reports and the output guard agree,
and the one lenient reader of a run's config.yaml (:func:`recorded_config`).
docs/FORMATS.md describes what each file holds. This module imports nothing of the package.

Run folder (``segdino train --out RUN``)::

    RUN/config.yaml            the resolved training configuration
    RUN/splits.json            the case lists trained, validated and tested on
    RUN/plan.json              volume runs: the planned spacing and patch size
    RUN/log.csv                one row per epoch
    RUN/train.log              the run's log lines
    RUN/best.safetensors       the weights of the best validation epoch
    RUN/last.safetensors       the weights of the last epoch
    RUN/resume/state.safetensors  optimiser, scheduler and sampler state for --resume
    RUN/tensorboard/           TensorBoard event files (optional)

Prediction folder (``segdino predict --out OUT``): ``OUT/masks/`` and, with ``--save-probabilities``,
``OUT/probabilities/``. Report folder (``segdino evaluate --out OUT``): ``cases.csv``,
``summary.json``, ``lesions.csv`` (volumes), ``report.md``, ``report.html``, ``figures/`` and, for
a model's volumes, ``predictions/``.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
SPLITS = "splits.json"
FOLD_SPLITS = "splits_final.json"  # nnU-Net's name for a list of cross-validation folds
PLAN = "plan.json"
POSTPROCESSING = "postprocessing.json"  # the minimum component size training chose, and its scores
LOG_CSV = "log.csv"
TRAIN_LOG = "train.log"
BEST = "best.safetensors"
LAST = "last.safetensors"
RESUME_DIR = "resume"
RESUME_STATE = Path(RESUME_DIR) / "state.safetensors"
TENSORBOARD = "tensorboard"

# What marks a folder as holding a training run (for --resume and --overwrite decisions).
RUN_MARKERS = (CONFIG, LAST, BEST, RESUME_DIR, LOG_CSV)
# What marks a folder as a run folder when it is read back (evaluation, reports).
RUN_READ_MARKERS = (LOG_CSV, CONFIG)

MASKS = "masks"
PROBABILITIES = "probabilities"
OVERLAYS = "overlays"

CASES_CSV = "cases.csv"
SUMMARY = "summary.json"
LESIONS_CSV = "lesions.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"  # the report's pictures, linked from report.md
PREDICTIONS = "predictions"  # a volume evaluation's predictions made by the model


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a training run's files (its config or its log)."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).is_file() for name in RUN_READ_MARKERS)


def run_weights(folder: str | Path) -> Path:
    """The weights a run folder is used through: its best epoch's file."""
    return Path(folder) / BEST


__all__ = ["BEST", "CASES_CSV", "CONFIG", "FIGURES", "FOLD_SPLITS", "LAST", "LESIONS_CSV", "LOG_CSV", "MASKS", "POSTPROCESSING",
           "OVERLAYS", "PLAN", "PREDICTIONS", "PROBABILITIES", "REPORT_HTML", "REPORT_MD", "RESUME_DIR",
           "RESUME_STATE", "RUN_MARKERS", "RUN_READ_MARKERS", "SPLITS", "SUMMARY", "TENSORBOARD",
           "TRAIN_LOG", "is_run_folder", "run_weights"]


def recorded_config(run_dir: str | Path | None) -> dict | None:
    """A run folder's ``config.yaml`` as a mapping, or None when there is none or it cannot be read
    (for readers that fall back on something else; ``--resume`` reports a bad one itself)."""
    import yaml

    if run_dir is None or not (Path(run_dir) / CONFIG).is_file():
        return None
    try:
        saved = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None
