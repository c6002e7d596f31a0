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


@pytest.mark.parametrize("order", ["C", "F"])
def test_slices_of_either_memory_order_equal_take_and_are_copies(order):
    # NIfTI volumes arrive Fortran-ordered; the slicing helpers index planes instead of np.take
    # (which is slow on them) and must give exactly what np.take gives, along every axis.
    from segdino.volumes.slicing import context_slice, label_slice, planes

    vol = np.asarray(np.random.default_rng(0).random((5, 6, 7)), order=order).astype(np.float16, order=order)
    labels = np.asarray(vol > 0.5, order=order).astype(np.uint8, order=order)
    for axis in range(3):
        n = vol.shape[axis]
        for i in (0, n // 2, n - 1):
            want = np.stack([np.take(vol, j, axis=axis) for j in (max(i - 1, 0), i, min(i + 1, n - 1))], -1)
            got = context_slice(vol, axis, i, k=1)
            assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))
            lab = label_slice(labels, axis, i)
            assert np.array_equal(lab, np.take(labels, i, axis=axis))
            lab[...] = 7  # a copy: the cached volume is untouched
            assert labels.max() <= 1
        assert np.array_equal(planes(vol, axis, [n - 1, 0]), np.take(vol, [n - 1, 0], axis=axis))


def test_a_plane_of_a_fortran_ordered_whole_scan_is_read_in_milliseconds():
    # One 2.5D sample of a 512x512x40 NIfTI-ordered volume: three planes. np.take needed ~200 ms
    # for them (DataLoader workers then delivered ~14 samples/s on a GPU machine); views ~1 ms.
    import time

    from segdino.volumes.slicing import context_slice

    vol = np.zeros((512, 512, 40), dtype=np.float16, order="F")
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        context_slice(vol, 2, 10 + i, k=1)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[2] < 0.03, times
