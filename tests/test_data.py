"""The Dataset and augmentations of segdino.data, on small files written by the tests."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from segdino.data import transforms as T
from segdino.data.dataset import SegmentationDataset, sample_seed
from segdino.data.layouts import find_pairs
from segdino.errors import ConfigError, DataError
from tests.data.files import S, disc, photo, save, make_images_dataset


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


def test_every_augmentation_name_the_config_accepts_builds_and_the_rigid_one_keeps_sizes():
    from segdino.train_config import AUGMENTATIONS

    assert set(T.RECIPES) | {"none"} == set(AUGMENTATIONS)
    for name in AUGMENTATIONS:
        assert (T.build_transforms(name) is None) == (name == "none")
    rigid = T.build_transforms("segdino-intensity-rigid")
    warp = next(t for t in rigid.transforms if isinstance(t, T.RandomAffine))
    assert warp.scale == (1.0, 1.0) and warp.translate == 0.0 and warp.degrees == 15


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


def test_shift_hue_hsv_matches_torchvision():
    F = pytest.importorskip("torchvision.transforms.functional")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 24, 20, generator=g),
              torch.rand(1, 8, 8, generator=g).expand(3, -1, -1).clone(),  # grey: no hue
              (torch.rand(3, 16, 16, generator=g) * 4).round() / 4,  # many ties between channels
              torch.eye(3).view(3, 3, 1).expand(3, 3, 5).clone()]  # pure red, green, blue
    for shift in (-0.5, -0.05, 0.0, 0.02, 1 / 3, 0.5):
        for x in images:
            ours = T.shift_hue_hsv(x.clone(), shift)
            assert torch.allclose(ours, F.adjust_hue(x.clone(), shift), atol=1e-5), shift
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(T.shift_hue_hsv(red, 1 / 3).flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


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
