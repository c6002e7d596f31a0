"""segdino.volumes.layouts: nnU-Net, Decathlon and images/labels volume folders and their splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segdino.errors import ConfigError, DataError  # noqa: E402
from segdino.volumes import (  # noqa: E402
    check_volume_dataset,
    find_volume_cases,
    format_report,
    is_volume_dataset,
    read_volume,
    seeded_split,
    volume_layout,
    write_nifti,
)
from tests.volumes.files import (  # noqa: E402
    write_dicom_series,
    _case_arrays,
    make_nnunet,
    make_decathlon,
    make_plain,
)


def test_nnunet_layout_folds_and_channels(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Test")
    folds = [{"train": ["case_000", "case_001", "case_002"], "val": ["case_003", "case_004"]},
             {"train": ["case_002", "case_003", "case_004"], "val": ["case_000", "case_001"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    assert volume_layout(root) == "nnunet" and is_volume_dataset(root)
    found = find_volume_cases(root, fold=1, channel="pet")
    assert found.channel == 1 and found.channel_names == ["CT", "PET"]
    assert found.splits == {"train": ["case_002", "case_003", "case_004"], "val": ["case_000", "case_001"],
                            "test": ["case_005", "case_006"]}
    assert found.split_source == "splits_final.json fold 1"
    c = found.case("case_003")
    assert c.image.name == "case_003_0001.nii.gz" and c.label.name == "case_003.nii.gz" and len(c.channel_files) == 2
    assert found.labels == {0: "background", 1: "organ", 2: "lesion"} and not found.issues
    assert np.all(read_volume(c.image).array >= 800)  # the PET file (values + 1000)
    with pytest.raises(DataError, match=r"2 channels.*CT.*PET.*--channel"):
        find_volume_cases(root)
    with pytest.raises(ConfigError, match="folds 0..1"):
        find_volume_cases(root, fold=2, channel=0)
    with pytest.raises(ConfigError, match="not a channel name"):
        find_volume_cases(root, channel="MR")
    (root / "splits_final.json").unlink()
    found = find_volume_cases(root, channel=0, seed=3)
    assert found.splits["test"] == ["case_005", "case_006"] and len(found.splits["val"]) == 1
    assert sorted(found.splits["train"] + found.splits["val"]) == [f"case_{i:03d}" for i in range(5)]


def test_nnunet_2d_png_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "Dataset002_Polyps"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((16, 20, 3), i * 10, np.uint8)).save(root / "imagesTr" / f"img{i}_0000.png")
        lab = np.zeros((16, 20), np.uint8)
        lab[4:8, 5:9] = 1
        Image.fromarray(lab).save(root / "labelsTr" / f"img{i}.png")
    meta = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1},
            "numTraining": 10, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert volume_layout(root) == "nnunet-2d" and not is_volume_dataset(root)
    found = find_volume_cases(root)
    assert not found.is_3d and len(found.cases) == 10
    assert {len(v) for v in found.splits.values()} == {8, 1} and sum(map(len, found.splits.values())) == 10
    pairs = found.pairs("train")
    assert all(img.name == f"{cid}_0000.png" and lab.name == f"{cid}.png" for cid, img, lab in pairs)
    report = check_volume_dataset(root)
    assert report.ok, report.problems
    assert report.summary["label_voxels"] == {0: 10 * (320 - 16), 1: 160}
    text = format_report(report)
    assert "images:       10 (10 labelled" in text and text.endswith("result:       usable")


def test_decathlon_layout_with_4d_files(tmp_path):
    root = make_decathlon(tmp_path / "Task01_BrainTumour")
    assert volume_layout(root) == "decathlon"
    with pytest.raises(DataError, match=r"3 channels.*FLAIR.*--channel"):
        find_volume_cases(root)
    found = find_volume_cases(root, channel="T2w")
    assert found.channel == 2 and len(found.cases) == 5 and not found.issues
    assert [c.case_id for c in found.unlabelled] == ["BRATS_900"]
    assert sorted(sum(found.splits.values(), [])) == [f"BRATS_{i:03d}" for i in range(4)]
    c = found.case("BRATS_001")
    image, _ = _case_arrays(1)
    np.testing.assert_array_equal(read_volume(c.image, c.channel).array, image * 3)
    report = check_volume_dataset(root, channel=2)
    assert report.ok, report.problems
    assert report.summary["label_voxels"][2] == 4 and report.summary["shapes"] == [(8, 9, 6)]
    text = format_report(report)
    assert "using channel 2" in text and "1 edema: 68 voxels in 4 volumes" in text and "without labels" in text


def test_plain_layout_and_splits(tmp_path):
    root = make_plain(tmp_path / "plain")
    write_dicom_series(root / "images" / "dcm01")
    vol = read_volume(root / "images" / "dcm01")
    write_nifti(root / "labels" / "dcm01.nii.gz", np.zeros(vol.shape, np.uint8), vol.affine)
    assert volume_layout(root) == "images-labels" and is_volume_dataset(root)
    found = find_volume_cases(root, seed=1)
    assert len(found.cases) == 11 and not found.issues
    assert found.case("dcm01").image.is_dir()
    assert [len(found.splits[k]) for k in ("train", "val", "test")] == [9, 1, 1]
    assert found.splits == find_volume_cases(root, seed=1).splits  # seeded: same again
    assert found.splits == seeded_split([c.case_id for c in found.cases], seed=1)
    (root / "splits.json").write_text(json.dumps({"train": ["p00", "p01_seg"], "val": ["p02.nii.gz"], "test": ["p03"]}))
    # One split rule for 2D and volumes: a name the dataset lacks is refused, not dropped.
    with pytest.raises(DataError, match="'train' names 1 case.* p01_seg"):
        find_volume_cases(root)
    (root / "splits.json").write_text(json.dumps({"train": ["p00", "p01"], "val": ["p02.nii.gz"], "test": ["p03"]}))
    found = find_volume_cases(root)
    assert found.split_source == "splits.json"
    assert found.splits["train"] == ["p00", "p01"] and found.splits["test"] == ["p03"]
    report = check_volume_dataset(root)
    assert "dcm01" in report.empty_labels
    assert volume_layout(tmp_path) is None
    with pytest.raises(DataError, match="not a volume dataset"):
        find_volume_cases(tmp_path)
