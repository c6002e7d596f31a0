"""Dataset layouts, mask reading, splits, the Dataset, augmentations and `segdino data check`,
on small files written by the tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdino.cli import main as cli_main
from segdino.data import transforms as T
from segdino.data.check import check_dataset
from segdino.data.dataset import SegmentationDataset, sample_seed
from segdino.data.layouts import case_group, detect_layout, find_pairs, groups_for, scan_dataset
from segdino.data.masks import binarize, read_mask
from segdino.data.splits import Splits, resolve_splits, seeded_split
from segdino.errors import ConfigError, DataError

S = 32  # side of the test images


# --- test files ----------------------------------------------------------------------------


def disc(size=S, r=8, cx=None, cy=None, value=255) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cx = size // 2 if cx is None else cx
    cy = size // 2 if cy is None else cy
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).astype(np.uint8) * value


def photo(seed=0, size=S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def save(arr: np.ndarray, path: Path, mode: str | None = None, **kw) -> Path:
    """Write ``arr``; PIL picks the mode from the dtype (uint16 -> I;16, float32 -> F, bool -> 1),
    and ``mode``, when given, is asserted on the file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    if mode is not None:
        with Image.open(path) as img:
            assert img.mode == mode, (path, img.mode)
    return path


def make_images_dataset(root: Path, n=10, mask_name="{}.png", image_ext=".png", mask_dir="masks",
                        names=None, empty=()) -> Path:
    names = names or [f"img{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        save(photo(i), root / "images" / f"{name}{image_ext}")
        save(disc(r=4 + i % 5) * (0 if name in empty else 1), root / mask_dir / mask_name.format(name))
    return root


# --- layouts ----------------------------------------------------------------------------------


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


# --- masks ------------------------------------------------------------------------------------


def test_mask_formats(tmp_path):
    m = disc()
    fg = (m > 0).astype(np.uint8)
    cases = {
        "png8.png": (m, None, {}),
        "png01.png": (fg, None, {}),
        "grey.gif": (m, None, {}),
        "grey.bmp": (m, None, {}),
        "grey.tif": (m, None, {}),
        "bilevel.png": (m > 0, "1", {}),
        "rgb.png": (np.repeat(m[..., None], 3, axis=2), None, {}),
        "png16.png": (fg.astype(np.uint16) * 65535, "I;16", {}),
        "png16_255.png": (fg.astype(np.uint16) * 255, "I;16", {}),
        "float.tif": (fg.astype(np.float32), "F", {}),
    }
    for name, (arr, mode, kw) in cases.items():
        p = save(arr, tmp_path / name, mode, **kw)
        np.testing.assert_array_equal(read_mask(p), fg, err_msg=name)
    # colour (non-grey) RGB mask: grey conversion first, white foreground on black
    col = np.zeros((S, S, 3), np.uint8)
    col[m > 0] = (255, 255, 0)  # yellow: luma 226 > 127
    np.testing.assert_array_equal(read_mask(save(col, tmp_path / "yellow.png")), fg)


def test_jpeg_mask_with_noise_is_thresholded(tmp_path):
    m = np.repeat(disc()[..., None], 3, axis=2)
    p = save(m, tmp_path / "m.jpg", quality=60)
    raw = np.asarray(Image.open(p).convert("L"))
    assert len(np.unique(raw)) > 2  # compression noise is really there
    got = read_mask(p)
    assert np.mean(got == (disc() > 0)) > 0.98
    # a JPEG whose values happen to be all 0/1 is still thresholded (noise, not labels)
    p01 = save(disc(value=1), tmp_path / "m01.jpg", quality=95)
    assert read_mask(p01).sum() == 0


def test_16bit_threshold_scales(tmp_path):
    arr = np.zeros((S, S), np.uint16)
    arr[:, :8] = 20000  # below 127/255 of 65535
    arr[:, 8:16] = 60000
    got = read_mask(save(arr, tmp_path / "m.png", "I;16"))
    assert got[:, :8].sum() == 0 and got[:, 8:16].all() and got[:, 16:].sum() == 0


def test_rgba_mask_transparency(tmp_path):
    rgba = np.zeros((S, S, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[..., 3] = disc()  # ... but opaque only inside the disc
    np.testing.assert_array_equal(read_mask(save(rgba, tmp_path / "m.png")), (disc() > 0).astype(np.uint8))


def test_palette_masks(tmp_path):
    idx = np.zeros((S, S), np.uint8)
    idx[4:10] = 1
    idx[20:24] = 2
    pal = Image.fromarray(idx, "P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))  # VOC-like colours
    pal.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png", num_classes=3), idx)
    grey = Image.fromarray((idx > 0).astype(np.uint8), "P")
    grey.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
    grey.save(tmp_path / "grey.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.gif"), (idx > 0).astype(np.uint8))


def test_multiclass_masks(tmp_path):
    idx = np.zeros((S, S), np.uint8)
    idx[:5] = 1
    idx[-5:] = 2
    p = save(idx, tmp_path / "ok.png")
    np.testing.assert_array_equal(read_mask(p, num_classes=3), idx)
    with pytest.raises(DataError, match=r"ok\.png.*values 2 do not fit num_classes=2"):
        read_mask(p, num_classes=2)
    p255 = save(disc(), tmp_path / "bin.png")
    with pytest.raises(DataError, match=r"bin\.png.*use num_classes=1"):
        read_mask(p255, num_classes=2)
    pf = save(idx.astype(np.float32) + 0.5, tmp_path / "frac.tif", "F")
    with pytest.raises(DataError, match="frac.tif.*fractional"):
        read_mask(pf, num_classes=3)
    with pytest.raises(DataError, match=r"ok\.png.*look like an index mask.*num_classes=3"):
        read_mask(p, num_classes=1)


def test_mask_read_errors(tmp_path):
    good = save(disc(), tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="bad.png"):
        read_mask(bad)
    with pytest.raises(DataError, match="missing.png: no such file"):
        read_mask(tmp_path / "missing.png")
    small = save(disc(size=16, r=3), tmp_path / "x_mask_1.png")
    with pytest.raises(DataError, match="x_mask_1.png.*differs"):
        read_mask([good, small])


def test_binarize_rules():
    assert binarize(np.array([[0, 1]], np.uint8)).tolist() == [[False, True]]
    assert binarize(np.array([[0, 1]], np.uint8), lossy=True).tolist() == [[False, False]]
    assert binarize(np.array([[127, 128]], np.uint8)).tolist() == [[False, True]]
    assert binarize(np.array([[100, 200]], np.uint8), threshold=150).tolist() == [[False, True]]
    assert binarize(np.array([[0.3, 0.7]], np.float32)).tolist() == [[False, True]]


# --- images through the dataset ------------------------------------------------------------------


def test_image_formats_read_as_rgb(tmp_path):
    root = tmp_path / "d"
    rgb = photo(3)
    grey16 = (np.linspace(0, 65535, S * S).reshape(S, S)).astype(np.uint16)
    rgba = np.concatenate([rgb, np.full((S, S, 1), 7, np.uint8)], axis=2)
    yy, xx = np.mgrid[:S, :S]
    smooth = np.stack([xx * 8, yy * 8, np.full_like(xx, 128)], axis=2).astype(np.uint8)
    save(smooth, root / "images" / "a.jpg", quality=95)
    save(grey16, root / "images" / "b.png", "I;16")
    save(rgba, root / "images" / "c.png")
    save(rgb[..., 0], root / "images" / "d.gif")
    save(rgb, root / "images" / "e.bmp")
    save(rgb, root / "images" / "f.tif")
    for n in "abcdef":
        save(disc(), root / "masks" / f"{n}.png")
    ds = SegmentationDataset(root, split="all", image_size=None)
    got = {ds.pairs[i].case_id: ds.native_image(i) for i in range(len(ds))}
    assert all(v.shape == (S, S, 3) and v.dtype == np.uint8 for v in got.values())
    np.testing.assert_array_equal(got["c"], rgb)  # alpha dropped
    np.testing.assert_array_equal(got["e"], rgb)
    np.testing.assert_array_equal(got["f"], rgb)
    b = got["b"]
    assert b[0, 0, 0] == 0 and b[-1, -1, 0] == 255 and np.array_equal(b[..., 0], b[..., 2])
    assert np.abs(got["a"].astype(int) - smooth).mean() < 4


# --- splits -----------------------------------------------------------------------------------


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


# --- dataset ----------------------------------------------------------------------------------


def test_dataset_sample(tmp_path):
    root = tmp_path / "d"
    img = photo(0, size=40)
    save(img, root / "images" / "a.png")
    save(disc(size=40, r=10)[:, :], root / "masks" / "a.png")
    save(photo(1, size=40), root / "images" / "b.png")
    save(np.zeros((40, 40), np.uint8), root / "masks" / "b.png")
    ds = SegmentationDataset(root, split="all", image_size=(16, 32))
    assert len(ds) == 2 and ds.case_ids == ["a", "b"]
    s = ds[0]
    assert s["image"].shape == (3, 16, 32) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["mask"].shape == (16, 32) and s["mask"].dtype == torch.int64
    assert set(s["mask"].unique().tolist()) == {0, 1}
    assert s["case_id"] == "a" and s["orig_size"].tolist() == [40, 40] and s["index"] == 0
    # same pixels as the inference path, up to the 1/255 rounding
    from segdino.inference import resize_image, to_tensor

    ref = resize_image(to_tensor(img), (16, 32))
    assert float((s["image"] - ref).abs().max()) <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(ds.native_mask(0), (disc(size=40, r=10) > 0).astype(np.uint8))
    np.testing.assert_array_equal(ds.native_image(0), img)
    assert int(ds[1]["mask"].sum()) == 0
    assert ds[-1]["case_id"] == "b"
    with pytest.raises(IndexError):
        ds[2]


def test_dataset_splits_and_cache(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=10)
    parts = {k: SegmentationDataset(root, split=k, image_size=16) for k in ("train", "val", "test")}
    assert {k: len(v) for k, v in parts.items()} == {"train": 8, "val": 1, "test": 1}
    assert parts["train"].splits.source.startswith("seeded")
    ids = [set(v.case_ids) for v in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2])
    plain = parts["train"]
    cached = SegmentationDataset(root, split="train", image_size=16, cache=True)
    cached.preload(num_threads=2)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["orig_size"], b["orig_size"])
    with pytest.raises(ConfigError):
        plain.preload()
    pairs = find_pairs(root)
    from_pairs = SegmentationDataset(pairs, split="val", splits=plain.splits, image_size=16)
    assert from_pairs.case_ids == parts["val"].case_ids
    with pytest.raises(ConfigError, match="splits="):
        SegmentationDataset(pairs, split="val")
    with pytest.raises(ConfigError, match="split must be"):
        SegmentationDataset(root, split="training")


def test_dataset_transform_is_reproducible(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=3)
    ds = SegmentationDataset(root, split="all", image_size=32, transform=T.segdino_transforms(), seed=7)
    a = ds[0]
    assert torch.equal(a["image"], ds[0]["image"]) and torch.equal(a["mask"], ds[0]["mask"])
    changed = False
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        changed |= not torch.equal(ds[0]["image"], a["image"])
    assert changed
    ds.set_epoch(0)
    assert torch.equal(ds[0]["image"], a["image"])
    assert sample_seed(7, 0, 0) != sample_seed(7, 0, 1) != sample_seed(7, 1, 0)


def test_dataset_bad_samples_name_files(tmp_path):
    root = make_images_dataset(tmp_path / "d", n=3)
    data = (root / "images" / "img01.png").read_bytes()
    (root / "images" / "img01.png").write_bytes(data[: len(data) // 2])
    save(disc(size=S + 8), root / "masks" / "img02.png")
    ds = SegmentationDataset(root, split="all", image_size=16)
    assert ds[0]["case_id"] == "img00"
    with pytest.raises(DataError, match="img01.png"):
        ds[1]
    with pytest.raises(DataError, match=r"img02.png.*differs from its image .*img02.png"):
        ds[2]
    save(disc(value=3), root / "masks" / "img00.png")
    with pytest.raises(DataError, match=r"img00.png.*values 3 do not fit num_classes=2"):
        SegmentationDataset(root, split="all", num_classes=2, image_size=16)[0]
    save(photo(), root / "images" / "lonely.png")
    with pytest.raises(DataError, match="lonely.png"):
        SegmentationDataset(root, split="all")
    assert len(SegmentationDataset(root, split="all", allow_unpaired=True)) == 3


# --- transforms -------------------------------------------------------------------------------


def _pair(seed=0, size=48):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=g)
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[10:30, 5:20] = 1
    mask[35:40, 30:45] = 2
    return image, mask


@pytest.mark.parametrize("recipe", [T.paper_transforms, T.segdino_transforms])
def test_recipes_are_reproducible_and_keep_labels(recipe):
    t = recipe()
    image, mask = _pair()
    outs = []
    for seed in range(12):
        a = t(image.clone(), mask.clone(), generator=torch.Generator().manual_seed(seed))
        b = t(image.clone(), mask.clone(), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].shape == image.shape and a[1].shape == mask.shape and a[1].dtype == torch.long
        assert set(a[1].unique().tolist()) <= {0, 1, 2}
        assert 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0
        outs.append(a)
    assert len({o[0].sum().item() for o in outs}) > 6  # the seeds really draw different changes


def test_flips_and_affine_move_image_and_mask_together():
    image, mask = _pair()
    image[0] = (mask == 1).float()  # a channel that mirrors the mask
    for t in (T.RandomFlip(True, p=1.0), T.RandomFlip(False, p=1.0),
              T.RandomAffine(degrees=15, scale=(0.9, 1.1), translate=0.05, p=1.0)):
        g = torch.Generator().manual_seed(1)
        im, m = t(image.clone(), mask.clone(), generator=g)
        agree = ((im[0] > 0.5) == (m == 1)).float().mean()
        assert agree > 0.97, t
    im, m = T.RandomFlip(True, p=1.0)(image, mask)
    assert torch.equal(m, mask.flip(-1)) and torch.equal(im, image.flip(-1))


def test_paper_rotation_uses_whole_degrees(monkeypatch):
    F, _ = T._tv()
    seen = []
    real = F.affine

    def spy(x, **kw):
        seen.append(kw["angle"])
        return real(x, **kw)

    monkeypatch.setattr(F, "affine", spy)
    t = T.RandomAffine(degrees=15, p=1.0, whole_degrees=True)
    image, mask = _pair()
    for s in range(20):
        t(image, mask, generator=torch.Generator().manual_seed(s))
    assert seen and all(a == int(a) and -15 <= a <= 15 for a in seen)


def test_color_jitter_changes_image_only_and_spares_grey():
    image, mask = _pair()
    t = T.ColorJitter(0.2, 0.2, 0.1, 0.05, p=1.0)
    im, m = t(image.clone(), mask.clone(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, mask) and not torch.equal(im, image)
    grey = image[:1].expand(3, -1, -1).clone()
    gi, _ = T.ColorJitter(0.0, 0.0, 0.5, 0.5, p=1.0)(grey.clone(), mask, generator=torch.Generator())
    assert torch.equal(gi, grey)


def test_rotate_hue():
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(T.rotate_hue(red.clone(), 1 / 3).flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    grey = torch.full((3, 4, 4), 0.4)
    assert torch.allclose(T.rotate_hue(grey.clone(), 0.1), grey)


def test_missing_torchvision_is_a_config_error(monkeypatch):
    monkeypatch.setattr(T, "_TV", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms.v2", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms.v2.functional", None)
    with pytest.raises(ConfigError, match=r"torchvision, a dependency of segdino.*reinstall segdino.*--augment none"):
        T.paper_transforms()
    assert T.build_transforms("none") is None
    with pytest.raises(ConfigError, match="unknown augmentation"):
        T.build_transforms("strong")


# --- data check -------------------------------------------------------------------------------


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


def test_data_command_without_subcommand(capsys):
    assert cli_main(["data"]) == 2


def test_debug_is_accepted_before_or_after_any_subcommand(tmp_path, capsys):
    """``--debug`` shows the traceback wherever it stands; without it, one line and exit 2."""
    missing = str(tmp_path / "none")
    train = ["train", "--data", missing, "--out", str(tmp_path / "run")]
    assert cli_main(train) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    for argv in (["--debug", *train], [*train, "--debug"], ["train", "--debug", "--data", missing, "--out",
                                                            str(tmp_path / "run")]):
        with pytest.raises(DataError, match="no such folder"):
            cli_main(argv)
    # Nested subcommands too: the check runs (exit 1: not usable) instead of argparse refusing the flag.
    assert cli_main(["data", "check", "--data", missing, "--debug"]) == 1
    assert "NOT usable" in capsys.readouterr().out
