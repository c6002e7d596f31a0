"""segdino.data.splits: one seeded rule and one set of split-file readers for pairs and case ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segdino.data.dataset import SegmentationDataset
from segdino.data.layouts import Pair, find_pairs
from segdino.data.splits import (
    Splits,
    read_nnunet_fold,
    read_splits_file,
    resolve_case_splits,
    resolve_splits,
    seeded_split,
)
from segdino.errors import ConfigError, DataError
from tests.data.files import make_images_dataset


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


def test_splits_json_wins(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=10)
    names = [f"img{i:02d}" for i in range(10)]
    (root / "splits.json").write_text(json.dumps({"train": names[:6], "val": names[6:8], "test": names[8:]}))
    pairs = find_pairs(root)
    s = resolve_splits(root, pairs)
    assert s.source == "splits.json" and s.sizes() == {"train": 6, "val": 2, "test": 2}
    assert s["test"] == names[8:]
    assert json.loads(json.dumps(s)) == {"train": names[:6], "val": names[6:8], "test": names[8:]}
    with pytest.raises(ConfigError, match="fold"):
        resolve_splits(root, pairs, fold=1)


def test_splits_json_accepts_file_names_and_notes_unlisted(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=4)
    (root / "splits.json").write_text(json.dumps({"train": ["img00.png", "img01"], "val": ["img02"]}))
    s = resolve_splits(root, find_pairs(root))
    assert s == {"train": ["img00", "img01"], "val": ["img02"], "test": []}
    assert s.unassigned == ["img03"]


@pytest.mark.parametrize("content, match", [
    ({"train": ["img00", "ghost"], "val": [], "test": []}, "'train' names 1 case.*ghost"),
    ({"train": ["img00"], "val": ["img00"], "test": []}, "img00.*both 'train' and 'val'"),
    ({"train": ["img00", "img00"]}, "img00.*twice in 'train'"),
    ({"training": []}, "expected an object"),
    ({"train": [], "valid": []}, "unknown split names valid"),
    ({"train": "img00"}, "must be a list"),
])
def test_bad_splits_json(tmp_path, content, match):
    root = make_images_dataset(tmp_path / "d", n=3)
    (root / "splits.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=match):
        resolve_splits(root, find_pairs(root))
    with pytest.raises(DataError, match="splits.json"):
        SegmentationDataset(root, split="train")


def test_splits_json_not_json(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=3)
    (root / "splits.json").write_text("{train: ")
    with pytest.raises(DataError, match="splits.json: not valid JSON"):
        resolve_splits(root, find_pairs(root))


def test_seeded_split_by_case(tmp_path):
    names = [f"{c}_{i}" for c in range(30) for i in range(1 + c % 3)]  # 60 images of 30 cases
    root = make_images_dataset(tmp_path / "d", names=names)
    pairs = find_pairs(root)
    s = resolve_splits(root, pairs, seed=0)
    assert "seeded 80/10/10 by case" in s.source
    assert sum(s.sizes().values()) == 60 and 5 <= len(s["val"]) <= 8 and 5 <= len(s["test"]) <= 8
    case_of = {p.case_id: p.group for p in pairs}
    groups = {k: {case_of[c] for c in v} for k, v in s.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert resolve_splits(root, pairs, seed=0) == s
    assert resolve_splits(root, pairs, seed=5) != s


def test_seeded_split_exact_fractions_by_image():
    from segdino.data.layouts import Pair

    pairs = [Pair(f"x{i}", Path(f"x{i}.png"), [Path(f"m{i}.png")], layout="images") for i in range(100)]
    s = seeded_split(pairs, seed=3)
    assert s.sizes() == {"train": 80, "val": 10, "test": 10} and "by image" in s.source
    assert isinstance(s, Splits) and sorted(sum(s.values(), [])) == sorted(p.case_id for p in pairs)
    few = seeded_split(pairs[:3], seed=0)
    assert few.sizes() == {"train": 1, "val": 1, "test": 1}
