"""Volumes: geometry through read -> slice -> reassemble -> write, DICOM, layouts, checks, streaming."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.config import ModelConfig  # noqa: E402
from segdino.errors import ConfigError, DataError  # noqa: E402
from segdino.volumes import (  # noqa: E402
    CT_WINDOWS,
    Volume,
    check_volume_dataset,
    ct_window,
    find_volume_cases,
    format_report,
    is_volume_dataset,
    iter_label_slices,
    iter_slices,
    normalize_intensity,
    parse_intensity,
    percentile_window,
    read_volume,
    read_volume_settings,
    reassemble,
    resolve_axis,
    seeded_split,
    volume_layout,
    volume_settings,
    write_nifti,
)
from segdino.volumes.dataset import VolumeSliceDataset  # noqa: E402


# --- synthetic geometry -----------------------------------------------------------------


def rotation(ax: float, az: float) -> np.ndarray:
    """Rotation about x by ``ax`` then about z by ``az`` (radians)."""
    cx, sx, cz, sz = math.cos(ax), math.sin(ax), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


SPACING = np.array([0.7, 1.3, 3.0])
# A rotation and a flip of the first axis: direction is neither identity nor a rotation.
DIRECTION = rotation(0.35, 0.6) @ np.diag([-1.0, 1.0, 1.0])
ORIGIN = np.array([-12.5, 40.25, 7.0])
SHAPE = (6, 8, 5)
MARKERS = {(0, 0, 0): 101, (5, 7, 4): 102, (2, 3, 1): 103, (4, 1, 3): 104, (1, 6, 2): 105}


def expected_world(idx) -> np.ndarray:
    """World RAS of a voxel from the construction parameters (independent of any header)."""
    return ORIGIN + DIRECTION @ (SPACING * np.asarray(idx, dtype=float))


def synthetic_affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = DIRECTION * SPACING
    a[:3, 3] = ORIGIN
    return a


def synthetic_volume() -> np.ndarray:
    arr = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) % 50
    for idx, v in MARKERS.items():
        arr[idx] = v
    return arr


@pytest.mark.parametrize("axis", [0, 1, 2, "axial", "coronal", "sagittal"])
def test_geometry_survives_read_slice_reassemble_write(tmp_path, axis):
    src = tmp_path / "src.nii.gz"
    write_nifti(src, synthetic_volume(), synthetic_affine())
    vol = read_volume(src)
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(vol.direction, DIRECTION, atol=1e-5)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-4)

    a = resolve_axis(axis, vol.affine)
    images = dict(iter_slices(vol, axis, k=1))
    assert sorted(images) == list(range(SHAPE[a]))
    centre = [images[i][..., 1] for i in range(SHAPE[a])]
    # Context channels: i-1 and i+1, edges replicated.
    np.testing.assert_array_equal(images[0][..., 0], images[0][..., 1])
    np.testing.assert_array_equal(images[1][..., 0], centre[0])
    np.testing.assert_array_equal(images[SHAPE[a] - 1][..., 2], centre[-1])
    out = reassemble(centre, axis, vol.shape, vol.affine).astype(np.int16)
    labels = reassemble([m for _, m in iter_label_slices(vol, axis)], axis, vol.shape, vol.affine)

    for name, arr in (("image.nii.gz", out), ("label.nii", labels)):
        back = read_volume(write_nifti(tmp_path / name, arr, vol.affine))
        assert back.shape == SHAPE
        for idx, v in MARKERS.items():
            found = np.argwhere(back.array == v)
            assert len(found) == 1
            np.testing.assert_allclose(back.world(found[0]), expected_world(idx), atol=1e-3)
        np.testing.assert_allclose(back.spacing, SPACING, atol=1e-5)
        np.testing.assert_allclose(back.direction, DIRECTION, atol=1e-5)


def test_axis_names_follow_world_orientation():
    # Array axis 0 runs inferior->superior, 1 left->right (negated: R->L), 2 posterior->anterior.
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    aff[2, 0], aff[0, 1], aff[1, 2] = 2.0, -0.8, 0.8
    assert resolve_axis("axial", aff) == 0
    assert resolve_axis("sagittal", aff) == 1
    assert resolve_axis("coronal", aff) == 2
    vol = Volume(np.random.default_rng(0).random((4, 5, 6)), aff)
    for i, img in iter_slices(vol, "axial", 0):
        # Every voxel of an axial slice lies at one height (world z).
        ij = np.stack(np.meshgrid(np.arange(5), np.arange(6), indexing="ij"), -1).reshape(-1, 2)
        z = vol.world(np.column_stack([np.full(len(ij), i), ij]))[:, 2]
        assert np.ptp(z) == 0 and z[0] == 2.0 * i
        assert img.shape == (5, 6, 3)
    with pytest.raises(ConfigError):
        resolve_axis("axial")  # a name needs the affine
    with pytest.raises(ConfigError):
        resolve_axis("oblique", aff)


def test_context_edges_and_reassemble_errors():
    arr = np.arange(4)[None, None, :] * np.ones((2, 3, 1))
    sl = dict(iter_slices(arr, 2, k=0))
    assert all(np.all(sl[i] == i) for i in range(4))
    sl = dict(iter_slices(arr, 2, k=2))
    assert [float(sl[0][0, 0, c]) for c in range(3)] == [0, 0, 2]
    assert [float(sl[3][0, 0, c]) for c in range(3)] == [1, 3, 3]
    with pytest.raises(DataError, match="3 slices given"):
        reassemble([np.zeros((2, 3))] * 3, 2, (2, 3, 4))
    with pytest.raises(DataError, match="slice 1 has shape"):
        reassemble([np.zeros((2, 3)), np.zeros((3, 2))], 2, (2, 3, 2))
    with pytest.raises(DataError, match="missing"):
        reassemble({0: np.zeros((2, 3))}, 2, (2, 3, 2))
    out = reassemble({1: np.ones((2, 3)), 0: np.zeros((2, 3))}, 2, (2, 3, 2))
    assert out[..., 0].sum() == 0 and out[..., 1].sum() == 6


# --- NIfTI reading: 4D, truncated, missing -------------------------------------------------


def _nifti(path: Path, array, affine=None) -> Path:
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


def test_4d_needs_channel(tmp_path):
    data = np.stack([np.full((3, 4, 5), c, np.float32) for c in range(3)], axis=-1)
    p = _nifti(tmp_path / "mm.nii.gz", data)
    with pytest.raises(DataError, match=r"mm\.nii\.gz: 4D file with 3 channels.*--channel"):
        read_volume(p)
    assert np.all(read_volume(p, channel=2).array == 2)
    with pytest.raises(DataError, match="out of range"):
        read_volume(p, channel=3)
    one = _nifti(tmp_path / "one.nii.gz", data[..., :1])
    assert read_volume(one).shape == (3, 4, 5)


def test_truncated_and_missing_files_name_the_file(tmp_path):
    p = write_nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), np.eye(4))
    raw = p.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz"):
        read_volume(bad)
    tiny = tmp_path / "head.nii.gz"
    tiny.write_bytes(raw[:40])
    with pytest.raises(DataError, match=r"head\.nii\.gz"):
        read_volume(tiny)
    plain = tmp_path / "cut.nii"
    plain.write_bytes(gzip.decompress(raw)[:600])
    with pytest.raises(DataError, match=r"cut\.nii\b"):
        read_volume(plain)
    with pytest.raises(DataError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: not a volume"):
        read_volume(tmp_path / "notes.txt")


def test_write_nifti_is_atomic_and_keeps_dtypes(tmp_path):
    p = tmp_path / "lab.nii.gz"
    write_nifti(p, np.array([[[0, 1], [2, 300]]], dtype=np.int64), np.diag([2.0, 2.0, 2.0, 1.0]))
    v = read_volume(p)
    assert v.array.dtype == np.int16 and v.array[0, 1, 1] == 300
    write_nifti(p, np.ones((1, 2, 2), bool), np.eye(4))
    assert read_volume(p).array.dtype == np.uint8
    with pytest.raises(DataError):
        write_nifti(p, np.zeros((2, 2)), np.eye(4))  # not 3D: the old file stays
    assert read_volume(p).array.sum() == 4
    assert [f.name for f in tmp_path.iterdir()] == ["lab.nii.gz"]  # no temporary left behind


# --- DICOM ----------------------------------------------------------------------------------

ROW_DIR = np.array([0.6, 0.8, 0.0])  # LPS direction of increasing column index
COL_DIR = np.array([0.0, 0.0, -1.0])  # LPS direction of increasing row index
NORMAL = np.cross(ROW_DIR, COL_DIR)
PIXEL_SPACING = (0.8, 0.5)  # (between rows, between columns)
SLICE_GAP = 2.5
IPP0 = np.array([10.0, -20.0, 30.0])


def write_dicom_series(folder: Path, n: int = 4, rows: int = 5, cols: int = 6, series_uid=None,
                       intercept: float = -1024.0, shuffle: bool = True) -> list[np.ndarray]:
    """A tiny oblique CT series, files in shuffled order; returns the stored pixel arrays by slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    pixels = []
    order = [2, 0, 3, 1] + list(range(4, n)) if shuffle else list(range(n))
    for k in range(n):
        stored = (np.arange(rows * cols).reshape(rows, cols) * 10 + 1000 + k).astype(np.uint16)
        pixels.append(stored)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "anon"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImageOrientationPatient = [float(x) for x in np.concatenate([ROW_DIR, COL_DIR])]
        ds.ImagePositionPatient = [round(float(x), 4) for x in IPP0 + k * SLICE_GAP * NORMAL]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_GAP
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = stored.tobytes()
        ds.save_as(str(folder / f"img{order[k]:03d}.dcm"), enforce_file_format=True)
    return pixels


def test_dicom_series_world_coordinates(tmp_path):
    pixels = write_dicom_series(tmp_path / "ct")
    (tmp_path / "ct" / "README.txt").write_text("not a DICOM file")
    vol = read_volume(tmp_path / "ct")
    assert vol.shape == (6, 5, 4)  # (columns, rows, slices)
    np.testing.assert_allclose(vol.spacing, [0.5, 0.8, 2.5], atol=1e-4)
    for c, r, k in [(0, 0, 0), (5, 4, 3), (2, 3, 1), (4, 1, 2)]:
        lps = IPP0 + c * PIXEL_SPACING[1] * ROW_DIR + r * PIXEL_SPACING[0] * COL_DIR + k * SLICE_GAP * NORMAL
        ras = lps * np.array([-1, -1, 1])
        np.testing.assert_allclose(vol.world((c, r, k)), ras, atol=1e-3)
        assert vol.array[c, r, k] == int(pixels[k][r, c]) - 1024  # Hounsfield units
    # The geometry survives conversion to NIfTI.
    back = read_volume(write_nifti(tmp_path / "ct.nii.gz", vol.array, vol.affine))
    np.testing.assert_allclose(back.world((5, 4, 3)), vol.world((5, 4, 3)), atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)
    # This series is cut obliquely to the body axis; its rows run head to foot, so "axial"
    # slicing goes along the row axis (array axis 1), not along the file's slice axis.
    assert resolve_axis("axial", vol.affine) == 1


def test_dicom_folder_with_two_series(tmp_path):
    write_dicom_series(tmp_path / "mixed", n=3, series_uid="1.2.3.4")
    write_dicom_series(tmp_path / "mixed" / "other", n=3, series_uid="1.2.3.5")
    with pytest.raises(DataError, match=r"mixed: 2 DICOM series.*1\.2\.3\.4.*1\.2\.3\.5"):
        read_volume(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no DICOM image files"):
        read_volume(tmp_path / "empty")


def test_dicom_missing_slice_is_reported(tmp_path):
    write_dicom_series(tmp_path / "gap", n=5, shuffle=False)
    (tmp_path / "gap" / "img002.dcm").unlink()
    with pytest.raises(DataError, match="unevenly spaced"):
        read_volume(tmp_path / "gap")


# --- intensity ------------------------------------------------------------------------------


def test_ct_windows_and_percentiles():
    assert CT_WINDOWS["abdomen"] == (40.0, 400.0) and CT_WINDOWS["lung"] == (-600.0, 1500.0)
    spec = ct_window("abdomen")
    assert (spec["low"], spec["high"]) == (-160.0, 240.0)
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16).reshape(1, 1, 5)
    np.testing.assert_allclose(normalize_intensity(hu, spec).ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)
    assert parse_intensity("bone") == ct_window("bone") == parse_intensity("ct:bone")
    rng = parse_intensity("ct:-100,300")
    np.testing.assert_allclose(normalize_intensity(np.array([[[100.0]]]), rng), [[[0.5]]])
    mri = np.linspace(0, 1000, 1001).reshape(7, 11, 13)
    p = percentile_window(1, 99)
    out = normalize_intensity(mri, p)
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    assert abs(float(out[3, 5, 6]) - (500 - 10) / 980) < 1e-5  # centre voxel value 500
    assert parse_intensity("mri") == percentile_window(0.5, 99.5)
    nz = normalize_intensity(np.array([[[0.0, 10.0, 20.0, 30.0]]]), percentile_window(0, 100, nonzero=True))
    np.testing.assert_allclose(nz.ravel(), [0, 0, 0.5, 1])
    for bad in ("soft", "ct:1", "ct:5,1", "percentile:50,10"):
        with pytest.raises(ConfigError):
            parse_intensity(bad)


def test_volume_settings_live_in_the_model_config():
    settings = volume_settings(ct_window("liver"), axis="axial", context=2)
    cfg = ModelConfig(backbone="vitt16", decoder_dim=32, image_size=64, volume=settings)
    back = ModelConfig.from_json(cfg.to_json())
    assert read_volume_settings(back.volume) == settings
    assert back.volume["intensity"]["low"] == -45.0 and back.volume["context"] == 2
    with pytest.raises(ConfigError):
        volume_settings(ct_window("liver"), axis="diagonal")
    with pytest.raises(ConfigError):
        volume_settings(ct_window("liver"), context=-1)
    with pytest.raises(ConfigError, match="trained on 2D"):
        read_volume_settings(None)
    with pytest.raises(ConfigError):
        read_volume_settings({"intensity": {"kind": "ct", "low": 5, "high": 1}, "axis": 2, "context": 0})


# --- layouts ----------------------------------------------------------------------------------


def _case_arrays(seed: int, shape=(8, 9, 6)):
    rng = np.random.default_rng(seed)
    image = rng.integers(-200, 300, size=shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[2:5, 3:6, 1:3] = 1
    label[3, 4, 2] = 2
    return image, label


def make_nnunet(root: Path, n: int = 5, channels=("CT", "PET"), test: int = 2) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    aff = synthetic_affine()
    for i in range(n + test):
        sub = "Tr" if i < n else "Ts"
        (root / f"images{sub}").mkdir(exist_ok=True)
        (root / f"labels{sub}").mkdir(exist_ok=True)
        image, label = _case_arrays(i)
        for c in range(len(channels)):
            write_nifti(root / f"images{sub}" / f"case_{i:03d}_{c:04d}.nii.gz", image + 1000 * c, aff)
        write_nifti(root / f"labels{sub}" / f"case_{i:03d}.nii.gz", label, aff)
    meta = {"channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": {"background": 0, "organ": 1, "lesion": 2}, "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_layout_folds_and_channels(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Test")
    folds = [{"train": ["case_000", "case_001", "case_002"], "val": ["case_003", "case_004"]},
             {"train": ["case_002", "case_003", "case_004"], "val": ["case_000", "case_001"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    assert volume_layout(root) == "nnunet" and is_volume_dataset(root)
    found = find_volume_cases(root, fold=1, channel="pet")
    assert found.channel == 1 and found.channel_names == ["CT", "PET"]
    assert found.splits == {"train": ["case_002", "case_003", "case_004"], "val": ["case_000", "case_001"],
                            "test": ["case_005", "case_006"]}
    assert found.split_source == "splits_final.json fold 1"
    c = found.case("case_003")
    assert c.image.name == "case_003_0001.nii.gz" and c.label.name == "case_003.nii.gz" and len(c.channel_files) == 2
    assert found.labels == {0: "background", 1: "organ", 2: "lesion"} and not found.issues
    assert np.all(read_volume(c.image).array >= 800)  # the PET file (values + 1000)
    with pytest.raises(DataError, match=r"2 channels.*CT.*PET.*--channel"):
        find_volume_cases(root)
    with pytest.raises(ConfigError, match="folds 0..1"):
        find_volume_cases(root, fold=2, channel=0)
    with pytest.raises(ConfigError, match="not a channel name"):
        find_volume_cases(root, channel="MR")
    (root / "splits_final.json").unlink()
    found = find_volume_cases(root, channel=0, seed=3)
    assert found.splits["test"] == ["case_005", "case_006"] and len(found.splits["val"]) == 1
    assert sorted(found.splits["train"] + found.splits["val"]) == [f"case_{i:03d}" for i in range(5)]


def test_nnunet_2d_png_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "Dataset002_Polyps"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((16, 20, 3), i * 10, np.uint8)).save(root / "imagesTr" / f"img{i}_0000.png")
        lab = np.zeros((16, 20), np.uint8)
        lab[4:8, 5:9] = 1
        Image.fromarray(lab).save(root / "labelsTr" / f"img{i}.png")
    meta = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1},
            "numTraining": 10, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert volume_layout(root) == "nnunet-2d" and not is_volume_dataset(root)
    found = find_volume_cases(root)
    assert not found.is_3d and len(found.cases) == 10
    assert {len(v) for v in found.splits.values()} == {8, 1} and sum(map(len, found.splits.values())) == 10
    pairs = found.pairs("train")
    assert all(img.name == f"{cid}_0000.png" and lab.name == f"{cid}.png" for cid, img, lab in pairs)
    report = check_volume_dataset(root)
    assert report.ok, report.problems
    assert report.summary["label_voxels"] == {0: 10 * (320 - 16), 1: 160}
    text = format_report(report)
    assert "images:       10 (10 labelled" in text and text.endswith("result:       usable")


def make_decathlon(root: Path, n: int = 4) -> Path:
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n):
        image, label = _case_arrays(i)
        mm = np.stack([image, image * 2, image * 3], axis=-1).astype(np.float32)
        _nifti(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", mm, synthetic_affine())
        _nifti(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", label, synthetic_affine())
        (root / "imagesTr" / f"._BRATS_{i:03d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    _nifti(root / "imagesTs" / "BRATS_900.nii.gz", np.zeros((8, 9, 6, 3), np.float32))
    meta = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "tumour"}, "numTraining": n,
            "training": training, "test": ["./imagesTs/BRATS_900.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_decathlon_layout_with_4d_files(tmp_path):
    root = make_decathlon(tmp_path / "Task01_BrainTumour")
    assert volume_layout(root) == "decathlon"
    with pytest.raises(DataError, match=r"3 channels.*FLAIR.*--channel"):
        find_volume_cases(root)
    found = find_volume_cases(root, channel="T2w")
    assert found.channel == 2 and len(found.cases) == 5 and not found.issues
    assert [c.case_id for c in found.unlabelled] == ["BRATS_900"]
    assert sorted(sum(found.splits.values(), [])) == [f"BRATS_{i:03d}" for i in range(4)]
    c = found.case("BRATS_001")
    image, _ = _case_arrays(1)
    np.testing.assert_array_equal(read_volume(c.image, c.channel).array, image * 3)
    report = check_volume_dataset(root, channel=2)
    assert report.ok, report.problems
    assert report.summary["label_voxels"][2] == 4 and report.summary["shapes"] == [(8, 9, 6)]
    text = format_report(report)
    assert "using channel 2" in text and "1 edema: 68 voxels in 4 volumes" in text and "without labels" in text


def make_plain(root: Path, n: int = 10) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, label = _case_arrays(i)
        write_nifti(root / "images" / f"p{i:02d}.nii.gz", image, synthetic_affine())
        write_nifti(root / "labels" / f"p{i:02d}_seg.nii.gz", label, synthetic_affine())
    return root


def test_plain_layout_and_splits(tmp_path):
    root = make_plain(tmp_path / "plain")
    write_dicom_series(root / "images" / "dcm01")
    vol = read_volume(root / "images" / "dcm01")
    write_nifti(root / "labels" / "dcm01.nii.gz", np.zeros(vol.shape, np.uint8), vol.affine)
    assert volume_layout(root) == "images-labels" and is_volume_dataset(root)
    found = find_volume_cases(root, seed=1)
    assert len(found.cases) == 11 and not found.issues
    assert found.case("dcm01").image.is_dir()
    assert [len(found.splits[k]) for k in ("train", "val", "test")] == [9, 1, 1]
    assert found.splits == find_volume_cases(root, seed=1).splits  # seeded: same again
    assert found.splits == seeded_split([c.case_id for c in found.cases], seed=1)
    (root / "splits.json").write_text(json.dumps({"train": ["p00", "p01_seg"], "val": ["p02.nii.gz"], "test": ["p03"]}))
    # One split rule for 2D and volumes: a name the dataset lacks is refused, not dropped.
    with pytest.raises(DataError, match="'train' names 1 case.* p01_seg"):
        find_volume_cases(root)
    (root / "splits.json").write_text(json.dumps({"train": ["p00", "p01"], "val": ["p02.nii.gz"], "test": ["p03"]}))
    found = find_volume_cases(root)
    assert found.split_source == "splits.json"
    assert found.splits["train"] == ["p00", "p01"] and found.splits["test"] == ["p03"]
    report = check_volume_dataset(root)
    assert "dcm01" in report.empty_labels
    assert volume_layout(tmp_path) is None
    with pytest.raises(DataError, match="not a volume dataset"):
        find_volume_cases(tmp_path)


# --- data check: every bad input named ------------------------------------------------------


def test_check_reports_every_bad_input(tmp_path):
    root = make_plain(tmp_path / "bad", n=6)
    aff = synthetic_affine()
    # 1. label shape differs.
    write_nifti(root / "labels" / "p00_seg.nii.gz", np.zeros((8, 9, 5), np.uint8), aff)
    # 2. label geometry differs (shifted origin).
    moved = aff.copy()
    moved[:3, 3] += 5.0
    write_nifti(root / "labels" / "p01_seg.nii.gz", _case_arrays(1)[1], moved)
    # 3. a 4D multi-modal image without --channel.
    img4 = np.stack([_case_arrays(2)[0]] * 2, axis=-1)
    (root / "images" / "p02.nii.gz").unlink()
    _nifti(root / "images" / "p02.nii.gz", img4, aff)
    # 4. a DICOM folder with two series.
    write_dicom_series(root / "images" / "two", n=3, series_uid="1.2.9.1")
    write_dicom_series(root / "images" / "two" / "b", n=3, series_uid="1.2.9.2")
    write_nifti(root / "labels" / "two.nii.gz", np.zeros((6, 5, 3), np.uint8), np.eye(4))
    # 5. a truncated .nii.gz.
    raw = (root / "images" / "p03.nii.gz").read_bytes()
    (root / "images" / "p03.nii.gz").write_bytes(raw[: len(raw) // 2])
    report = check_volume_dataset(root)
    assert not report.ok
    text = format_report(report)
    problems = "\n".join(report.problems)
    assert "p00_seg.nii.gz: label shape (8, 9, 5) differs" in problems
    assert "p01_seg.nii.gz: label geometry differs" in problems and "origin" in problems
    assert "p02.nii.gz: 4D file with 2 channels" in problems and "--channel" in problems
    assert "two: 2 DICOM series" in problems
    assert "p03.nii.gz" in problems and "truncated" in problems
    assert len(report.problems) == 5, report.problems
    assert sorted(report.geometry_mismatches) == ["p00", "p01"]
    assert text.endswith("NOT usable") and "2 label(s) off their image's grid: p00, p01" in text
    assert str(report) == text
    # --channel 1 reads the 4D image; the 3D images have no channel 1, and say so.
    with_channel = "\n".join(check_volume_dataset(root, channel=1).problems)
    assert "p02.nii.gz" not in with_channel
    assert "p04.nii.gz: --channel 1 asked for, but the file is 3D" in with_channel


def test_check_label_values_absent_from_dataset_json(tmp_path):
    root = make_nnunet(tmp_path / "Dataset003", n=3, channels=("CT",), test=0)
    image, label = _case_arrays(1)
    label[0, 0, 0] = 7
    write_nifti(root / "labelsTr" / "case_001.nii.gz", label, synthetic_affine())
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    report = check_volume_dataset(root)
    assert not report.ok
    problems = "\n".join(report.problems)
    assert "case_001.nii.gz: label values [7] are absent from dataset.json" in problems
    assert "case_002.nii.gz: label missing" in problems
    good = check_volume_dataset(make_nnunet(tmp_path / "Dataset004", n=3, channels=("CT",), test=0))
    assert good.ok, good.problems
    s = good.summary
    assert s["volumes"] == 3 and s["label_voxels"] == {0: 3 * (432 - 18), 1: 3 * 17, 2: 3}
    assert s["spacings"] == [tuple(round(float(x), 4) for x in SPACING)]
    assert "2 lesion: 3 voxels in 3 volumes" in format_report(good)


# --- streaming dataset ----------------------------------------------------------------------


def test_volume_slice_dataset_streams_and_indexes(tmp_path):
    root = make_plain(tmp_path / "stream", n=5)
    found = find_volume_cases(root)
    cases = found.cases
    ds = VolumeSliceDataset(cases, axis="axial", context=1, intensity=ct_window("abdomen"),
                            image_size=32, num_classes=3, cache_size=2)
    a = resolve_axis("axial", synthetic_affine())
    assert len(ds) == 5 * (8, 9, 6)[a]
    item = ds[7]
    assert set(item) == {"image", "mask", "case_id", "orig_size", "index", "slice_index"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.int64
    ci, s = ds.locate(7)
    assert item["case_id"] == cases[ci].case_id and item["slice_index"] == s
    # Native slice and intensity match a direct computation.
    vol = read_volume(cases[ci].image)
    direct = dict(iter_slices(normalize_intensity(vol.array, ct_window("abdomen")), a, 1))[s]
    assert item["orig_size"].tolist() == list(direct.shape[:2]) and item["index"] == 7
    np.testing.assert_allclose(item["image"].numpy(),
                               torch.nn.functional.interpolate(torch.from_numpy(direct).permute(2, 0, 1)[None], size=(32, 32),
                                                               mode="bilinear", antialias=True)[0].clamp(0, 1).numpy(),
                               atol=1e-3)  # float16 cache: within 1e-3 of the direct computation
    lab = read_volume(cases[ci].label).array
    np.testing.assert_array_equal(ds.native_mask(7), np.take(lab, s, axis=a))
    # Memory bounded: never more than cache_size volumes; an epoch in block order decodes each once.
    ds2 = VolumeSliceDataset(cases, axis=a, intensity=percentile_window(), image_size=16, cache_size=2)
    order = ds2.epoch_order(seed=0, epoch=3)
    assert sorted(order) == list(range(len(ds2))) and order != list(range(len(ds2)))
    for i in order:
        ds2[i]
        assert len(ds2._cache) <= 2
    assert ds2.loads == 5
    # Label index equals a brute-force scan; binary masks for num_classes=1.
    index = ds2.label_index()
    brute_fg = [i for i in range(len(ds2)) if ds2.native_mask(i).any()]
    np.testing.assert_array_equal(index[1], brute_fg)
    np.testing.assert_array_equal(ds2.foreground_slices(), brute_fg)
    assert set(np.unique(ds2[brute_fg[0]]["mask"].numpy())) == {0, 1}
    ds3 = VolumeSliceDataset(cases, axis=a, intensity=percentile_window(), image_size=16, num_classes=3)
    idx3 = ds3.label_index()
    assert len(idx3[2]) == 5 and set(idx3[2]) <= set(idx3[1])
    with pytest.raises(DataError, match=r"p00_seg\.nii\.gz: label values \[2\] outside 0..1"):
        VolumeSliceDataset(cases, axis=a, intensity=percentile_window(), num_classes=2)[0]
    with pytest.raises(ConfigError):
        VolumeSliceDataset(cases, axis=a, intensity=None)
    split_ds = VolumeSliceDataset.from_folder(root, split="val", intensity=percentile_window(), image_size=16)
    assert split_ds.splits == found.splits and {split_ds[0]["case_id"]} <= set(found.splits["val"])


# --- the 2D pipeline's registries -------------------------------------------------------------


@pytest.fixture
def registered():
    """Register the volume layouts for one test, restoring the registries afterwards."""
    from segdino.data import check as dcheck
    from segdino.data import layouts as dlayouts
    from segdino.data import splits as dsplits
    from segdino.volumes import plugin

    saved = (list(dlayouts.LAYOUTS), dict(dsplits.LAYOUT_SPLIT_RULES), dict(dcheck.CHECKERS),
             getattr(dlayouts, "_plugins_loaded", None))
    plugin.register()
    plugin.register()  # twice is harmless
    yield
    dlayouts.LAYOUTS = saved[0]
    if saved[3] is not None:
        dlayouts._plugins_loaded = saved[3]
    dsplits.LAYOUT_SPLIT_RULES.clear()
    dsplits.LAYOUT_SPLIT_RULES.update(saved[1])
    dcheck.CHECKERS.clear()
    dcheck.CHECKERS.update(saved[2])


def _nnunet_png(root: Path, n: int = 6, value: int = 1) -> Path:
    from PIL import Image

    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(root / "imagesTr" / f"c{i}_0000.png")
        lab = np.zeros((16, 16), np.uint8)
        lab[2:6, 2:6] = value if i == 0 else 1
        Image.fromarray(lab).save(root / "labelsTr" / f"c{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "imagesTs" / "t0_0000.png")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                   "labels": {"background": 0, "polyp": 1}, "file_ending": ".png"}))
    (root / "splits_final.json").write_text(json.dumps(
        [{"train": [f"c{i}" for i in range(1, n)], "val": ["c0"]},
         {"train": [f"c{i}" for i in range(n - 1)], "val": [f"c{n - 1}"]}]))
    return root


def test_nnunet_2d_trains_through_the_2d_dataset(tmp_path, registered):
    from segdino.data.check import check_dataset
    from segdino.data.dataset import SegmentationDataset

    root = _nnunet_png(tmp_path / "Dataset010_Png")
    val = SegmentationDataset(root, split="val", fold=1, image_size=32)
    assert val.case_ids == ["c5"] and val.splits.source == "splits_final.json fold 1"
    item = val[0]
    assert item["image"].shape == (3, 32, 32) and int(item["mask"].sum()) == 64  # 4x4 label at 2x scale
    with pytest.raises(ConfigError, match="folds 0..1"):
        SegmentationDataset(root, split="val", fold=2)
    report = check_dataset(root)
    assert report.ok, report.problems
    assert report.layout == "nnunet-2d" and report.pairs == 6 and report.split_sizes["val"] == 1
    assert any("without labels" in n for n in report.notes)
    bad = _nnunet_png(tmp_path / "Dataset011_Png", value=3)  # 3 is not in dataset.json
    report = check_dataset(bad)
    assert not report.ok and any("c0.png" in p and "3" in p for p in report.problems), report.problems


def test_volume_check_through_the_common_checker(tmp_path, registered):
    from segdino.data.check import check_dataset

    root = make_nnunet(tmp_path / "Dataset012", n=3, channels=("CT",), test=0)
    report = check_dataset(root)
    assert report.ok, report.problems
    assert report.unit == "volumes" and report.pairs == 3 and report.num_classes == 3
    assert report.class_counts[2] == 3 and report.extra["sizes"] == "8 x 9 x 6 (x, y, z) at 0.7 x 1.3 x 3 mm"
    text = report.format()
    assert "volumes:" in text and "sizes:" in text and "2 lesion 3" in text and "label values:" in text
    bad = make_plain(tmp_path / "bad", n=4)
    write_nifti(bad / "labels" / "p01_seg.nii.gz", np.zeros((3, 3, 3), np.uint8), np.eye(4))
    report = check_dataset(bad)
    assert not report.ok and any("p01_seg.nii.gz: label shape" in p for p in report.problems)
    assert "1 label(s) off" in report.extra["geometry"]


# --- whole-volume prediction ----------------------------------------------------------------


def test_predict_volume_lands_on_the_source_grid(tmp_path, tiny_model):
    from segdino.volumes import predict_volume

    tiny_model.config.volume = volume_settings(ct_window("abdomen"), axis="axial", context=1)
    image, _ = _case_arrays(4, shape=(20, 24, 7))
    aff = synthetic_affine()
    vol = Volume(image, aff)
    a = resolve_axis("axial", aff)
    pred = predict_volume(tiny_model, vol, batch_size=3)
    assert pred.shape == vol.shape and pred.dtype == np.uint8
    assert set(np.unique(pred)) == {0, 1}  # a random model: both labels occur, so the check below bites
    # The same voxels stored with the slice axis first: "axial" follows the affine, so each
    # slice is the same picture and the labels come back identical, voxel for voxel.
    moved = np.moveaxis(image, a, 0)
    aff2 = aff.copy()
    aff2[:3, :3] = aff[:3, [a] + [i for i in range(3) if i != a]]
    assert resolve_axis("axial", aff2) == 0
    np.testing.assert_allclose(Volume(moved, aff2).world((3, 5, 2)),
                               vol.world(np.insert([5, 2], a, 3)), atol=1e-9)
    pred2 = predict_volume(tiny_model, Volume(moved, aff2), batch_size=4)
    np.testing.assert_array_equal(np.moveaxis(pred2, 0, a), pred)
    tiny_model.config.volume = None
    with pytest.raises(ConfigError, match="trained on 2D"):
        predict_volume(tiny_model, vol)
