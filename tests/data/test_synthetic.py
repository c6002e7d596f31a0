"""Synthetic data: learnable by texture and shape, not by brightness."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segdino.data import synthetic as syn
from segdino.errors import DataError


@pytest.fixture(scope="module")
def images64():
    return syn.make_images(80, 64, seed=5)


def _grey(images):
    return np.asarray(images, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def _mean_dice(pred, masks):
    out = []
    for p, g in zip(pred, masks):
        s = p.sum() + g.sum()
        out.append(1.0 if s == 0 else 2 * (p & g).sum() / s)
    return float(np.mean(out))


# --- 2D images ------------------------------------------------------------------------------


def test_make_image_shapes_dtypes_and_determinism():
    img, mask = syn.make_image(np.random.default_rng(3), size=(48, 80))
    assert img.shape == (48, 80, 3) and img.dtype == np.uint8
    assert mask.shape == (48, 80) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    img2, mask2 = syn.make_image(np.random.default_rng(3), size=(48, 80))
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    img3, _ = syn.make_image(np.random.default_rng(4), size=(48, 80))
    assert not np.array_equal(img, img3)
    a, am = syn.make_images(3, 32, seed=9)
    b, bm = syn.make_images(5, 32, seed=9)
    # Image i depends only on (seed, i), not on how many are made.
    assert np.array_equal(a, b[:3]) and np.array_equal(am, bm[:3])


def test_bad_size_is_a_data_error():
    with pytest.raises(DataError):
        syn.make_image(np.random.default_rng(0), size=(8, 8))
    with pytest.raises(DataError):
        syn.make_image(np.random.default_rng(0), size="big")


def test_lesion_counts_sizes_and_empty_images(images64):
    _, masks = images64
    counts = [ndimage.label(m)[1] for m in masks]
    assert max(counts) <= 3
    assert sum(c == 0 for c in counts) >= 3  # some images have no lesion
    assert sum(c == 0 for c in counts) <= 0.25 * len(masks)  # but not so many that "predict nothing" wins
    areas = []
    for m in masks:
        lab, n = ndimage.label(m)
        areas += list(np.bincount(lab.ravel())[1:])
    areas = np.array(areas)
    assert (areas < 200).sum() >= 3  # small lesions (under ~16 px across)
    assert (areas >= 254).sum() >= 0.5 * len(areas)  # most are >= 18 px across


def test_lesions_have_the_background_brightness(images64):
    images, masks = images64
    grey = _grey(images)
    diffs = []
    for g, m in zip(grey, masks.astype(bool)):
        if m.sum() < 150:
            continue
        ring = ndimage.binary_dilation(m, iterations=6) & ~ndimage.binary_dilation(m, iterations=2)
        diffs.append(g[m].mean() - g[ring].mean())
        # Same contrast too: the lesion's spread is close to its surroundings'.
        assert 0.6 < g[m].std() / g[ring].std() < 1.6
    diffs = np.abs(diffs)
    assert len(diffs) >= 30
    assert diffs.mean() < 3.0 and np.median(diffs) < 2.0 and diffs.max() < 12.0


@pytest.mark.parametrize("size", [64, 128])
def test_threshold_baseline_fails_on_generated_images(size):
    images, masks = syn.make_images(60 if size == 64 else 30, size, seed=11)
    dice, thr, pol = syn.best_global_threshold_dice(images, masks)
    assert dice < 0.3
    assert pol in ("above", "below") and -0.5 <= thr <= 255.5


def test_threshold_baseline_finds_a_brightness_lesion():
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(6):
        g = rng.integers(40, 120, size=(32, 32)).astype(np.uint8)
        m = np.zeros((32, 32), np.uint8)
        if i:  # one empty image: the perfect threshold predicts nothing there
            m[4 : 10 + i, 8:20] = 1
            g[m == 1] = rng.integers(150, 200, size=int(m.sum()))
        images.append(np.repeat(g[..., None], 3, axis=2))
        masks.append(m * 255)  # 0/255 masks are read with threshold 127
    dice, thr, pol = syn.best_global_threshold_dice(images, masks)
    assert dice == pytest.approx(1.0) and pol == "above" and 119.5 <= thr <= 149.5
    # Dark lesions: the other polarity.
    inv = [255 - im for im in images]
    dice, thr, pol = syn.best_global_threshold_dice(inv, masks)
    assert dice == pytest.approx(1.0) and pol == "below"


def test_threshold_baseline_is_the_best_mean_per_image_dice(images64):
    images, masks = images64
    images, masks = images[:20], masks[:20].astype(bool)
    dice, thr, pol = syn.best_global_threshold_dice(images, masks)
    grey = np.rint(_grey(images))
    pred = grey > thr if pol == "above" else grey < thr
    assert _mean_dice(pred, masks) == pytest.approx(dice)
    # Brute force over every threshold and polarity agrees.
    best = max(_mean_dice(grey > t, masks) for t in np.arange(-0.5, 256, 1.0))
    best = max(best, max(_mean_dice(grey < t, masks) for t in np.arange(-0.5, 256, 1.0)))
    assert dice == pytest.approx(best)


def test_threshold_baseline_rejects_mismatched_inputs():
    with pytest.raises(DataError):
        syn.best_global_threshold_dice([np.zeros((8, 8, 3), np.uint8)], [])
    with pytest.raises(DataError):
        syn.best_global_threshold_dice([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 9), np.uint8)])


def test_write_dataset_layout(tmp_path):
    root = syn.write_dataset(tmp_path / "ds", 5, 2, 3, size=(48, 64), seed=7)
    assert root == tmp_path / "ds"
    splits = json.loads((root / "splits.json").read_text())
    assert [len(splits[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    stems = splits["train"] + splits["val"] + splits["test"]
    assert len(set(stems)) == 10
    assert sorted(p.stem for p in (root / "images").glob("*.png")) == sorted(stems)
    assert sorted(p.stem for p in (root / "masks").glob("*.png")) == sorted(stems)
    expected_img, expected_mask = syn.make_images(10, (48, 64), seed=7)
    for i, stem in enumerate(sorted(stems)):
        img = np.asarray(Image.open(root / "images" / f"{stem}.png"))
        mask = np.asarray(Image.open(root / "masks" / f"{stem}.png"))
        assert img.shape == (48, 64, 3) and mask.shape == (48, 64)
        assert set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(img, expected_img[i]) and np.array_equal(mask > 127, expected_mask[i] == 1)
    # Writing again into the same folder is fine; foreign files are refused.
    syn.write_dataset(root, 5, 2, 3, size=(48, 64), seed=7)
    (root / "images" / "other.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="other.jpg"):
        syn.write_dataset(root, 5, 2, 3, size=(48, 64), seed=7)


# --- 3D volumes -----------------------------------------------------------------------------

SHAPE = (16, 64, 64)


@pytest.fixture(scope="module")
def volumes():
    return syn.make_volumes(5, SHAPE, seed=2)


def test_make_volume_shapes_labels_and_determinism(volumes):
    vols, labs = volumes
    assert vols.shape == (5, *SHAPE) and vols.dtype == np.float32
    assert labs.shape == (5, *SHAPE) and labs.dtype == np.uint8
    assert set(np.unique(labs)) == {0, 1, 2}
    assert vols.min() < -900 and 50 < vols[labs == 1].mean() < 130  # air and soft-tissue HU
    for v in labs:
        lesion = v == 2
        if lesion.any():
            # Lesions lie inside the organ: every lesion component touches organ voxels.
            assert (ndimage.binary_dilation(lesion) & (v == 1)).any()
            assert lesion.sum() < 0.5 * (v > 0).sum()
    v2, l2 = syn.make_volume(np.random.default_rng([2, 0]), SHAPE)
    assert np.array_equal(v2, vols[0]) and np.array_equal(l2, labs[0])


def test_volume_lesions_defeat_an_intensity_threshold(volumes):
    vols, labs = volumes
    dice, thr, pol = syn.best_volume_threshold_dice(vols, labs, label=2)
    assert dice < 0.3
    # The organ, in contrast, is visible by intensity: the baseline is not broken.
    organ, _, _ = syn.best_volume_threshold_dice(vols, labs, label=1)
    assert organ > 0.6
    organ_hu, lesion_hu = vols[labs == 1], vols[labs == 2]
    assert abs(organ_hu.mean() - lesion_hu.mean()) < 0.75 * organ_hu.std()


def test_write_volume_dataset_layout(tmp_path):
    nib = pytest.importorskip("nibabel")
    spacing = (2.5, 0.8, 0.8)
    root = syn.write_volume_dataset(tmp_path / "vols", 2, 1, 1, shape=SHAPE, seed=4, spacing=spacing)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    folds = json.loads((root / "splits_final.json").read_text())
    assert len(folds) == 1 and len(folds[0]["train"]) == 2 and len(folds[0]["val"]) == 1
    train_cases = folds[0]["train"] + folds[0]["val"]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in train_cases)
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == sorted(f"{c}.nii.gz" for c in train_cases)
    (test_img,) = (root / "imagesTs").iterdir()
    (test_lab,) = (root / "labelsTs").iterdir()
    assert test_img.name == test_lab.name.replace(".nii.gz", "_0000.nii.gz")

    case = folds[0]["train"][0]
    img = nib.load(root / "imagesTr" / f"{case}_0000.nii.gz")
    lab = nib.load(root / "labelsTr" / f"{case}.nii.gz")
    assert img.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # stored (x, y, z)
    assert np.allclose(img.header.get_zooms(), (0.8, 0.8, 2.5))
    assert np.allclose(img.affine, lab.affine)
    direction = img.affine[:3, :3] / np.array([0.8, 0.8, 2.5])
    assert not np.allclose(direction, np.eye(3))  # a flipped orientation, as scanners write
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    vol, labels = syn.make_volume(np.random.default_rng([4, 0]), SHAPE, spacing)
    stored = np.transpose(np.asarray(img.dataobj), (2, 1, 0))
    assert stored.dtype == np.int16 and np.array_equal(stored, np.clip(np.rint(vol), -1024, 3071))
    assert np.array_equal(np.transpose(np.asarray(lab.dataobj), (2, 1, 0)), labels)
    # Voxel (0, 0, 0) lies at the corner the affine says: x runs right-to-left.
    assert img.affine[0, 0] < 0 and img.affine[2, 2] > 0
