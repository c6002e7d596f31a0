"""segdino.volumes.nifti: NIfTI reading (4D, truncated, missing) and atomic writing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import DataError  # noqa: E402
from segdino.volumes import read_volume, write_nifti  # noqa: E402
from tests.volumes.files import _nifti  # noqa: E402


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
