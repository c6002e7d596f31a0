"""Small lesions in whole scans: resampling, patches, sliding windows, flips, ensembles, folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from segdino.errors import CheckpointError, ConfigError, DataError
from segdino.folds import ensure_folds, make_folds, patient_of
from segdino.resample import (
    check_spacing,
    parse_spacing,
    resample_image,
    resample_labels,
    resample_labels_to_shape,
    resample_to_grid,
    resampled_affine,
    resampled_shape,
)
from segdino.sliding_window import (
    TTA_FLIPS,
    AveragedModel,
    gaussian_weight,
    sliding_window,
    tile_starts,
)

nib = pytest.importorskip("nibabel")


# --- resampling ---------------------------------------------------------------------------------


def _lesion_volume(shape=(48, 44, 14)):
    lab = np.zeros(shape, dtype=np.uint8)
    ii, jj, kk = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    for (ci, cj, ck), (ri, rj, rk) in [((10.3, 12.7, 4.2), (3.1, 2.6, 1.4)), ((30.5, 30.1, 8.6), (5.2, 4.4, 2.2)),
                                       ((38.2, 9.6, 10.1), (2.2, 2.9, 1.2))]:
        lab[((ii - ci) / ri) ** 2 + ((jj - cj) / rj) ** 2 + ((kk - ck) / rk) ** 2 <= 1] = 1
    return lab


def _world_centroids(lab, affine):
    comps, n = ndimage.label(lab)
    cents = np.asarray(ndimage.center_of_mass(lab > 0, comps, range(1, n + 1)))
    return cents @ affine[:3, :3].T + affine[:3, 3]


def test_label_volume_resampled_there_and_back_keeps_every_lesion_in_place():
    spacing = (0.7, 0.8, 2.5)
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = [-12.0, 30.0, 5.0]
    lab = _lesion_volume()
    target = (1.1, 1.1, 1.1)  # coarser in-plane, finer across slices
    there = resample_labels(lab, spacing, target)
    assert there.shape == resampled_shape(lab.shape, spacing, target)
    there_affine = resampled_affine(affine, lab.shape, there.shape)
    back = resample_labels_to_shape(there, lab.shape)
    c0 = _world_centroids(lab, affine)
    c1 = _world_centroids(there, there_affine)
    c2 = _world_centroids(back, affine)
    assert len(c0) == len(c1) == len(c2) == 3
    half_target = np.asarray(there_affine[:3, :3].diagonal()) / 2
    half_source = np.asarray(spacing) / 2
    assert np.all(np.abs(c1 - c0) <= half_target), (c0, c1)
    assert np.all(np.abs(c2 - c0) <= half_source), (c0, c2)


def test_image_resampling_keeps_the_field_of_view_and_2d_channels():
    img = np.zeros((40, 60, 3), dtype=np.float32)
    img[10:20, 30:40] = 1.0
    out = resample_image(img, (0.5, 0.5), (1.0, 1.0))  # a 2D image with channels: leading axes only
    assert out.shape == (20, 30, 3)
    assert abs(out[..., 0].sum() * 4 - img[..., 0].sum()) < 1e-3 * img[..., 0].sum() + 1e-3
    com = np.asarray(ndimage.center_of_mass(out[..., 0])) * 2 + 0.5  # new index -> old index
    assert np.allclose(com, ndimage.center_of_mass(img[..., 0]), atol=0.25)


def test_tiled_prediction_resamples_on_the_device_exactly_as_scipy_does():
    # logits_at_spacing resizes images in and logits back with torch (on the model's device); it
    # must be the grid of resample_to_shape (SciPy): same centres, replicated edges, no smoothing.
    from segdino.ops import resize_logits
    from segdino.resample import resample_to_shape

    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 37, 53)).astype(np.float32))
    for shape in ((74, 106), (20, 31), (37, 80), (100, 41)):
        want = resample_to_shape(np.ascontiguousarray(x.numpy().transpose(2, 3, 0, 1)), shape).transpose(2, 3, 0, 1)
        assert np.abs(resize_logits(x, shape).numpy() - want).max() < 1e-5


def test_grid_resampling_through_affines_and_bad_spacing():
    lab = _lesion_volume()
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    aff2 = resampled_affine(aff, lab.shape, (24, 22, 7))
    moved = resample_to_grid(lab, aff, aff2, (24, 22, 7), order=0)
    assert moved.shape == (24, 22, 7) and moved.dtype == lab.dtype and moved.max() == 1
    for bad in ([0.0, 1.0], [float("nan"), 1.0], [-1.0, 1.0]):
        with pytest.raises(DataError, match="scan.nii.gz"):
            check_spacing(bad, "scan.nii.gz")
    assert parse_spacing("auto") == "auto" and parse_spacing("0.7,0.8") == (0.7, 0.8) and parse_spacing("1") == (1.0, 1.0)
    with pytest.raises(ConfigError):
        parse_spacing("0,1")


# --- sliding windows, flips, ensembles -----------------------------------------------------------


class _Stand(torch.nn.Module):
    """Translation-equivariant stand-in: two 3x3 convolutions (receptive field radius 2)."""

    def __init__(self, k=1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, k, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_sliding_window_equals_whole_input_prediction_away_from_borders():
    model = _Stand(2).eval()
    x = torch.randn(2, 3, 75, 101, generator=torch.Generator().manual_seed(1))
    tile, overlap, r = (32, 32), 0.5, 2
    with torch.no_grad():
        whole = model(x)
        tiled = sliding_window(model, x, tile, overlap, batch_size=5)
    assert tiled.shape == whole.shape
    # Pixels within the receptive field of a tile's inner edge see that tile's zero padding.
    seen_edge = np.zeros(x.shape[-2:], dtype=bool)
    for y in tile_starts(75, 32, overlap):
        for xx in tile_starts(101, 32, overlap):
            inner = np.zeros_like(seen_edge)
            inner[y : y + 32, xx : xx + 32] = True
            core = np.zeros_like(seen_edge)
            core[y + r : y + 32 - r, xx + r : xx + 32 - r] = True
            seen_edge |= inner & ~core
    keep = ~seen_edge
    keep[:r], keep[-r:], keep[:, :r], keep[:, -r:] = False, False, False, False
    assert keep.mean() > 0.3
    diff = (tiled - whole).abs()[..., torch.from_numpy(keep)]
    assert float(diff.max()) < 1e-5
    # Where tiles are cut the blend differs (the test above would notice a blend of nothing).
    assert float((tiled - whole).abs()[..., torch.from_numpy(seen_edge)].max()) > 1e-4


def test_tiles_cover_and_weight_peaks_in_the_middle():
    assert tile_starts(100, 32, 0.5)[0] == 0 and tile_starts(100, 32, 0.5)[-1] == 68
    assert tile_starts(20, 32, 0.5) == [0]
    starts = tile_starts(100, 32, 0.5)
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))
    w = gaussian_weight((32, 32))
    assert float(w.max()) == 1.0 and float(w.min()) > 0 and float(w[15, 15]) > float(w[0, 0])
    small = torch.randn(1, 3, 20, 24)
    out = sliding_window(_Stand(1).eval(), small, (32, 32))
    assert out.shape == (1, 1, 20, 24)


class _Ramp(torch.nn.Module):
    """Not flip-symmetric: the logit is the column index scaled, plus a constant."""

    def __init__(self, c, k=1):
        super().__init__()
        self.c, self.k = c, k
        self.config = type("C", (), dict(num_classes=k, image_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1),
                                         volume=None))()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=torch.float32) * 0.3 + self.c
        out = ramp.expand(x.shape[0], self.k, x.shape[-2], x.shape[-1]).clone()
        if self.k > 1:
            out[:, 0] = 0.0
        return out


def test_ensembles_and_flips_average_probabilities():
    x = torch.zeros(1, 3, 8, 8)
    a, b = _Ramp(-1.0), _Ramp(0.5)
    avg = AveragedModel([a, b])
    want = (torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2
    assert torch.allclose(torch.sigmoid(avg(x)), want, atol=1e-6)
    tta = AveragedModel([a], TTA_FLIPS)
    p = torch.sigmoid(a(x))
    want = (p + p.flip(-1) + p + p.flip(-1)) / 4  # an up-down flip changes nothing for a column ramp
    assert torch.allclose(torch.sigmoid(tta(x)), want, atol=1e-6)
    multi = AveragedModel([_Ramp(0.0, 3), _Ramp(1.0, 3)])
    want = (torch.softmax(_Ramp(0.0, 3)(x), 1) + torch.softmax(_Ramp(1.0, 3)(x), 1)) / 2
    assert torch.allclose(torch.softmax(multi(x), 1), want, atol=1e-6)


def test_ensemble_of_models_for_different_tasks_is_refused(tmp_path):
    import segdino
    from segdino.ensemble import load_models

    one = segdino.build_model("vitt16", num_classes=1, decoder_dim=16, image_size=32)
    three = segdino.build_model("vitt16", num_classes=3, decoder_dim=16, image_size=32)
    other_size = segdino.build_model("vitt16", num_classes=1, decoder_dim=16, image_size=48)
    for name, m in (("a", one), ("b", three), ("c", other_size)):
        segdino.save_model(m, tmp_path / f"{name}.safetensors")
    with pytest.raises(CheckpointError, match=r"b\.safetensors.*class count"):
        load_models([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], device="cpu")
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*input size"):
        load_models([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], device="cpu")
    runs = tmp_path / "folds"
    for k in range(2):
        (runs / f"fold_{k}").mkdir(parents=True)
        segdino.save_model(one, runs / f"fold_{k}" / "best.safetensors")
    model = load_models([runs], device="cpu", tta=True)
    assert isinstance(model, AveragedModel) and len(model.members) == 2 and len(model.flips) == 4


def test_fold_models_that_chose_different_minimum_sizes_ensemble_with_the_smallest():
    import dataclasses

    import segdino
    from segdino.volumes import volume_settings

    base = volume_settings({"kind": "ct", "low": -200.0, "high": 250.0}, "axial", 1)
    members = []
    for size in (30.0, 12.5, None):
        m = segdino.build_model("vitt16", num_classes=1, decoder_dim=16, image_size=32)
        vol = dict(base, **({} if size is None else {"min_size_mm3": size, "min_size_source": "validation"}))
        m.config = dataclasses.replace(m.config, volume=vol)
        members.append(m)
    both = AveragedModel(members[:2])
    assert both.config.volume["min_size_mm3"] == 12.5 and "smallest of 2" in both.config.volume["min_size_source"]
    assert both.config.volume["intensity"] == base["intensity"]
    # A member that removes nothing: the ensemble removes nothing either.
    assert "min_size_mm3" not in AveragedModel(members).config.volume
    other = segdino.build_model("vitt16", num_classes=1, decoder_dim=16, image_size=32)
    other.config = dataclasses.replace(other.config, volume=dict(base, context=2))
    with pytest.raises(CheckpointError, match="volume settings"):
        AveragedModel([members[0], other])


# --- folds -----------------------------------------------------------------------------------


def test_folds_are_disjoint_cover_every_case_once_and_keep_patients_together(tmp_path):
    ids = [f"lidc_{p:04d}_n{k}" for p in range(13) for k in range(1 + p % 3)]
    folds = make_folds(ids, 5, seed=3)
    vals = [set(f["val"]) for f in folds]
    assert sorted(c for v in vals for c in v) == sorted(ids)
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and set(f["train"]) | set(f["val"]) == set(ids)
        assert not {patient_of(c) for c in f["train"]} & {patient_of(c) for c in f["val"]}
    assert make_folds(ids, 5, seed=3) == folds and make_folds(ids, 5, seed=4) != folds
    with pytest.raises(DataError, match="datafolder"):
        make_folds(ids[:3], 5, where="datafolder")
    path = ensure_folds(tmp_path, ids, 5, seed=0)
    first = path.read_text()
    assert len(json.loads(first)) == 5
    assert ensure_folds(tmp_path, ids[::-1], 5, seed=9).read_text() == first  # made once, then reused
    with pytest.raises(ConfigError, match="splits_final.json"):
        ensure_folds(tmp_path, ids, 3)


# --- patches, planning and the volume pipeline -------------------------------------------------


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from segdino.data.whole_scan import write_whole_scan_dataset

    root = tmp_path_factory.mktemp("scans") / "data"
    return write_whole_scan_dataset(root, 4, 1, 1, shape=(10, 64, 80), spacing=(2.5, 1.0, 1.0), seed=1,
                                    lesions=(1, 2), diameters=(4.0, 10.0))


def _patch_set(scans, **kw):
    from segdino.volumes import ct_window, find_volume_cases
    from segdino.volumes.patches import VolumePatchDataset

    found = find_volume_cases(scans)
    args = dict(spacing=(1.6, 1.6), patch_size=(32, 32), axis="axial", context=1, intensity=ct_window(hu_range=(-200, 250)))
    args.update(kw)
    return VolumePatchDataset(found.split_cases("train"), **args)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_patches_hit_the_requested_foreground_share(scans, ratio):
    from segdino.training import EpochSampler

    ds = _patch_set(scans)
    fg = ds.foreground_indices()
    assert len(fg) and fg.min() >= len(ds)
    sampler = EpochSampler(ds, 8, seed=0, foreground=fg, foreground_ratio=ratio)
    keys = list(sampler)
    with_fg = []
    for epoch, index in keys:
        g = torch.Generator().manual_seed(epoch * 100003 + index)
        s = ds.train_sample(index, g)
        assert s["image"].shape == (3, 32, 32) and s["mask"].shape == (32, 32)
        with_fg.append(bool(s["mask"].any()))
    share = float(np.mean(with_fg))
    assert share >= ratio - 1e-9
    if ratio == 0.0:
        assert share < 0.5  # mostly empty scans: unforced patches rarely hold a lesion


def test_slices_smaller_than_a_patch_are_padded_and_resampled_to_the_target(scans):
    ds = _patch_set(scans, spacing=(2.0, 2.0), patch_size=(48, 48))
    norm, labels = ds.case_arrays(0)
    axis = ds.axes[0]
    in_plane = [s for a, s in enumerate(norm.shape) if a != axis]
    assert in_plane == [40, 32]  # 80 x 64 voxels of 1 mm (x, y) at 2 mm
    s = ds.train_sample(3)
    assert s["image"].shape == (3, 48, 48)
    assert float(s["image"][:, 32:].abs().max()) == 0.0 or float(s["image"][:, :, 40:].abs().max()) == 0.0


def _nifti_with_sform(path, rows, shape=(20, 20, 4)):
    """A NIfTI file whose header holds exactly these sform rows (nibabel would repair an affine)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr["sform_code"] = 1
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = rows
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), None, header=hdr), str(path))


def test_planning_uses_the_median_and_refuses_bad_spacing_and_oversized_patches(scans, tmp_path):
    from segdino.volumes import find_volume_cases
    from segdino.volumes.layouts import VolumeCase
    from segdino.volumes.planning import plan_volumes

    cases = find_volume_cases(scans).split_cases("train")
    plan = plan_volumes(cases, "axial", "auto", None)
    assert plan.spacing == pytest.approx((1.0, 1.0)) and plan.patch_size == (80, 64)
    plan = plan_volumes(cases, "axial", (2.0, 2.0), None)
    assert plan.patch_size == (48, 32)
    with pytest.raises(ConfigError, match=r"larger than every volume.*_0000\.nii\.gz"):
        plan_volumes(cases, "axial", (2.0, 2.0), (128, 128))
    for name, col in (("zero.nii.gz", 0.0), ("nan.nii.gz", float("nan"))):
        _nifti_with_sform(tmp_path / name, ([1.0, 0, 0, 0], [0, col, 0, 0], [0, 0, 2.5, 0]))
        case = VolumeCase(name, tmp_path / name, tmp_path / name)
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            plan_volumes([case], 2, "auto", None)


def test_evaluate_resamples_predictions_from_another_grid_when_asked(scans, tmp_path):
    from segdino.volumes import read_volume, write_nifti
    from segdino.volumes.evaluate import evaluate_volumes

    label_path = sorted((scans / "labelsTs").glob("*.nii.gz"))[0]
    label = read_volume(label_path)
    coarse = (label.shape[0] // 2, label.shape[1] // 2, label.shape[2])
    aff = resampled_affine(label.affine, label.shape, coarse)
    pred = resample_labels_to_shape(label.array, coarse)
    write_nifti(tmp_path / "pred" / label_path.name, pred, aff)
    with pytest.raises(DataError, match="voxel grid"):
        evaluate_volumes(scans, tmp_path / "r1", predictions=tmp_path / "pred", split="test")
    s = evaluate_volumes(scans, tmp_path / "r2", predictions=tmp_path / "pred", split="test", resample=True)
    assert s["resampled"] == [label_path.name.split(".")[0]]
    assert s["mean_over_classes"]["dice"]["mean"] > 0.6


def _cli(*args, cwd=None):
    import subprocess
    import sys

    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread: a shared small CPU thrashes with more
    return subprocess.run([sys.executable, "-m", "segdino", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=env)


def test_patch_training_records_its_plan_and_predicts_by_tiles_on_the_source_grid(scans, tmp_path):
    import yaml

    from segdino.volumes import read_volume

    run = tmp_path / "run"
    r = _cli("train", "--data", scans, "--out", run, "--backbone", "vitt16", "--decoder-dim", "16", "--epochs", "1",
             "--steps-per-epoch", "2", "--batch-size", "4", "--num-workers", "0", "--intensity", "ct:-200,250",
             "--spacing", "auto", "--patch-size", "32", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "plan: spacing 1 x 1 mm (median of 4 training cases), patch 32x32" in r.stdout
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["spacing"] == "1,1" and cfg["patch_size"] == [32, 32] and cfg["image_size"] == [32, 32]
    assert cfg["augment"] == "segdino-intensity"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["patch_size"] == [32, 32] and plan["median_shape"] == [80, 64]
    image = sorted((scans / "imagesTs").glob("*.nii.gz"))[0]
    r = _cli("predict", "--model", run, "--model", run / "best.safetensors", image, "--out", tmp_path / "pred",
             "--tta", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    pred = read_volume(tmp_path / "pred" / "masks" / image.name.replace("_0000", ""))
    src = read_volume(image)
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)


def test_bad_fold_and_patch_requests_are_one_line_naming_the_file(scans, tmp_path):
    common = ("--out", tmp_path / "r", "--backbone", "vitt16", "--decoder-dim", "16", "--epochs", "1",
              "--intensity", "ct:-200,250", "--device", "cpu", "--quiet")
    import shutil

    data = tmp_path / "nofolds"
    shutil.copytree(scans, data)
    (data / "splits_final.json").unlink()
    r = _cli("train", "--data", data, "--folds", "7", "--fold", "0", *common)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert str(data) in r.stderr and "7 folds" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (data / "splits_final.json").exists()
    r = _cli("train", "--data", scans, "--folds", "3", *common)
    assert r.returncode != 0 and "splits_final.json: holds 1 fold(s)" in r.stderr
    r = _cli("train", "--data", scans, "--spacing", "auto", "--patch-size", "256", *common)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "_0000.nii.gz" in r.stderr
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_the_default_plan_trains_crops_whole_and_scans_on_patches(scans, tmp_path):
    from types import SimpleNamespace

    from segdino.data.whole_scan import write_whole_scan_dataset
    from segdino.training.datasets import build_volume_datasets
    from segdino.train_config import resolve_config
    from segdino.volumes import find_volume_cases
    from segdino.volumes.planning import MIN_TOKENS, crop_plan, plan_volumes, wants_patches

    # 80 x 64 px at 1 mm: 4 tokens across, a crop: whole slices resized to the model's input.
    cases = find_volume_cases(scans).split_cases("train")
    crops = crop_plan(cases, "axial", (64, 64))
    assert crops is not None and crops.median_shape == (80, 64) and crops.median_source_spacing == (1.0, 1.0)
    assert f"under {MIN_TOKENS} tokens" in crops.describe() and "resized to 64x64" in crops.describe()
    cfg = resolve_config(dict(data=str(scans), out=str(tmp_path / "r"), intensity="ct:-200,250", image_size=64,
                              backbone="vitt16", num_workers=0))
    cfg.extra["explicit"] = []  # as from the command line without --image-size
    data = build_volume_datasets(cfg)
    assert type(data.train).__name__ == "VolumeSliceDataset" and data.plan.mode == "whole slices resized"
    assert "spacing" not in data.extra["volume"]  # predicted whole, resized, as trained
    # 128 px across at 1 mm is 8 tokens: patches at the median spacing.
    big = write_whole_scan_dataset(tmp_path / "big", 2, 1, 1, shape=(6, 128, 144), spacing=(2.5, 1.0, 1.0), seed=0,
                                   lesions=(1, 1), diameters=(6.0, 8.0))
    big_cases = find_volume_cases(big).split_cases("train")
    assert crop_plan(big_cases, "axial", (256, 256)) is None
    plan = plan_volumes(big_cases, "axial", None, None)
    assert plan.spacing == pytest.approx((1.0, 1.0)) and sorted(plan.patch_size) == [128, 144]
    cfg = lambda spacing=None, patch=None, explicit=(): SimpleNamespace(spacing=spacing, patch_size=patch,  # noqa: E731
                                                                          extra={"explicit": list(explicit)})
    assert wants_patches(cfg()) and wants_patches(cfg("auto")) and wants_patches(cfg(patch=(32, 32)))
    assert not wants_patches(cfg(explicit=["image_size"]))
    assert wants_patches(cfg(patch=(32, 32), explicit=["image_size"]))


def test_volumes_get_intensity_augmentation_greyscale_images_no_warp_and_photographs_colour_jitter(tmp_path):
    from PIL import Image

    from segdino.data.transforms import recipe_for_modality, single_channel_images

    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(grey)
    grey_rgb = tmp_path / "grey_rgb.png"  # ultrasound saved as RGB: three equal channels
    Image.fromarray(np.repeat(rng.integers(0, 255, (16, 16, 1), dtype=np.uint8), 3, axis=2)).save(grey_rgb)
    colour = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(colour)
    assert single_channel_images([grey, grey_rgb]) and not single_channel_images([grey, colour])
    assert not single_channel_images([])
    assert recipe_for_modality("segdino", True, volume=True) == "segdino-intensity"
    assert recipe_for_modality("segdino", True) == "paper"
    assert recipe_for_modality("segdino", False) == "segdino"
    assert recipe_for_modality("paper", True) == "paper" and recipe_for_modality("none", True) == "none"
