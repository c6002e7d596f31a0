"""Train/val/test splits of 2D and volume datasets: the one home of every split rule and split file.

For a 2D dataset the first rule that applies wins (docs/FORMATS.md, "Splits"):

1. ``splits.json`` in the dataset folder: ``{"train": [...], "val": [...], "test": [...]}`` of
   image stems (case ids).
2. The layout's own rule, registered with :func:`register_split_rule`: the authors' layout
   takes ``test/`` as test and a seeded 10% of ``train/`` as val (an nnU-Net layout plugs in
   its ``splits_final.json`` here).
3. A seeded 80/10/10 split by case (:attr:`Pair.group`), so that images of one patient never
   straddle two splits.

:func:`resolve_splits` returns a :class:`Splits`: a plain ``dict`` of the three lists (so it
serialises with ``json.dumps``) whose ``source`` attribute says which rule made it. Volume
datasets (and nnU-Net folders of 2D images) are split by :func:`resolve_case_splits`, which adds
an nnU-Net ``splits_final.json`` fold and labelled test cases to the same rules. Every split file
is checked by one validator (:func:`validate_split_lists`); :func:`seeded_split` splits pairs
and plain case ids alike.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import read_json
from .layouts import Pair

SPLIT_NAMES = ("train", "val", "test")
SPLITS_FILE = "splits.json"


class Splits(dict):
    """``{"train": [...], "val": [...], "test": [...]}`` of case ids, plus where it came from.

    Attributes:
        source: human-readable rule, e.g. ``"splits.json"`` or ``"seeded 80/10/10 by case (seed 0)"``.
        unassigned: case ids of the dataset that no split names (only a splits file leaves any).
    """

    def __init__(self, train: Sequence[str], val: Sequence[str], test: Sequence[str], source: str,
                 unassigned: Sequence[str] = ()):
        super().__init__(train=list(train), val=list(val), test=list(test))
        self.source = source
        self.unassigned = list(unassigned)

    def sizes(self) -> dict[str, int]:
        return {k: len(self[k]) for k in SPLIT_NAMES}

    def split_of(self) -> dict[str, str]:
        """Case id -> the split it is in."""
        return {c: k for k in SPLIT_NAMES for c in self[k]}


# (root or None, pairs, seed, fold) -> Splits, or None when the rule does not apply to this folder.
SplitRule = Callable[["Path | None", list[Pair], int, int], "Splits | None"]
# layout name -> (rule, whether the rule understands folds)
LAYOUT_SPLIT_RULES: dict[str, tuple[SplitRule, bool]] = {}


def register_split_rule(layout: str, rule: SplitRule, folds: bool = False) -> None:
    """Let pairs of ``layout`` be split by ``rule`` when no ``splits.json`` applies.

    ``folds=True`` says the rule handles ``fold`` itself (and raises for a fold it lacks);
    otherwise a non-zero fold is refused before the rule runs.
    """
    LAYOUT_SPLIT_RULES[layout] = (rule, folds)


def validate_split_lists(path: str | os.PathLike, data: Any, resolve: Callable[[str], "str | None"],
                         names: Sequence[str] = SPLIT_NAMES, required: Sequence[str] = ("train",),
                         unknown: list[str] | None = None) -> dict[str, list[str]]:
    """Check a parsed split object and map its entries to case ids: the one rule of every split file.

    ``data`` must be an object whose keys are among ``names`` (``required`` ones present), each a
    list of strings; ``resolve`` maps an entry to its case id (None: the dataset has no such case).
    A case listed twice, in one split or in two, is refused.

    Args:
        unknown: None refuses entries that name no case; a list collects a message about them
            instead (for split files that may list cases a dataset copy lacks).

    Returns:
        split name -> case ids, for every name in ``names`` (absent ones empty).

    Raises:
        DataError: naming ``path`` and the offending split and entries.
    """
    path = Path(path)
    expected = "{" + ", ".join(f'"{n}": [...]' for n in names) + "}"
    if not isinstance(data, dict) or any(k not in data for k in required):
        found = type(data).__name__ + (f" with keys {', '.join(map(str, data))}" if isinstance(data, dict) else "")
        raise DataError(f"{path}: expected an object {expected} of case names, found {found[:200]}")
    extra = sorted(str(k) for k in data if k not in names)
    if extra:
        raise DataError(f"{path}: unknown split names {', '.join(extra)[:200]} (expected {', '.join(names)})")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name in names:
        entries = data.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            bad = entries if not isinstance(entries, list) else next(e for e in entries if not isinstance(e, str))
            raise DataError(f"{path}: {name!r} must be a list of case names (strings), found "
                            f"{type(bad).__name__} {_short(bad)}")
        ids, missing = [], []
        for e in entries:
            cid = resolve(e)
            if cid is None:
                missing.append(e)
                continue
            if cid in seen:
                where = f"twice in {name!r}" if seen[cid] == name else f"in both {seen[cid]!r} and {name!r}"
                raise DataError(f"{path}: {e!r} is {where}; a case belongs to one split, once")
            seen[cid] = name
            ids.append(cid)
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            msg = f"{path}: {name!r} names {len(missing)} case(s) the dataset does not have: {shown}"
            if unknown is None:
                raise DataError(msg)
            unknown.append(msg)
        out[name] = ids
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_splits_file(path: str | os.PathLike, cases: Sequence["Pair | str"],
                     resolve: Callable[[str], "str | None"] | None = None) -> Splits:
    """Read a ``splits.json`` and check it against the dataset's cases (:func:`validate_split_lists`).

    Args:
        cases: the dataset's pairs, or its case ids.
        resolve: maps an entry to its case id (None: no such case); by default an entry is a
            case id, or an image file name (``x.png``) accepted for its stem.

    Returns:
        a :class:`Splits` whose ``unassigned`` lists the cases no split names.

    Raises:
        DataError: not JSON, not the expected object, a split naming cases the dataset lacks,
            or a case listed twice; the message names the file and the cases.
    """
    path = Path(path)
    data = read_json(path, DataError, "split file")
    ids = [c if isinstance(c, str) else c.case_id for c in cases]
    if resolve is None:
        known = set(ids)
        by_stem = {Path(c).stem: c for c in ids}

        def resolve(e: str) -> str | None:
            return e if e in known else by_stem.get(Path(e).stem) if Path(e).suffix else None

    out = validate_split_lists(path, data, resolve)
    listed = {c for part in out.values() for c in part}
    unassigned = [c for c in ids if c not in listed]
    return Splits(out["train"], out["val"], out["test"], source=str(path.name), unassigned=unassigned)


def read_nnunet_folds(path: str | os.PathLike) -> list[dict]:
    """The folds of an nnU-Net ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``.

    Raises:
        DataError: unreadable, not JSON, or not a list of objects (naming ``path``).
    """
    path = Path(path)
    folds = read_json(path, DataError, "split file")
    if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
        raise DataError(f"{path}: expected a list of folds, each {{\"train\": [...], \"val\": [...]}}")
    return folds


def read_nnunet_fold(path: str | os.PathLike, fold: int, known: set[str],
                     unknown: list[str] | None = None) -> dict[str, list[str]]:
    """Fold ``fold`` of a ``splits_final.json``, checked as every split file is.

    Args:
        known: the case ids of the dataset.
        unknown: where to note entries naming cases the dataset lacks (a copy of a dataset
            may lack cases whose labels were withheld); None refuses them.

    Returns:
        ``{"train": [...], "val": [...]}`` of case ids.

    Raises:
        DataError: the file or the fold is invalid. ConfigError: no such fold.
    """
    folds = read_nnunet_folds(path)
    if not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise ConfigError(f"{path}: --fold {fold} asked for, the file has folds 0..{len(folds) - 1}")
    return validate_split_lists(f"{path} fold {fold}", folds[fold], lambda i: i if i in known else None,
                                names=("train", "val"), required=(), unknown=unknown)


def split_groups(pairs: list[Pair], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split pairs by group into len(fractions) parts holding about those fractions of the pairs.

    Groups are shuffled with ``seed`` and dealt to the parts after the first (val, test)
    until each holds its share (at least one group each when there are enough groups); the
    first part (train) takes the rest. Case ids keep the pairs' order within each part.
    """
    groups: "OrderedDict[str, list[str]]" = OrderedDict()
    for p in pairs:
        groups.setdefault(p.group, []).append(p.case_id)
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    n = len(pairs)
    parts: list[set[str]] = [set() for _ in fractions]
    k = 0
    for j in range(1, len(fractions)):
        target = int(round(fractions[j] * n))
        if target == 0 and fractions[j] > 0 and len(names) >= len(fractions):
            target = 1
        count = 0
        while count < target and k < len(order):
            g = names[order[k]]
            parts[j].add(g)
            count += len(groups[g])
            k += 1
    parts[0].update(names[i] for i in order[k:])
    return [[p.case_id for p in pairs if p.group in part] for part in parts]


def split_ids(case_ids: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """:func:`split_groups` of plain case ids, each its own case: parts of sorted ids."""
    pairs = [Pair(cid, Path(cid), []) for cid in sorted(case_ids)]
    return [sorted(part) for part in split_groups(pairs, fractions, seed)]


def seeded_split(cases: Sequence["Pair | str"], seed: int = 0,
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Splits:
    """A seeded train/val/test split by case: of pairs (kept together by ``pair.group``, in the
    pairs' order) or of case ids (each its own case, sorted); the same rule for both."""
    pct = "/".join(str(int(round(f * 100))) for f in fractions)
    if all(isinstance(c, str) for c in cases):
        train, val, test = split_ids(list(cases), fractions, seed)
        return Splits(train, val, test, source=f"seeded {pct} by case (seed {seed})")
    pairs = list(cases)
    train, val, test = split_groups(pairs, fractions, seed)
    ngroups = len({p.group for p in pairs})
    by = "by case" if ngroups < len(pairs) else "by image"
    return Splits(train, val, test, source=f"seeded {pct} {by} ({ngroups} cases, seed {seed})")


def resolve_case_splits(root: str | os.PathLike, train_ids: Sequence[str], test_ids: Sequence[str],
                        resolve: Callable[[str], "str | None"], fold: int = 0, seed: int = 0,
                        nnunet: bool = False, issues: list[str] | None = None) -> Splits:
    """The splits of a dataset of labelled training and test cases (volumes, nnU-Net folders).

    The first rule that applies: ``splits.json`` (entries mapped by ``resolve``); with
    ``nnunet``, fold ``fold`` of ``splits_final.json`` and test = ``test_ids``; with test cases,
    val = a seeded 10% of the training cases and test = those; else a seeded 80/10/10 split.

    Args:
        root: the dataset folder.
        train_ids, test_ids: the labelled cases of the training and the test folders.
        issues: where a fold's entries naming missing cases are noted (None refuses them).

    Raises:
        ConfigError: ``fold`` other than 0 without a ``splits_final.json``, or a fold it lacks.
        DataError: an invalid split file.
    """
    root = Path(root)
    train_ids, test_ids = sorted(train_ids), sorted(test_ids)
    fixed, final = root / SPLITS_FILE, root / "splits_final.json"
    uses_folds = nnunet and final.is_file() and not fixed.is_file()
    if fold != 0 and not uses_folds:
        source = SPLITS_FILE if fixed.is_file() else "a rule without folds"
        raise ConfigError(f"--fold {fold} asked for, but the split of {root} comes from {source}; "
                          "folds come from an nnU-Net splits_final.json")
    if fixed.is_file():
        out = validate_split_lists(fixed, read_json(fixed, DataError, "split file"), resolve)
        return Splits(out["train"], out["val"], out["test"], source=SPLITS_FILE)
    if uses_folds:
        out = read_nnunet_fold(final, fold, set(train_ids), issues)
        return Splits(out["train"], out["val"], test_ids, source=f"splits_final.json fold {fold}")
    if test_ids:
        train, val = split_ids(train_ids, (0.9, 0.1), seed)
        return Splits(train, val, test_ids,
                      source=f"val = 10% of training cases (seed {seed}); test = labelled test cases")
    return seeded_split(train_ids, seed)


def _authors_rule(root: Path, pairs: list[Pair], seed: int, fold: int) -> Splits | None:
    train = [p for p in pairs if p.subset == "train"]
    test = [p.case_id for p in pairs if p.subset == "test"]
    given_val = [p.case_id for p in pairs if p.subset == "val"]
    if given_val:
        return Splits([p.case_id for p in train], given_val, test,
                      source="authors' layout: train/, val/ and test/ folders")
    tr, val = split_groups(train, (0.9, 0.1), seed)
    return Splits(tr, val, test, source=f"authors' layout: test = test/, val = 10% of train/ (seed {seed})")


register_split_rule("authors", _authors_rule)


def resolve_splits(root: str | os.PathLike | None, pairs: list[Pair], seed: int = 0, fold: int = 0) -> Splits:
    """The train/val/test case ids of a dataset by the first rule that applies (see module doc).

    Args:
        root: the dataset folder (where ``splits.json`` is looked for); None skips the file.
        pairs: the dataset's pairs (:func:`segdino.data.layouts.find_pairs`).
        seed: seed of the seeded rules.
        fold: cross-validation fold, for layouts whose split file has folds (nnU-Net).

    Returns:
        a :class:`Splits` (a dict ``train``/``val``/``test`` -> case ids; ``.source`` names the rule).

    Raises:
        DataError: a split file that is invalid or names cases the dataset lacks.
        ConfigError: ``fold`` given where the rule that applies has no folds.
    """
    root = Path(root) if root is not None else None
    if not pairs:
        raise DataError(f"{root}: no pairs to split")
    layouts = {p.layout for p in pairs}
    rule, folds = LAYOUT_SPLIT_RULES.get(layouts.pop(), (None, False)) if len(layouts) == 1 else (None, False)
    if root is not None and (root / SPLITS_FILE).is_file():
        rule, folds = None, False
        splits: Splits | None = read_splits_file(root / SPLITS_FILE, pairs)
    else:
        splits = None
    if fold != 0 and not folds:
        source = splits.source if splits is not None else "a rule without folds"
        raise ConfigError(f"fold {fold} was asked for, but the split of {root} comes from {source}; "
                          "folds come from an nnU-Net splits_final.json")
    if splits is None and rule is not None:
        splits = rule(root, pairs, seed, fold)
    if splits is None:
        splits = seeded_split(pairs, seed)
    return splits
