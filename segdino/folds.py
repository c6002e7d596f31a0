"""Cross-validation folds: made once, seeded, by patient, and kept in a ``splits_final.json`` file.

The file is nnU-Net's: a list of folds, each ``{"train": [...], "val": [...]}`` of case ids.
Every case is in exactly one fold's ``val``; cases of one patient are never split between a
fold's ``train`` and ``val``. Test cases (``imagesTs``) stay outside the folds.

A patient is named by the case id up to a nodule/lesion/series suffix (``lidc_0003_n2`` ->
``lidc_0003``; see :func:`patient_of`); ids without such a suffix are their own patient.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.splits import read_nnunet_folds
from .errors import ConfigError, DataError
from .fileio import atomic_write_text

SPLITS_FILE = "splits_final.json"
# CASE_n2, CASE_nodule3, CASE_lesion1, CASE_s02, CASE_series4: one patient's several cases.
_SUFFIX = re.compile(r"^(.+?)[_-](?:n|nodule|lesion|les|s|series|scan|study)\d+$", re.IGNORECASE)


def patient_of(case_id: str) -> str:
    """The patient a case belongs to (its id without a per-lesion or per-series suffix)."""
    m = _SUFFIX.match(case_id)
    return m.group(1) if m else case_id


def make_folds(case_ids: Sequence[str], k: int, seed: int = 0, groups: Sequence[str] | None = None,
               where: str = "dataset") -> list[dict[str, list[str]]]:
    """``k`` folds of ``case_ids``, grouped by patient (default :func:`patient_of`), seeded.

    Patients are shuffled by ``seed`` and dealt, largest first, to the fold with the fewest
    cases, so fold sizes differ by at most one patient's cases.

    Raises:
        ConfigError: ``k`` < 2; DataError: fewer cases (or patients) than folds, naming ``where``.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"--folds must be an integer >= 2, got {k!r}")
    ids = sorted(set(str(c) for c in case_ids))
    if len(ids) < k:
        raise DataError(f"{where}: {len(ids)} training case(s) cannot make {k} folds (need at least {k})")
    group_of = dict(zip(ids, groups)) if groups is not None else {c: patient_of(c) for c in ids}
    patients: dict[str, list[str]] = {}
    for c in ids:
        patients.setdefault(group_of[c], []).append(c)
    if len(patients) < k:
        raise DataError(f"{where}: {len(ids)} cases of {len(patients)} patient(s) cannot make {k} folds "
                        "with every patient in one fold")
    rng = np.random.default_rng(int(seed))
    names = sorted(patients)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda p: -len(patients[p]))  # stable: shuffled within equal sizes
    vals: list[list[str]] = [[] for _ in range(k)]
    for p in order:
        j = min(range(k), key=lambda f: (len(vals[f]), f))
        vals[j] += patients[p]
    return [{"train": sorted(c for f, v in enumerate(vals) if f != j for c in v), "val": sorted(vals[j])}
            for j in range(k)]


def read_folds(path: Path) -> list[dict[str, list[str]]]:
    """The folds of a ``splits_final.json`` (:func:`segdino.data.splits.read_nnunet_folds`), each with a val list."""
    data = read_nnunet_folds(path)
    if not all("val" in f for f in data):
        raise DataError(f"{path}: expected a list of folds, each {{\"train\": [...], \"val\": [...]}}")
    return data


def ensure_folds(root: str | Path, case_ids: Sequence[str], k: int, seed: int = 0) -> Path:
    """``ROOT/splits_final.json`` with ``k`` folds: made now (seeded) if absent, else checked.

    Raises:
        ConfigError: the file exists with another number of folds (it is never overwritten).
        DataError: fewer cases or patients than folds; a file that is not a list of folds.
    """
    root = Path(root)
    path = root / SPLITS_FILE
    if path.is_file():
        folds = read_folds(path)
        if len(folds) != k:
            raise ConfigError(f"{path}: holds {len(folds)} fold(s), --folds asks for {k}; "
                              "remove the file to make new folds, or ask for its number")
        return path
    if (root / "splits.json").is_file():
        raise ConfigError(f"{root / 'splits.json'}: a fixed split takes precedence over folds; "
                          "remove it (or do not pass --folds) to train folds")
    folds = make_folds(case_ids, k, seed, where=str(root))
    atomic_write_text(path, json.dumps(folds, indent=1) + "\n")
    return path


def fold_runs(folder: str | Path) -> list[Path]:
    """The run folders inside ``folder`` (sub-folders with a ``best.safetensors``), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "best.safetensors").is_file())


__all__ = ["SPLITS_FILE", "patient_of", "make_folds", "read_folds", "ensure_folds", "fold_runs"]
