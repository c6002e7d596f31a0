"""Reading a training run folder back: is it one, which dataset it trained on, its split, its log.

Evaluation uses these for images and volumes alike: a run is scored on the cases it never
trained on (its ``splits.json``, read by the rule of :mod:`segdino.data.splits`), and its report
shows the learning curves of its ``log.csv``. The file names come from :mod:`segdino.run_files`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Collection

from . import run_files
from .data.splits import validate_split_lists
from .errors import DataError
from .fileio import read_json

log = logging.getLogger("segdino.evaluation")


def find_run_dir(model_path: str | os.PathLike | None) -> Path | None:
    """The training run folder a model path belongs to, or None.

    A run folder itself, or the folder of a checkpoint inside one (``RUN/best.safetensors``),
    counts when it holds ``log.csv`` or ``config.yaml``.
    """
    if model_path is None:
        return None
    p = Path(model_path)
    folder = p if p.is_dir() else p.parent
    return folder if run_files.is_run_folder(folder) else None


def run_dataset(run_dir: str | os.PathLike | None) -> Path | None:
    """The dataset folder a training run was given (``data`` in its ``config.yaml``), or None."""
    data = (run_files.recorded_config(run_dir) or {}).get("data")
    return Path(data) if isinstance(data, str) else None


def is_run_dataset(run_dir: str | os.PathLike | None, data: str | os.PathLike) -> bool:
    """Whether ``data`` is the folder the run trained on (True when the run does not say).

    A run's ``data`` may be relative to where it was started; when it cannot be found from
    here, the folder names are compared.
    """
    trained = run_dataset(run_dir)
    if trained is None:
        return True
    try:
        if trained.exists():
            return os.path.samefile(trained, data)
        return trained.resolve().name == Path(data).resolve().name
    except OSError:
        return False


def run_splits(run_dir: str | os.PathLike | None) -> dict[str, list[str]] | None:
    """The case lists a run trained, validated and tested on (``RUN/splits.json``), or None."""
    if run_dir is None or not (Path(run_dir) / run_files.SPLITS).is_file():
        return None
    path = Path(run_dir) / run_files.SPLITS
    # Cases are matched against the dataset afterwards; the file's form is checked by the one rule.
    return validate_split_lists(path, read_json(path, DataError, "split file"), lambda c: c, required=())


def run_split_cases(run_dir: str | os.PathLike | None, split: str, known: Collection[str],
                    data: str | os.PathLike) -> tuple[list[str], str] | None:
    """The cases of ``split`` in the run's ``splits.json`` and a sentence naming the file, or None.

    None too when the run lists no such cases, or names cases that ``known`` (the labelled cases
    of ``data``) lacks: the run trained on another copy of the data, whose split means nothing
    here, so the dataset's own rules decide (a note in the log says so).
    """
    ran = run_splits(run_dir)
    if ran is None or not ran.get(split):
        return None
    path = Path(run_dir) / run_files.SPLITS
    if not set(ran[split]) <= set(known):
        log.info("%s names cases that %s lacks; using the dataset's own split", path, data)
        return None
    return list(ran[split]), f"the run's {path}"


def run_log_csv(run_dir: str | os.PathLike | None) -> Path | None:
    """The run's ``log.csv`` (for learning curves), or None."""
    if run_dir is None:
        return None
    path = Path(run_dir) / run_files.LOG_CSV
    return path if path.is_file() else None
