"""A real MRI (Colin27 ch2) and its AAL label map: exact read -> slice -> reassemble -> write round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

from segdino.volumes import (  # noqa: E402
    check_volume_dataset,
    iter_label_slices,
    iter_slices,
    percentile_window,
    read_volume,
    reassemble,
    resolve_axis,
    write_nifti,
)

ATLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain-mri-atlas"
pytestmark = pytest.mark.skipif(not (ATLAS / "ch2.nii.gz").is_file() or not (ATLAS / "aal.nii.gz").is_file(),
                                reason=f"real atlas not present at {ATLAS}")


@pytest.fixture(scope="module")
def atlas():
    return read_volume(ATLAS / "ch2.nii.gz"), read_volume(ATLAS / "aal.nii.gz")


def test_atlas_round_trip_is_exact(atlas, tmp_path):
    image, labels = atlas
    assert image.shape == labels.shape == (181, 217, 181)
    assert np.array_equal(image.affine, labels.affine)
    axis = resolve_axis("axial", image.affine)
    assert axis == 2  # the atlas is stored RAS: array axis 2 runs inferior -> superior
    # MNI origin: world (0, 0, 0) lies inside the brain, at voxel (90, 125, 71).
    np.testing.assert_allclose(image.world((90, 125, 71)), [0, 0, 0])

    centre = [img[..., 1].astype(image.array.dtype) for _, img in iter_slices(image, "axial", k=2)]
    label_maps = [m for _, m in iter_label_slices(labels, "axial")]
    new_image = reassemble(centre, "axial", image.shape, image.affine)
    new_labels = reassemble(label_maps, "axial", labels.shape, labels.affine)
    back_image = read_volume(write_nifti(tmp_path / "ch2.nii.gz", new_image, image.affine))
    back_labels = read_volume(write_nifti(tmp_path / "aal.nii.gz", new_labels, labels.affine))
    assert back_image.array.dtype == image.array.dtype and np.array_equal(back_image.array, image.array)
    assert back_labels.array.dtype == labels.array.dtype and np.array_equal(back_labels.array, labels.array)
    assert np.array_equal(back_image.affine, image.affine)
    assert np.array_equal(back_labels.affine, labels.affine)
    assert len(np.unique(back_labels.array)) == 117  # background + 116 AAL regions


def test_atlas_as_a_plain_dataset(tmp_path):
    root = tmp_path / "atlas"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "ch2.nii.gz").symlink_to(ATLAS / "ch2.nii.gz")
    (root / "labels" / "ch2.nii.gz").symlink_to(ATLAS / "aal.nii.gz")
    report = check_volume_dataset(root)
    assert report.ok, report.problems
    assert report.splits == {"train": 1, "val": 0, "test": 0}
    s = report.summary
    assert s["shapes"] == [(181, 217, 181)] and s["spacings"] == [(1.0, 1.0, 1.0)]
    assert len(s["label_voxels"]) == 117 and not report.geometry_mismatches
    assert sum(s["label_voxels"].values()) == 181 * 217 * 181

    from segdino.volumes.dataset import VolumeSliceDataset
    from segdino.volumes.layouts import find_volume_cases

    cases = find_volume_cases(root).cases
    ds = VolumeSliceDataset(cases, axis="axial", context=1, intensity=percentile_window(),
                            image_size=64, num_classes=117, cache_size=1)
    assert len(ds) == 181
    item = ds[90]
    assert item["orig_size"].tolist() == [181, 217] and item["image"].shape == (3, 64, 64)
    assert int(item["mask"].max()) > 0


@pytest.mark.parametrize("name", ["aal.nrrd", "aal.mha"])
def test_atlas_labels_keep_their_world_positions_in_itk_formats(atlas, tmp_path, name):
    sitk = pytest.importorskip("SimpleITK")
    from segdino.volumes import write_volume

    _, labels = atlas
    back = read_volume(write_volume(tmp_path / name, labels.array, labels.affine))
    assert back.array.dtype == labels.array.dtype and np.array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, labels.affine, atol=1e-9)
    # A region's centre of mass, placed by ITK itself from the written file (LPS), is where the
    # NIfTI file puts it in MNI millimetres (RAS).
    region = int(labels.array[90, 125, 71]) or 1
    centre = np.argwhere(labels.array == region).mean(axis=0)
    lps = sitk.ReadImage(str(tmp_path / name)).TransformContinuousIndexToPhysicalPoint([float(c) for c in centre])
    np.testing.assert_allclose(np.array(lps) * [-1, -1, 1], labels.world(centre), atol=1e-6)
