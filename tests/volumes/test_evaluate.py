"""Volume prediction from files and volume evaluation: world coordinates, outputs, matching, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

nib = pytest.importorskip("nibabel")

from segdino.config import ModelConfig  # noqa: E402
from segdino.errors import ConfigError, DataError  # noqa: E402
from segdino.metrics import case_metrics  # noqa: E402
from segdino.summary_file import read_summary  # noqa: E402
from segdino.volumes import ct_window, read_volume, volume_settings  # noqa: E402
from segdino.volumes.evaluate import evaluate_volumes  # noqa: E402
from segdino.volumes.predict import is_volume_input, predict_volume_files  # noqa: E402

SPACING = (0.7, 0.7, 2.5)


class ThresholdModel(torch.nn.Module):
    """Stand-in for a trained model: labels a pixel by thresholding the slice intensity in [0, 1]
    that the volume pipeline fed it (normalisation undone). With 2.5D context the three channels
    are slices i-k, i, i+k and a pixel counts as bright only when it is bright in all three."""

    def __init__(self, thresholds=(0.6,), image_size=(48, 48), context=0, axis="axial", intensity=None):
        super().__init__()
        k = 1 if len(thresholds) == 1 else len(thresholds) + 1
        self.config = ModelConfig(backbone="vitt16", num_classes=k, decoder_dim=32, image_size=image_size,
                                  volume=volume_settings(intensity or ct_window(hu_range=(0.0, 1000.0)),
                                                         axis=axis, context=context))
        self.thresholds = tuple(thresholds)
        self.register_buffer("mean", torch.tensor(self.config.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.config.std).view(1, 3, 1, 1))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device, like a real model

    def forward(self, x):
        v = (x * self.std + self.mean).min(dim=1).values
        if len(self.thresholds) == 1:
            return ((v - self.thresholds[0]) * 40.0)[:, None]
        labels = sum((v > t).long() for t in self.thresholds)
        return F.one_hot(labels, self.config.num_classes).permute(0, 3, 1, 2).float() * 10.0


class DeviceBoundModel:
    """Like an ONNX model: no parameters, a fixed ``.device``, callable on a normalised batch."""

    def __init__(self, inner: ThresholdModel):
        self.inner, self.config, self.device = inner, inner.config, torch.device("cpu")

    def eval(self):
        return self

    def __call__(self, x):
        return self.inner(x)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def load(path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def world_of(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.asarray(idx, dtype=float) @ affine[:3, :3].T + affine[:3, 3]


def oblique_affine() -> np.ndarray:
    """Array axis 0 runs foot-wards (2.5 mm), axis 1 right-wards and axis 2 posterior-wards
    (0.7 mm), the whole turned 10 degrees about the body axis: neither identity nor diagonal."""
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    cols = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float).T  # columns: world direction of each axis
    a = np.eye(4)
    a[:3, :3] = rot @ cols * np.array([2.5, 0.7, 0.7])
    a[:3, 3] = [30.0, 40.0, 20.0]
    return a


# ---------------------------------------------------------------------------------------------
# Prediction


def test_predicted_labels_sit_at_the_right_world_coordinates(tmp_path):
    aff = oblique_affine()
    shape = (16, 48, 48)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    centre = world_of(aff, [7.6, 21.3, 26.2])
    inside = (np.linalg.norm(world_of(aff, idx) - centre, axis=1) <= 6.0).reshape(shape)
    src = save_nifti(tmp_path / "in" / "scan.nii.gz", (inside * 1000).astype(np.int16), aff)

    model = ThresholdModel(context=1)  # axial, 2.5D: a voxel is kept when bright in slices i-1, i, i+1
    results = predict_volume_files(model, [src], tmp_path / "out", probabilities=True, batch_size=5)
    out_path = tmp_path / "out" / "masks" / "scan.nii.gz"
    assert results == [(str(src), str(out_path), None)]
    labels, out_aff = load(out_path)
    np.testing.assert_allclose(out_aff, aff, atol=1e-5)
    # "axial" is array axis 0 here (it runs along world z): the context erodes along it only.
    below = np.concatenate([inside[:1], inside[:-1]], axis=0)
    above = np.concatenate([inside[1:], inside[-1:]], axis=0)
    expected = inside & below & above
    np.testing.assert_array_equal(labels, expected.astype(np.uint8))
    wrong_axis = inside & np.roll(inside, 1, axis=1) & np.roll(inside, -1, axis=1)
    assert not np.array_equal(expected, wrong_axis)  # the check above would catch a wrong axis
    # The labelled voxels' world centroid is the ball's centre.
    np.testing.assert_allclose(world_of(out_aff, np.argwhere(labels == 1)).mean(axis=0), centre, atol=0.35)
    prob, prob_aff = load(tmp_path / "out" / "probabilities" / "scan.nii.gz")
    assert prob.dtype == np.float32 and prob.shape == shape
    np.testing.assert_allclose(prob_aff, aff, atol=1e-5)
    np.testing.assert_array_equal(prob > 0.5, expected)


def _two_class_volume(speck: bool = True) -> np.ndarray:
    vol = np.zeros((48, 48, 16), dtype=np.int16)
    vol[5:20, 5:20, 2:8] = 500  # class 1 (between the thresholds)
    if speck:
        vol[40:42, 40:42, 12:14] = 500  # a stray class-1 island
    vol[8:12, 8:12, 3:6] = 1000  # class 2, inside class 1
    vol[30:34, 5:9, 10:13] = 1000  # class 2, a second separate lesion
    return vol


def test_imagests_folder_channels_classes_and_unreadable_volumes(tmp_path):
    aff = np.diag([*SPACING, 1.0])
    ts = tmp_path / "imagesTs"
    save_nifti(ts / "caseA_0000.nii.gz", _two_class_volume(), aff)
    good = (ts / "caseA_0000.nii.gz").read_bytes()
    (ts / "caseB_0000.nii.gz").write_bytes(good[: len(good) // 2])  # cut short
    save_nifti(ts / "caseC_0000.nii.gz", _two_class_volume(speck=False), aff)
    model = ThresholdModel(thresholds=(0.3, 0.7))
    assert model.config.num_classes == 3
    out = tmp_path / "out"
    results = predict_volume_files(model, ts, out, probabilities=True, largest_component=[1])
    by_name = {Path(r[0]).name: r for r in results}
    assert sorted(by_name) == ["caseA_0000.nii.gz", "caseB_0000.nii.gz", "caseC_0000.nii.gz"]
    assert by_name["caseA_0000.nii.gz"][1:] == (str(out / "masks" / "caseA.nii.gz"), None)
    _, written, error = by_name["caseB_0000.nii.gz"]
    assert written is None and "caseB_0000.nii.gz" in error and "truncated" in error
    assert not (out / "masks" / "caseB.nii.gz").exists()
    labels, _ = load(out / "masks" / "caseA.nii.gz")
    vol = _two_class_volume()
    expected = (vol > 300).astype(np.uint8) + (vol > 700)
    assert expected[40, 40, 12] == 1 and labels[40, 40, 12] == 0  # the class-1 island is removed ...
    expected[40:42, 40:42, 12:14] = 0
    np.testing.assert_array_equal(labels, expected)  # ... and both class-2 lesions are kept
    for k in (1, 2):
        prob, _ = load(out / "probabilities" / f"caseA_class{k}.nii.gz")
        assert prob.dtype == np.float32
        np.testing.assert_array_equal(prob > 0.5, (vol > 300) & (vol <= 700) if k == 1 else vol > 700)
    assert not (out / "probabilities" / "caseA_class0.nii.gz").exists()
    # Without post-processing the island stays; a device-bound model (like ONNX) runs where it is.
    results = predict_volume_files(DeviceBoundModel(model), [ts / "caseA_0000.nii.gz"], tmp_path / "plain")
    assert results[0][2] is None
    assert load(tmp_path / "plain" / "masks" / "caseA.nii.gz")[0][40, 40, 12] == 1
    with pytest.raises(ConfigError, match="not foreground classes"):
        predict_volume_files(model, ts, out, largest_component=[3])


def test_channels_names_and_what_counts_as_a_volume(tmp_path):
    aff = np.diag([*SPACING, 1.0])
    two = tmp_path / "two"
    save_nifti(two / "X_0000.nii.gz", np.zeros((48, 48, 16), dtype=np.int16), aff)
    save_nifti(two / "X_0001.nii.gz", _two_class_volume(speck=False), aff)
    model = ThresholdModel()
    [(src, written, error)] = predict_volume_files(model, two, tmp_path / "o1")
    assert written is None and "_0000, _0001" in error and "--channel" in error
    [(src, written, error)] = predict_volume_files(model, two, tmp_path / "o2", channel=1)
    assert error is None and Path(src).name == "X_0001.nii.gz" and Path(written).name == "X.nii.gz"
    assert load(written)[0].sum() == np.count_nonzero(_two_class_volume(speck=False) > 500)
    # Both channel files named explicitly would write one output twice: the second is refused.
    res = predict_volume_files(model, [two / "X_0001.nii.gz", two / "X_0000.nii.gz"], tmp_path / "o3")
    assert res[0][2] is None and "already written" in res[1][2]
    missing = predict_volume_files(model, [tmp_path / "nope.nii.gz"], tmp_path / "o4")
    assert missing[0][1] is None and "no such file" in missing[0][2]

    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(b"\x89PNG")
    assert is_volume_input(two / "X_0000.nii.gz") and is_volume_input(two)
    assert is_volume_input(tmp_path / "later.nii")  # judged by name
    assert not is_volume_input(tmp_path / "pngs") and not is_volume_input(tmp_path / "pngs" / "a.png")
    untrained = ThresholdModel()
    untrained.config.volume = None
    with pytest.raises(ConfigError, match="trained on 2D"):
        predict_volume_files(untrained, two, tmp_path / "o5")


def _write_dicom_series(folder: Path, pixels: np.ndarray, ipp0, row_dir, col_dir, spacing, gap) -> None:
    """One CT slice per file: pixels (rows, cols, n) uint16, RescaleIntercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    normal = np.cross(row_dir, col_dir)
    series, study = generate_uid(), generate_uid()
    for k in range(pixels.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", study, series, k + 1
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ipp0) + k * gap * normal]
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], gap
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k]).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"slice{k:02d}.dcm"), enforce_file_format=True)


def test_dicom_series_prediction_lands_at_the_dicom_positions(tmp_path):
    pytest.importorskip("pydicom")
    rows = cols = 32
    pixels = np.full((rows, cols, 4), 1024, dtype=np.uint16)  # 0 HU
    pixels[10:14, 20:25, 2] = 1024 + 800  # a bright block in the third slice
    ipp0, row_dir, col_dir = np.array([-50.0, 30.0, 100.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    _write_dicom_series(tmp_path / "ct" / "series1", pixels, ipp0, row_dir, col_dir, 0.7, 2.5)
    model = ThresholdModel(image_size=(32, 32))  # window 0..1000 HU, threshold 500 HU
    assert is_volume_input(tmp_path / "ct" / "series1")
    [(src, written, error)] = predict_volume_files(model, [tmp_path / "ct"], tmp_path / "out")
    assert error is None and Path(written).name == "series1.nii.gz"
    labels, aff = load(written)
    got = world_of(aff, np.argwhere(labels == 1))
    # Where DICOM puts the block: IPP + col * spacing * row_dir + row * spacing * col_dir + k * gap * normal (LPS).
    r, c = np.meshgrid(np.arange(10, 14), np.arange(20, 25), indexing="ij")
    lps = ipp0 + c.reshape(-1, 1) * 0.7 * row_dir + r.reshape(-1, 1) * 0.7 * col_dir + 2 * 2.5 * np.array([0, 0, 1.0])
    want = lps * np.array([-1.0, -1.0, 1.0])  # RAS
    assert len(got) == len(want) == 20
    np.testing.assert_allclose(np.array(sorted(map(tuple, got))), np.array(sorted(map(tuple, want))), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Evaluation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from segdino.data.synthetic import write_volume_dataset

    return write_volume_dataset(tmp_path_factory.mktemp("vols") / "Dataset001", 2, 1, 3, shape=(16, 48, 48), seed=3)


def _test_cases(root: Path) -> list[str]:
    return sorted(strip(p.name) for p in (root / "labelsTs").iterdir())


def strip(name: str) -> str:
    return name[: -len(".nii.gz")]


def _reoriented(labels: np.ndarray, aff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with axes reversed and the (new) first axis flipped; affine to match."""
    arr = np.transpose(labels, (2, 1, 0))[::-1]
    new = np.eye(4)
    new[:3, 0] = -aff[:3, 2]
    new[:3, 1] = aff[:3, 1]
    new[:3, 2] = aff[:3, 0]
    new[:3, 3] = world_of(aff, [0, 0, labels.shape[2] - 1])
    return np.ascontiguousarray(arr), new


def _run_cli(args, capsys):
    from segdino.cli import main

    code = main(args)
    return code, capsys.readouterr()


def test_evaluate_predictions_from_the_command_line(dataset, tmp_path, capsys):
    a, b, c = _test_cases(dataset)
    pred_dir = tmp_path / "preds"
    gts = {}
    for case in (a, b, c):
        gt, aff = load(dataset / "labelsTs" / f"{case}.nii.gz")
        gts[case] = gt
        if case == a:  # exact, plus a false-positive lesion in the air outside the body
            pred = gt.copy()
            assert not gt[:2, :2, :2].any()
            pred[:2, :2, :2] = 2
        elif case == b:  # every lesion called organ: lesions missed
            pred = np.where(gt == 2, 1, gt).astype(np.uint8)
        else:  # exact, stored in another axis order and direction
            pred, aff = _reoriented(gt, aff)
        save_nifti(pred_dir / f"{case}.nii.gz", pred.astype(np.uint8), aff)
    out = tmp_path / "report"
    code, cap = _run_cli(["evaluate", "--predictions", str(pred_dir), "--data", str(dataset), "--out", str(out)],
                         capsys)
    assert code == 0, cap.err
    summary = read_summary(out / "summary.json")
    with open(out / "cases.csv", newline="") as f:
        rows = {(r["case"], r["class_name"]): r for r in csv.DictReader(f)}
    assert len(rows) == 6 and summary["num_cases"] == 3 and summary["reoriented"] == [c]

    lesion_voxels = {k: int((g == 2).sum()) for k, g in gts.items()}
    assert float(rows[(a, "lesion")]["dice"]) == pytest.approx(2 * lesion_voxels[a] / (2 * lesion_voxels[a] + 8))
    assert float(rows[(b, "lesion")]["dice"]) == 0.0 and rows[(b, "lesion")]["hd95"] == ""
    organ_b = int((gts[b] == 1).sum())
    assert float(rows[(b, "organ")]["dice"]) == pytest.approx(2 * organ_b / (2 * organ_b + lesion_voxels[b]))
    for case in (a, c):
        assert float(rows[(case, "organ")]["dice"]) == 1.0 and float(rows[(case, "organ")]["hd95"]) == 0.0
    assert float(rows[(c, "lesion")]["dice"]) == 1.0
    assert rows[(a, "lesion")]["spacing_mm"] == "0.8 0.8 2.5"

    hd = summary["per_class"]["2"]["hd95"]
    assert hd["failures"] == 1 and hd["count"] == 2
    diag = math.sqrt((48 * 0.8) ** 2 * 2 + (16 * 2.5) ** 2)
    assert hd["with_failures_as_diagonal"]["mean"] == pytest.approx((diag + hd["mean"] * 2) / 3)

    def n_lesions(g):
        return ndimage.label(g == 2, structure=np.ones((3, 3, 3)))[1]

    les = summary["lesions"]["lesion"]
    assert les["num_lesions"] == sum(n_lesions(g) for g in gts.values())
    assert (les["missed"], les["false_positives"]) == (n_lesions(gts[b]), 1)
    assert les["found"] == n_lesions(gts[a]) + n_lesions(gts[c])
    with open(out / "lesions.csv", newline="") as f:
        lesion_rows = list(csv.DictReader(f))
    fps = [r for r in lesion_rows if r["kind"] == "false positive"]
    assert len(fps) == 1 and fps[0]["case"] == a and int(fps[0]["voxels"]) == 8
    assert float(fps[0]["volume_mm3"]) == pytest.approx(8 * 0.8 * 0.8 * 2.5)
    missed = [r for r in lesion_rows if r["kind"] == "lesion" and r["class_name"] == "lesion" and r["found"] == "0"]
    assert {r["case"] for r in missed} == {b} and len(missed) == n_lesions(gts[b])

    # A minimum size above the 8-voxel speck (12.8 mm^3) and below every lesion removes the false positive only.
    out2 = tmp_path / "report-min-size"
    code, cap = _run_cli(["evaluate", "--predictions", str(pred_dir), "--data", str(dataset), "--out", str(out2),
                          "--min-size", "13"], capsys)
    assert code == 0, cap.err
    s2 = read_summary(out2 / "summary.json")
    les2 = s2["lesions"]["lesion"]
    assert s2["min_size_mm3"] == 13.0 and les2["false_positives"] == 0
    assert (les2["found"], les2["missed"]) == (les["found"], les["missed"])
    code, cap = _run_cli(["evaluate", "--predictions", str(pred_dir), "--data", str(dataset), "--out",
                          str(tmp_path / "bad"), "--min-size", "-1"], capsys)
    assert code != 0 and "--min-size must be a volume in mm^3 >= 0, got -1" in cap.err
    assert "Traceback" not in cap.err and not (tmp_path / "bad").exists()

    report = (out / "report.md").read_text()
    assert "HD95 (mm)" in report and "Lesion-wise detection" in report and f"Worst: {b}" in report
    for name in ("case_best.png", "case_worst.png", "dice_histogram.png"):
        assert (out / "figures" / name).stat().st_size > 0


def test_evaluate_names_unmatched_and_misplaced_predictions(dataset, tmp_path, capsys):
    a, b, c = _test_cases(dataset)
    pred_dir = tmp_path / "preds"
    for case in (a, b):
        gt, aff = load(dataset / "labelsTs" / f"{case}.nii.gz")
        save_nifti(pred_dir / f"{case}.nii.gz", gt, aff)
    gt, aff = load(dataset / "labelsTs" / f"{c}.nii.gz")
    save_nifti(pred_dir / f"{c}_0000.nii.gz", gt, aff)  # named like the image, not the case
    code, cap = _run_cli(["evaluate", "--predictions", str(pred_dir), "--data", str(dataset), "--out",
                          str(tmp_path / "r")], capsys)
    assert code == 2
    assert f"{c}_0000.nii.gz" in cap.err and f"{c}.nii.gz" in cap.err and "no prediction" in cap.err
    (pred_dir / f"{c}_0000.nii.gz").unlink()
    moved = aff.copy()
    moved[:3, 3] += [0.3, 0.0, 0.0]  # 0.3 mm off: not the label's grid
    save_nifti(pred_dir / f"{c}.nii.gz", gt, moved)
    with pytest.raises(DataError, match=rf"{c}\.nii\.gz.*geometry.*0\.3 mm apart"):
        evaluate_volumes(dataset, tmp_path / "r", predictions=pred_dir)
    save_nifti(pred_dir / f"{c}.nii.gz", gt[:, :, :-1], aff)
    with pytest.raises(DataError, match=r"shape \(48, 48, 15\).*\(48, 48, 16\)"):
        evaluate_volumes(dataset, tmp_path / "r", predictions=pred_dir)
    with pytest.raises(ConfigError, match="exactly one of"):
        evaluate_volumes(dataset, tmp_path / "r", predictions=pred_dir, model=ThresholdModel())


def test_evaluate_with_a_model_scores_what_it_predicts(dataset, tmp_path):
    # Thresholds half-way between whole HU values, so float rounding never decides a voxel.
    window = ct_window(hu_range=(-160.0, 240.0))
    model = ThresholdModel(thresholds=((20.5 + 160) / 400, (80.5 + 160) / 400), intensity=window)
    out = tmp_path / "eval"
    summary = evaluate_volumes(dataset, out, model=model, batch_size=5)
    cases = _test_cases(dataset)
    assert summary["cases"] == cases and summary["model"] and summary["predictions"] is None
    dice = {1: [], 2: []}
    for case in cases:
        hu, _ = load(dataset / "imagesTs" / f"{case}_0000.nii.gz")
        gt, aff = load(dataset / "labelsTs" / f"{case}.nii.gz")
        expected = (hu > 20).astype(np.uint8) + (hu > 80)
        written, waff = load(out / "predictions" / f"{case}.nii.gz")
        np.testing.assert_array_equal(written, expected)
        np.testing.assert_allclose(waff, aff, atol=1e-5)
        for k, m in case_metrics(expected, gt, 3, (0.8, 0.8, 2.5)).items():
            dice[k].append(m["dice"])
    for k in (1, 2):
        assert summary["per_class"][str(k)]["dice"]["mean"] == pytest.approx(np.mean(dice[k]))
    # A training run's split and log: only its test case is scored, with learning curves.
    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": [cases[1]]}))
    (run / "log.csv").write_text("epoch,loss,val_dice\n1,0.9,0.2\n2,0.5,0.4\n")
    s = evaluate_volumes(dataset, tmp_path / "eval_run", model=model, run_dir=run)
    assert s["cases"] == [cases[1]] and s["split_source"].endswith("splits.json")
    assert (tmp_path / "eval_run" / "figures" / "learning_curves.png").is_file()
    with pytest.raises(DataError, match="names labels 0..2"):
        evaluate_volumes(dataset, tmp_path / "bin", model=ThresholdModel(intensity=window))


def test_predict_and_evaluate_commands_with_a_saved_model(dataset, tmp_path, capsys):
    import segdino
    from tests.conftest import randomize_

    from segdino.volumes import predict_volume

    model = randomize_(segdino.build_model("vitt16", num_classes=3, decoder_dim=32, image_size=(48, 48)), seed=1)
    model.config.volume = volume_settings(ct_window("abdomen"), axis="axial", context=1)
    ckpt = segdino.save_model(model, tmp_path / "model.safetensors")
    out = tmp_path / "pred"
    code, cap = _run_cli(["predict", "--model", str(ckpt), str(dataset / "imagesTs"), "--out", str(out),
                          "--device", "cpu", "--batch-size", "6", "--channel", "CT", "--overlays"], capsys)
    assert code == 0, cap.err
    cases = _test_cases(dataset)
    assert sorted(strip(p.name) for p in (out / "masks").iterdir()) == cases
    for case in cases[:1]:
        image = read_volume(dataset / "imagesTs" / f"{case}_0000.nii.gz")
        labels, aff = load(out / "masks" / f"{case}.nii.gz")
        np.testing.assert_allclose(aff, image.affine, atol=1e-5)
        np.testing.assert_array_equal(labels, predict_volume(model, image, batch_size=4))
        assert len(np.unique(labels)) > 1  # random weights, but not a constant answer
        # --overlays: one PNG per axial slice holding a prediction (array axis 2 here), and a montage.
        held = [f"slice_{k:03d}.png" for k in np.flatnonzero(labels.any(axis=(0, 1)))]
        assert sorted(p.name for p in (out / "overlays" / case).iterdir()) == held
        assert (out / "overlays" / f"{case}.png").is_file()
    # Scoring the written volumes and scoring the model directly give the same numbers.
    code, cap = _run_cli(["evaluate", "--predictions", str(out), "--data", str(dataset), "--out",
                          str(tmp_path / "from_files")], capsys)
    assert code == 0, cap.err
    code, cap = _run_cli(["evaluate", "--model", str(ckpt), "--data", str(dataset), "--out",
                          str(tmp_path / "from_model"), "--device", "cpu"], capsys)
    assert code == 0, cap.err
    a, b = (read_summary(tmp_path / d / "summary.json") for d in ("from_files", "from_model"))
    assert a["per_class"] == b["per_class"] and a["lesions"] == b["lesions"]
    assert b["model"].startswith(str(ckpt)) and a["predictions"] == str(out)


def test_plain_layout_without_dataset_json(tmp_path):
    # images/ + labels/: classes come from the label values, the split "all" takes every case.
    aff = np.diag([*SPACING, 1.0])
    root = tmp_path / "plain"
    vol = _two_class_volume(speck=False)
    for name in ("p1", "p2"):
        save_nifti(root / "images" / f"{name}.nii.gz", vol, aff)
        save_nifti(root / "labels" / f"{name}.nii.gz", ((vol > 300).astype(np.uint8) + (vol > 700)), aff)
    model = ThresholdModel(thresholds=(0.3, 0.7))
    s = evaluate_volumes(root, tmp_path / "ok", model=model, split="all", largest_component=True)
    assert s["cases"] == ["p1", "p2"] and s["num_classes"] == 3 and s["largest_component_classes"] == [1, 2]
    # The largest component of class 2 drops its second lesion: one missed per case.
    assert s["lesions"]["class 2"]["missed"] == 2 and s["per_class"]["1"]["dice"]["mean"] == 1.0
    s = evaluate_volumes(root, tmp_path / "files", predictions=tmp_path / "ok" / "predictions", split="all")
    assert s["num_classes"] == 3 and s["lesions"]["class 2"]["missed"] == 2
    save_nifti(root / "labels" / "p2.nii.gz", (vol > 700).astype(np.uint8), aff @ np.diag([1, 1, 1.02, 1]))
    with pytest.raises(DataError, match=r"p2\.nii\.gz vs label .*p2\.nii\.gz: the image's geometry"):
        evaluate_volumes(root, tmp_path / "bad", model=model, split="all")
