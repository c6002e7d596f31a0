"""segdino.volumes.dataset: the streaming slice dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import ConfigError, DataError  # noqa: E402
from segdino.volumes import (  # noqa: E402
    ct_window,
    find_volume_cases,
    iter_slices,
    normalize_intensity,
    percentile_window,
    read_volume,
    resolve_axis,
)
from segdino.volumes.dataset import VolumeSliceDataset  # noqa: E402
from tests.volumes.files import synthetic_affine, make_plain  # noqa: E402


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


def test_the_default_cache_holds_as_many_decoded_volumes_as_fit_its_memory(tmp_path, monkeypatch):
    import segdino.volumes.dataset as dataset_module
    from segdino.volumes.patches import VolumePatchDataset

    cases = find_volume_cases(make_plain(tmp_path / "cache", n=5)).cases
    # Small volumes all fit: shuffled access in any order decodes each case once.
    ds = VolumeSliceDataset(cases, intensity=percentile_window(), image_size=16, cache_size=None)
    assert ds.cache_capacity() == 5
    for i in np.random.default_rng(0).permutation(len(ds)):
        ds[int(i)]
    assert ds.loads == 5
    # With room for two cases of the median size, two are kept (never fewer than two).
    monkeypatch.setattr(dataset_module, "CACHE_BYTES", 2 * ds.decoded_bytes(0) + 1)
    small = VolumeSliceDataset(cases, intensity=percentile_window(), image_size=16, cache_size=None)
    assert small.cache_capacity() == 2
    for i in small.epoch_order(seed=0):
        small[i]
        assert len(small._cache) <= 2
    assert small.loads == 5
    # Resampled to a finer spacing, a case takes more memory, as many times as it has more voxels.
    sp = ds.spacings[0]
    rest = [a for a in range(3) if a != ds.axes[0]]
    fine = VolumePatchDataset(cases, spacing=(sp[rest[0]] / 2, sp[rest[1]] / 2), patch_size=(16, 16),
                              intensity=percentile_window(), cache_size=None)
    assert fine.decoded_bytes(0) == 4 * ds.decoded_bytes(0)
