"""segdino.volumes.check: every bad input of a volume dataset named."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.volumes import check_volume_dataset, format_report, write_nifti  # noqa: E402
from tests.volumes.files import (  # noqa: E402
    SPACING,
    synthetic_affine,
    _nifti,
    write_dicom_series,
    _case_arrays,
    make_nnunet,
    make_plain,
)


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
