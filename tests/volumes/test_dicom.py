"""segdino.volumes.dicom: DICOM series in world coordinates, and the series a folder must hold."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import DataError  # noqa: E402
from segdino.volumes import read_volume, resolve_axis, write_nifti  # noqa: E402
from tests.volumes.files import (  # noqa: E402
    ROW_DIR,
    COL_DIR,
    NORMAL,
    PIXEL_SPACING,
    SLICE_GAP,
    IPP0,
    write_dicom_series,
)


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
