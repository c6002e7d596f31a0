"""The real 2D datasets beside the project (../shared/data) read as their README says.

Skipped where the data is absent. The repository root's parent holds ``shared/``, wherever the
checkout lives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segdino.cli import main as cli_main
from segdino.data.check import check_dataset
from segdino.data.dataset import SegmentationDataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# folder: (pairs, (train, val, test), empty masks)
EXPECTED = {
    "kvasir-seg": (1000, (800, 100, 100), 0),
    "isic2017-256": (2150, (1800, 200, 150), 0),
    "ddti": (655, (524, 66, 65), 7),
    "liver-ct-slices": (643, (515, 64, 64), 0),
}


def _folder(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present")
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_check(name, capsys):
    root = _folder(name)
    pairs, (train, val, test), empty = EXPECTED[name]
    report = check_dataset(root)
    assert report.ok, report.problems
    assert report.pairs == pairs
    assert report.split_sizes == {"train": train, "val": val, "test": test}
    assert report.split_source == "splits.json"
    assert report.num_classes == 1
    assert len(report.empty_masks) == empty
    assert sum(report.image_sizes.values()) == pairs
    text = report.format()
    assert f"pairs:       {pairs}" in text and f"train {train}, val {val}, test {test}" in text


def test_real_dataset_cli_exit_code(capsys):
    root = _folder("ddti")
    assert cli_main(["data", "check", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "pairs:       655" in out and "337_3(1)" in out and "usable" in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_samples(name):
    root = _folder(name)
    ds = SegmentationDataset(root, split="test", image_size=(64, 64))
    assert len(ds) == EXPECTED[name][1][2]
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["mask"].shape == (64, 64)
        native = ds.native_mask(i)
        assert tuple(s["orig_size"].tolist()) == native.shape
        assert set(np.unique(native).tolist()) <= {0, 1}
        assert ds.native_image(i).shape[:2] == native.shape
