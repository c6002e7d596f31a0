"""segdino.data.splits: one seeded rule and one set of split-file readers for pairs and case ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segdino.data.layouts import Pair
from segdino.data.splits import (
    read_nnunet_fold,
    read_splits_file,
    resolve_case_splits,
    seeded_split,
)
from segdino.errors import ConfigError, DataError


def _ids(n: int) -> list[str]:
    return [f"case_{i:02d}" for i in range(n)]


def test_seeded_split_of_ids_is_the_rule_of_pairs():
    ids = _ids(30)
    by_id = seeded_split(ids, seed=4)
    by_pair = seeded_split([Pair(c, Path(c + ".png"), []) for c in ids], seed=4)
    assert dict(by_id) == {k: sorted(v) for k, v in by_pair.items()}
    assert by_id.source == "seeded 80/10/10 by case (seed 4)"
    assert sorted(sum(by_id.values(), [])) == ids


def test_read_splits_file_takes_ids_and_a_resolver(tmp_path):
    p = tmp_path / "splits.json"
    p.write_text(json.dumps({"train": ["a.nii.gz", "b"], "val": ["c"], "test": []}))
    out = read_splits_file(p, ["a", "b", "c", "d"], resolve=lambda e: e.split(".")[0] if e[0] in "abcd" else None)
    assert dict(out) == {"train": ["a", "b"], "val": ["c"], "test": []}
    assert out.unassigned == ["d"]
    p.write_text(json.dumps({"train": ["a"], "val": ["a"]}))
    with pytest.raises(DataError, match="in both 'train' and 'val'"):
        read_splits_file(p, ["a", "b"])


def test_nnunet_fold_notes_missing_cases_and_refuses_a_fold_it_lacks(tmp_path):
    p = tmp_path / "splits_final.json"
    p.write_text(json.dumps([{"train": ["a", "gone"], "val": ["b"]}]))
    notes: list[str] = []
    assert read_nnunet_fold(p, 0, {"a", "b"}, notes) == {"train": ["a"], "val": ["b"]}
    assert len(notes) == 1 and "gone" in notes[0]
    with pytest.raises(DataError, match="names 1 case"):
        read_nnunet_fold(p, 0, {"a", "b"})
    with pytest.raises(ConfigError, match="folds 0..0"):
        read_nnunet_fold(p, 1, {"a", "b"})
    p.write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="expected a list of folds"):
        read_nnunet_fold(p, 0, {"a"})


def test_resolve_case_splits_takes_the_first_rule_that_applies(tmp_path):
    train, test = _ids(20), ["t1", "t2"]
    same = lambda e: e  # noqa: E731
    got = resolve_case_splits(tmp_path, train, test, same, seed=1)
    assert got["test"] == test and len(got["val"]) == 2 and "10%" in got.source
    assert resolve_case_splits(tmp_path, train, [], same).source == "seeded 80/10/10 by case (seed 0)"
    with pytest.raises(ConfigError, match="--fold 1"):
        resolve_case_splits(tmp_path, train, test, same, fold=1, nnunet=True)
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": train[:15], "val": train[15:]}] * 2))
    fold1 = resolve_case_splits(tmp_path, train, test, same, fold=1, nnunet=True)
    assert fold1.source == "splits_final.json fold 1" and fold1["test"] == test
    (tmp_path / "splits.json").write_text(json.dumps({"train": train, "val": [], "test": test}))
    assert resolve_case_splits(tmp_path, train, test, same, nnunet=True).source == "splits.json"
