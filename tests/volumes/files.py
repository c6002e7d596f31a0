"""Small volumes, DICOM series and dataset folders for the volume tests, with known geometry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from segdino.volumes import write_nifti  # noqa: E402


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


def _nifti(path: Path, array, affine=None) -> Path:
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


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


def make_plain(root: Path, n: int = 10) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, label = _case_arrays(i)
        write_nifti(root / "images" / f"p{i:02d}.nii.gz", image, synthetic_affine())
        write_nifti(root / "labels" / f"p{i:02d}_seg.nii.gz", label, synthetic_affine())
    return root


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
