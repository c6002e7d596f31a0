"""segdino.volumes.slicing: geometry through read, slice, reassemble and write."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import ConfigError, DataError  # noqa: E402
from segdino.volumes import (  # noqa: E402
    Volume,
    iter_label_slices,
    iter_slices,
    read_volume,
    reassemble,
    resolve_axis,
    write_nifti,
)
from tests.volumes.files import (  # noqa: E402
    SPACING,
    DIRECTION,
    ORIGIN,
    SHAPE,
    MARKERS,
    expected_world,
    synthetic_affine,
    synthetic_volume,
)


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
