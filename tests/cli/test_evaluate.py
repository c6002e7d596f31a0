"""``segdino evaluate``: which split a report scores, and what it says when a split is empty."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import segdino
from segdino.cli import main as cli_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from segdino.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("v") / "other", 4, 1, 2, size=(32, 32), seed=5)


def _fake_run(folder, trained_on):
    """A run folder as training leaves it (config.yaml, splits.json, best.safetensors), trained on ``trained_on``."""
    folder.mkdir()
    model = segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32))
    segdino.save_model(model, folder / "best.safetensors")
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": str(trained_on), "pretrained": False}))
    (folder / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["c", "d"]}))
    return folder


def test_evaluate_on_another_dataset_scores_all_of_it_and_says_so(data, tmp_path, capsys):
    elsewhere = tmp_path / "kvasir"
    elsewhere.mkdir()
    run = _fake_run(tmp_path / "run", elsewhere)
    assert cli_main(["evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "r"),
                     "--device", "cpu", "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "--split" in line]
    assert len(err) == 1 and "--split all" in err[0] and str(data) in err[0]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["evaluation"]["split"] == "all" and summary["num_cases"] == 7
    head = (tmp_path / "r" / "report.md").read_text().split("## Summary")[0]
    assert "Split: all" in head and "pretrained: false" in head
    assert head.startswith("# SegDINO evaluation of run: other, all split")  # the model is named

    # On the run's own dataset the default stays the test split.
    run2 = _fake_run(tmp_path / "run2", data)
    assert cli_main(["evaluate", "--model", str(run2), "--data", str(data), "--out", str(tmp_path / "r2"),
                     "--device", "cpu", "--quiet"]) == 0
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["evaluation"]["split"] == "test"


def test_an_empty_split_suggests_split_all(tmp_path, capsys):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / f"x{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:10, 4:10] = 255
        Image.fromarray(mask).save(root / "masks" / f"x{i}.png")
    (root / "splits.json").write_text(json.dumps({"train": ["x0", "x1", "x2"], "val": [], "test": []}))
    assert cli_main(["evaluate", "--predictions", str(root / "masks"), "--data", str(root), "--out",
                     str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--split all" in err[0]
