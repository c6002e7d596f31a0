"""Volume report figures and overlays: the slices they show, their titles and legends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

nib = pytest.importorskip("nibabel")

from segdino.volumes.evaluate import evaluate_volumes  # noqa: E402
from segdino.volumes.figures import png_title  # noqa: E402

SPACING = (0.7, 0.7, 2.5)
AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS-like, as DICOM-derived NIfTI often are


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), str(path))


def _dataset(tmp_path: Path):
    """Two CT-like cases (24 x 24 x 12): case a has a big lesion centred on slice 7 and a small one on
    slice 2; the prediction finds the big one, misses the small one and adds a false positive on
    slice 10. Case b is predicted exactly."""
    root = tmp_path / "ds"
    shape = (24, 24, 12)
    gts, preds = {}, {}
    gt = np.zeros(shape, np.uint8)
    gt[4:12, 4:12, 6:9] = 1
    gt[8:14, 6:12, 7] = 1  # widest on slice 7
    gt[18:20, 18:20, 2] = 1  # small, missed
    pred = np.zeros(shape, np.uint8)
    pred[5:12, 4:12, 6:9] = 1
    pred[2:5, 16:22, 10] = 1  # false positive
    gts["a"], preds["a"] = gt, pred
    gt_b = np.zeros(shape, np.uint8)
    gt_b[10:14, 10:14, 4:6] = 1
    gts["b"], preds["b"] = gt_b, gt_b.copy()
    rng = np.random.default_rng(0)
    for case, g in gts.items():
        _save(root / "imagesTr" / f"{case}_0000.nii.gz",
              (rng.normal(-800, 30, shape) + 900.0 * g).astype(np.int16))
        _save(root / "labelsTr" / f"{case}.nii.gz", g)
        _save(tmp_path / "preds" / f"{case}.nii.gz", preds[case])
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                   "nodule": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    return root, gts


def _slice_in(title: str) -> int:
    m = re.search(r"axial slice (\d+)", title)
    assert m, title
    return int(m.group(1))


def test_lesion_figures_show_the_slice_of_each_lesion(tmp_path):
    root, gts = _dataset(tmp_path)
    out = tmp_path / "report"
    evaluate_volumes(root, out, predictions=tmp_path / "preds", split="all")
    figs = out / "figures"

    lab, n = ndimage.label(gts["a"], structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    largest = lab == (int(np.argmax(sizes)) + 1)
    expected = int(np.argmax(largest.sum(axis=(0, 1))))
    assert expected == 7
    title = png_title(figs / "lesion_1_largest_lesion.png")
    assert title.startswith("a, nodule: largest lesion") and _slice_in(title) == expected
    assert "mm" in title and "Dice" in title

    missed = png_title(figs / "lesion_1_largest_missed_lesion.png")
    assert _slice_in(missed) == 2 and "lesion Dice 0.000" in missed
    fp = png_title(figs / "lesion_1_largest_false_positive.png")
    assert _slice_in(fp) == 10

    report = (out / "report.md").read_text()
    assert "## Lesions" in report and "figures/lesion_1_largest_lesion.png" in report and title in report
    # The strip of the lowest case (a) holds every slice with ground truth or prediction: 2, 6-8, 10.
    strip = png_title(figs / "strip_1.png")
    assert strip.startswith("a, mean Dice") and "5 axial slice(s) 2-10" in strip
    # Readable: the lesion figure is drawn large, not at the 24 px of the volume.
    from PIL import Image

    with Image.open(figs / "lesion_1_largest_lesion.png") as im:
        assert min(im.size) >= 400


def test_volume_overlays_are_the_slices_holding_predictions(tmp_path):
    from tests.volumes.test_evaluate import ThresholdModel

    from segdino.volumes.predict import predict_volume_files

    vol = np.zeros((32, 32, 10), np.int16)
    vol[4:12, 4:12, 2:5] = 800  # predicted on axial slices 2, 3, 4
    vol[20:26, 20:26, 7] = 800  # and 7
    src = tmp_path / "in" / "scan.nii.gz"
    _save(src, vol)
    results = predict_volume_files(ThresholdModel(image_size=(32, 32)), [src], tmp_path / "out", overlays=True)
    assert results[0][2] is None
    slices = sorted(p.name for p in (tmp_path / "out" / "overlays" / "scan").iterdir())
    assert slices == ["slice_002.png", "slice_003.png", "slice_004.png", "slice_007.png"]
    montage = tmp_path / "out" / "overlays" / "scan.png"
    assert png_title(montage) == "scan: prediction on 4 of 10 axial slices (2-7)"
    from PIL import Image

    with Image.open(tmp_path / "out" / "overlays" / "scan" / "slice_003.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    assert min(rgb.shape[:2]) >= 256  # enlarged from 32 px
    # Tinted in the first class colour (magenta) where predicted, grey elsewhere.
    assert (np.abs(rgb[..., 0].astype(int) - rgb[..., 1]) > 50).any()


def test_predict_command_volume_overlays_and_refused_options(tmp_path, capsys):
    from segdino.cli import main

    vol = np.zeros((32, 32, 6), np.int16)
    src = tmp_path / "scan.nii.gz"
    _save(src, vol)
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"never read: the options are refused before any model loads")
    for flag, value in (("--keep-size", None), ("--probability-format", "npy"), ("--label-values", "index")):
        argv = ["predict", "--model", str(ckpt), str(src), "--out", str(tmp_path / "o"), flag]
        code = main(argv + ([value] if value else []))
        err = capsys.readouterr().err
        assert code != 0 and flag in err and "--overlays" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
