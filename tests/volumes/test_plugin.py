"""segdino.volumes.plugin: volume and nnU-Net 2D layouts in the 2D pipeline's registries."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import ConfigError  # noqa: E402
from segdino.volumes import write_nifti  # noqa: E402
from tests.volumes.files import make_nnunet, make_plain, _nnunet_png  # noqa: E402


@pytest.fixture
def registered():
    """Register the volume layouts for one test, restoring the registries afterwards."""
    from segdino.data import check as dcheck
    from segdino.data import layouts as dlayouts
    from segdino.data import readers as dreaders
    from segdino.data import splits as dsplits
    from segdino.volumes import plugin

    # The plugin loader's once-only flag (segdino.data.readers) is restored with the registries,
    # so that a later test loads the plugins again.
    saved = (list(dlayouts.LAYOUTS), dict(dsplits.LAYOUT_SPLIT_RULES), dict(dcheck.CHECKERS),
             dreaders._plugins_loaded, list(dreaders.FORMATS))
    plugin.register()
    plugin.register()  # twice is harmless
    yield
    dlayouts.LAYOUTS = saved[0]
    dreaders._plugins_loaded = saved[3]
    dreaders.FORMATS[:] = saved[4]
    dsplits.LAYOUT_SPLIT_RULES.clear()
    dsplits.LAYOUT_SPLIT_RULES.update(saved[1])
    dcheck.CHECKERS.clear()
    dcheck.CHECKERS.update(saved[2])


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
