"""segdino.data.layouts: the 2D dataset layouts and how masks pair with images."""

from __future__ import annotations

import numpy as np
import pytest

from segdino.data.layouts import case_group, detect_layout, find_pairs, groups_for, scan_dataset
from segdino.data.masks import read_mask
from segdino.data.splits import resolve_splits
from segdino.errors import DataError
from tests.data.files import disc, photo, save, make_images_dataset


def test_images_layout_same_stem_and_order(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=4)
    (tmp_path / "d" / "images" / "notes.txt").write_text("x")
    (tmp_path / "d" / "images" / ".DS_Store").write_bytes(b"")
    pairs = find_pairs(root)
    assert [p.case_id for p in pairs] == ["img00", "img01", "img02", "img03"]
    assert all(p.layout == "images" and len(p.masks) == 1 for p in pairs)
    assert pairs[2].masks[0] == root / "masks" / "img02.png"
    assert detect_layout(root).name == "images"
    scan = scan_dataset(root)
    assert [p.name for p in scan.ignored] == ["notes.txt"]


@pytest.mark.parametrize("suffix", ["_segmentation", "_Segmentation", "_mask", "_Mask", "-mask", "_gt", "_label"])
def test_mask_suffixes(tmp_path, suffix):
    root = make_images_dataset(tmp_path / "d", n=3, mask_name="{}" + suffix + ".png", image_ext=".jpg")
    pairs = find_pairs(root)
    assert [p.masks[0].name for p in pairs] == [f"img0{i}{suffix}.png" for i in range(3)]


def test_labels_folder_and_case_insensitive_names(tmp_path):
    root = tmp_path / "d"
    save(photo(), root / "Images" / "a.png")
    save(disc(), root / "Labels" / "a.png")
    assert [p.case_id for p in find_pairs(root)] == ["a"]


def test_several_masks_are_united(tmp_path):
    root = tmp_path / "busi"
    save(photo(), root / "images" / "benign (1).png")
    save(disc(r=3, cx=8, cy=8), root / "masks" / "benign (1)_mask.png")
    save(disc(r=3, cx=24, cy=24), root / "masks" / "benign (1)_mask_1.png")
    save(disc(r=2, cx=8, cy=24), root / "masks" / "benign (1)_mask_2.png")
    save(photo(1), root / "images" / "benign (10).png")
    save(disc(), root / "masks" / "benign (10)_mask.png")
    pairs = find_pairs(root)
    by_id = {p.case_id: p for p in pairs}
    assert [m.name for m in by_id["benign (1)"].masks] == [
        "benign (1)_mask.png", "benign (1)_mask_1.png", "benign (1)_mask_2.png"]
    assert [m.name for m in by_id["benign (10)"].masks] == ["benign (10)_mask.png"]
    union = read_mask(by_id["benign (1)"].masks)
    expected = (disc(r=3, cx=8, cy=8) | disc(r=3, cx=24, cy=24) | disc(r=2, cx=8, cy=24)) > 0
    np.testing.assert_array_equal(union, expected.astype(np.uint8))
    with pytest.raises(DataError, match="united only for a binary task"):
        read_mask(by_id["benign (1)"].masks, num_classes=3)


def test_odd_names_with_brackets_and_spaces(tmp_path):
    names = ["100_1(1)", "100_1(2)", "case 7 [left]", "x.y.z"]
    root = make_images_dataset(tmp_path / "d", names=names, mask_name="{}.gif")
    assert sorted(p.case_id for p in find_pairs(root)) == sorted(names)


def test_authors_layout(tmp_path):
    root = tmp_path / "a"
    for subset, n in (("train", 20), ("test", 5)):
        for i in range(n):
            save(photo(i), root / subset / "image" / f"{subset}{i:02d}.png")
            save(disc(), root / subset / "mask" / f"{subset}{i:02d}.png")
    pairs = find_pairs(root)
    assert detect_layout(root).name == "authors"
    assert len(pairs) == 25 and {p.subset for p in pairs} == {"train", "test"}
    splits = resolve_splits(root, pairs, seed=0)
    assert splits.sizes() == {"train": 18, "val": 2, "test": 5}
    assert set(splits["test"]) == {f"test{i:02d}" for i in range(5)}
    assert set(splits["val"]) <= {f"train{i:02d}" for i in range(20)}
    assert "authors" in splits.source
    assert resolve_splits(root, pairs, seed=0) == splits
    assert resolve_splits(root, pairs, seed=1)["val"] != splits["val"]


def test_authors_layout_same_name_in_two_subsets(tmp_path):
    root = tmp_path / "a"
    for subset in ("train", "test"):
        save(photo(), root / subset / "image" / "x.png")
        save(disc(), root / subset / "mask" / "x.png")
    assert sorted(p.case_id for p in find_pairs(root)) == ["test/x", "train/x"]


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_pairs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        find_pairs(tmp_path / "empty")
    save(photo(), tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no known dataset layout.*a.png"):
        find_pairs(tmp_path / "flat")
    save(photo(), tmp_path / "nomask" / "images" / "a.png")
    with pytest.raises(DataError, match="no masks/ or labels/"):
        find_pairs(tmp_path / "nomask")
    (tmp_path / "noimg" / "images").mkdir(parents=True)
    (tmp_path / "noimg" / "masks").mkdir()
    with pytest.raises(DataError, match="no image files"):
        find_pairs(tmp_path / "noimg")
    make_images_dataset(tmp_path / "outer" / "Kvasir-SEG", n=2)
    with pytest.raises(DataError, match="did you mean .*Kvasir-SEG"):
        find_pairs(tmp_path / "outer")
    root = make_images_dataset(tmp_path / "both", n=2)
    (root / "labels").mkdir()
    with pytest.raises(DataError, match="ambiguous"):
        find_pairs(root)


def test_unpaired_files(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=3)
    save(photo(), root / "images" / "lonely.png")
    save(disc(), root / "masks" / "orphan.png")
    scan = scan_dataset(root)
    assert len(scan.pairs) == 3
    assert any("image without mask" in p and "lonely.png" in p for p in scan.problems)
    assert any("mask without image" in p and "orphan.png" in p for p in scan.problems)
    with pytest.raises(DataError, match="lonely.png"):
        find_pairs(root)
    assert len(find_pairs(root, allow_unpaired=True)) == 3


def test_duplicate_image_stems_are_a_problem(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=2)
    save(photo(), root / "images" / "img00.jpg")
    scan = scan_dataset(root)
    assert [p.case_id for p in scan.pairs] == ["img01"]
    assert any("same name 'img00'" in p for p in scan.problems)


def test_case_groups():
    assert case_group("100_1(2)") == "100"
    assert case_group("flipped_10001_103") == "10001"
    assert case_group("patient7_slice3") == "patient7"
    assert case_group("ISIC_0000000") == "ISIC_0000000"
    assert case_group("benign (1)") == "benign (1)"
    ddti = [f"{c}_{i}" for c in range(10) for i in range(3)]
    assert groups_for(ddti) == [str(c) for c in range(10) for _ in range(3)]
    years = [f"2019_{i}" for i in range(200)]
    assert groups_for(years) == years  # one case holding everything is not plausible
