"""segdino.data.check: `segdino data check` on 2D folders written by the tests."""

from __future__ import annotations

import json

import numpy as np

from segdino.cli import main as cli_main
from segdino.data.check import check_dataset
from tests.data.files import S, disc, photo, save, make_images_dataset


def test_check_good_dataset(tmp_path, capsys):
    root = make_images_dataset(tmp_path / "d", n=10, empty={"img03"})
    r = check_dataset(root)
    assert r.ok, r.problems
    assert r.pairs == 10 and r.num_classes == 1 and r.task_inferred
    assert r.split_sizes == {"train": 8, "val": 1, "test": 1}
    assert r.empty_masks == ["img03"] and r.image_sizes == {(S, S): 10}
    assert cli_main(["data", "check", "--data", str(root), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "pairs:       10" in out and "train 8, val 1, test 1" in out and "img03" in out and "usable" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_check_infers_index_masks(tmp_path):
    root = tmp_path / "d"
    for i in range(6):
        idx = np.zeros((S, S), np.uint8)
        idx[:8] = 1
        idx[-8:] = 2 if i else 0
        save(photo(i), root / "images" / f"c{i}.png")
        save(idx, root / "masks" / f"c{i}.png")
    r = check_dataset(root)
    assert r.ok and r.num_classes == 3 and r.class_counts == {0: 6, 1: 6, 2: 5}
    r1 = check_dataset(root, num_classes=1)
    assert not r1.ok and any("--num-classes 3" in p for p in r1.problems)


def _bad(tmp_path, name):
    return make_images_dataset(tmp_path / name, n=6)


def _expect_problem(root, capsys, *needles, **kw):
    r = check_dataset(root, **kw)
    assert not r.ok
    assert any(all(n in p for n in needles) for p in r.problems), r.problems
    assert cli_main(["data", "check", "--data", str(root)] + [
        a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]) == 1
    out = capsys.readouterr().out
    assert all(n in out for n in needles) and "NOT usable" in out


def test_check_truncated_image(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    p = root / "images" / "img02.png"
    p.write_bytes(p.read_bytes()[:60])
    _expect_problem(root, capsys, "img02.png", "cannot read image")


def test_check_truncated_jpeg_image(tmp_path, capsys):
    root = tmp_path / "d"
    for i in range(4):
        save(photo(i, size=64), root / "images" / f"j{i}.jpg")
        save(disc(size=64), root / "masks" / f"j{i}.png")
    p = root / "images" / "j1.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) * 2 // 3])
    _expect_problem(root, capsys, "j1.jpg", "truncated")


def test_check_unreadable_mask(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    (root / "masks" / "img04.png").write_bytes(b"not a png at all")
    _expect_problem(root, capsys, "img04.png", "cannot read mask")


def test_check_image_without_mask(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    (root / "masks" / "img01.png").unlink()
    _expect_problem(root, capsys, "image without mask", "img01.png")


def test_check_mask_without_image(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    save(disc(), root / "masks" / "stray_mask.png")
    _expect_problem(root, capsys, "mask without image", "stray_mask.png")


def test_check_size_mismatch(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    save(disc(size=S * 2), root / "masks" / "img05.png")
    _expect_problem(root, capsys, "size mismatch", "img05.png", "64x64", "32x32")


def test_check_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _expect_problem(tmp_path / "empty", capsys, "empty")
    _expect_problem(tmp_path / "missing", capsys, "no such folder")


def test_check_mask_values_do_not_fit(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    _expect_problem(root, capsys, "img00.png", "do not fit num_classes=2", num_classes=2)
    root3 = tmp_path / "idx"
    for i in range(4):
        save(photo(i), root3 / "images" / f"c{i}.png")
        save(np.full((S, S), 5 if i == 2 else 1, np.uint8), root3 / "masks" / f"c{i}.png")
    _expect_problem(root3, capsys, "c2.png", "values 5", num_classes=3)


def test_check_split_file_naming_missing_cases(tmp_path, capsys):
    root = _bad(tmp_path, "d")
    (root / "splits.json").write_text(json.dumps({"train": ["img00", "img09"], "val": [], "test": []}))
    _expect_problem(root, capsys, "splits.json", "img09")
