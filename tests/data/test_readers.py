"""segdino.data.readers and segdino.data.cases: one (array, Geometry) protocol for images and volumes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segdino.data.geometry import Geometry
from segdino.data.layouts import Pair
from segdino.data.readers import format_of, read_array, read_geometry, write_array
from segdino.errors import DataError


def test_an_image_reads_as_rgb_on_a_unit_grid_and_writes_back(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    array, geometry = read_array(tmp_path / "x.png")
    np.testing.assert_array_equal(array, rgb)
    assert geometry.shape == (12, 20) and read_geometry(tmp_path / "x.png").shape == (12, 20)
    mask = (rgb[..., 0] > 127).astype(np.uint8)
    write_array(tmp_path / "m.png", mask, geometry)
    values, g = read_array(tmp_path / "m.png", label=True)
    np.testing.assert_array_equal(values, mask)
    with pytest.raises(DataError, match="--channel 2"):
        read_array(tmp_path / "x.png", channel=2)
    with pytest.raises(DataError, match="name the file .png"):
        write_array(tmp_path / "m.jpg", mask, geometry)


def test_an_unknown_suffix_is_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"notes\.txt: not a file format SegDINO reads; expected one of .*\.png"):
        read_array(tmp_path / "notes.txt")


def test_a_volume_and_a_pair_read_through_the_same_calls(tmp_path):
    pytest.importorskip("nibabel")
    from segdino.volumes.io import write_nifti
    from segdino.volumes.layouts import VolumeCase

    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    write_nifti(tmp_path / "ct.nii.gz", vol, aff)
    write_nifti(tmp_path / "lab.nii.gz", (vol > 60).astype(np.uint8), aff)
    assert format_of(tmp_path / "ct.nii.gz").name == "volume"
    case = VolumeCase("ct", tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz")
    array, geometry = case.read_image()
    np.testing.assert_array_equal(array, vol)
    np.testing.assert_allclose(case.geometry().spacing, [0.8, 0.8, 2.5])
    assert geometry.differences(case.read_label()[1]) == [] and case.is_labelled

    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "a_mask.png")
    pair = Pair("a", tmp_path / "a.png", [tmp_path / "a_mask.png"])
    assert pair.image_files == (tmp_path / "a.png",) and pair.label_files == (tmp_path / "a_mask.png",)
    assert pair.geometry().shape == (8, 9) and pair.read_label()[0].shape == (8, 9)
    assert not VolumeCase("u", tmp_path / "ct.nii.gz", None).is_labelled


def test_a_numpy_array_reads_with_a_unit_grid_and_round_trips(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    array, geometry = read_array(write_array(tmp_path / "v.npy", vol, Geometry(vol.shape, np.eye(4))))
    np.testing.assert_array_equal(array, vol)
    assert geometry.shape == (2, 3, 4) and read_geometry(tmp_path / "v.npy").shape == (2, 3, 4)
    np.save(tmp_path / "multi.npy", np.zeros((2, 3, 4, 2), np.int16))
    assert read_array(tmp_path / "multi.npy", channel=1)[0].shape == (2, 3, 4)
    with pytest.raises(DataError, match="pick one with --channel 0..1"):
        read_array(tmp_path / "multi.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: cannot read a NumPy array"):
        read_array(tmp_path / "obj.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:90])
    with pytest.raises(DataError, match=r"cut\.npy"):
        read_array(tmp_path / "cut.npy")
