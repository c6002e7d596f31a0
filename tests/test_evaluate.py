"""segdino evaluate: native-resolution scoring, the report's files, --predictions, bad input."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import segdino
from segdino.cli import main
from segdino.data.synthetic import write_dataset
from segdino.errors import DataError
from segdino.evaluation import evaluate_model, evaluate_predictions, match_predictions
from segdino.metrics import case_rows
from tests.conftest import tiny


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    segdino.save_model(model, path)
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """2 train, 1 val, 4 test images of 40x48 (H x W)."""
    return write_dataset(tmp_path_factory.mktemp("synth") / "data", 2, 1, 4, size=(40, 48), seed=3)


def write_pair(root, stem, image, mask):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_500x375_image_is_scored_at_its_own_size(tmp_path, model, model_file):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    mask = np.zeros((375, 500), np.uint8)
    mask[100:251, 120:333] = 255  # 151 x 213: no whole-pixel image at 32x32
    data = tmp_path / "data"
    write_pair(data, "big", image, mask)
    (data / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": ["big"]}))

    summary = evaluate_model(model_file, data, tmp_path / "out", device="cpu", workers=0)
    (row,) = read_csv(tmp_path / "out" / "cases.csv")
    assert (row["height"], row["width"]) == ("375", "500")
    assert int(row["gt_voxels"]) == 151 * 213  # the ground truth as released, never resized
    assert float(row["diagonal"]) == pytest.approx(np.hypot(375, 500))
    # The scored mask is what `segdino.predict` gives at the image's size.
    pred = segdino.predict(model, image)[0]
    assert pred.shape == (375, 500)
    expected = case_rows("big", pred, mask > 0, 1)[0]
    assert float(row["dice"]) == pytest.approx(expected["dice"])
    assert int(row["pred_voxels"]) == expected["pred_voxels"]
    assert summary["per_class"]["1"]["dice"]["mean"] == pytest.approx(expected["dice"])
    assert summary["evaluation"]["split"] == "test"

    kept = evaluate_model(model, data, tmp_path / "kept", keep_size=True, workers=2)
    (krow,) = read_csv(tmp_path / "kept" / "cases.csv")
    assert (krow["height"], krow["width"]) == ("375", "500")
    assert "keep-size" in kept["evaluation"]["inference"]
    pred_kept = segdino.predict(model, image, keep_size=True)[0]
    assert int(krow["pred_voxels"]) == int(pred_kept.sum())


def test_report_files_learning_curves_and_run_split(tmp_path, model_file, synth):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model_file, run / "best.safetensors")
    (run / "log.csv").write_text("epoch,train_loss,val_dice\n1,0.9,0.2\n2,0.7,0.4\n3,0.5,\n")
    test_ids = json.loads((synth / "splits.json").read_text())["test"]
    # The run's own split names two of the test cases: those are the ones scored.
    (run / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": test_ids[:2]}))

    code = main(["evaluate", "--model", str(run), "--data", str(synth), "--device", "cpu", "--workers", "0"])
    assert code == 0
    out = run / "report"  # the run folder's report/ by default
    rows = read_csv(out / "cases.csv")
    assert sorted(r["case"] for r in rows) == sorted(test_ids[:2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 2
    assert summary["per_class"]["1"]["dice"]["count"] == 2
    assert "splits.json" in summary["evaluation"]["split_source"]
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", report)
    assert "figures/dice_histogram.png" in links and "figures/learning_curves.png" in links
    assert "figures/case_best.png" in links and "figures/case_worst.png" in links
    for link in links:
        assert (out / link).stat().st_size > 100, link


def test_predictions_from_cli_and_failures_counted(tmp_path, synth, capsys):
    test_ids = json.loads((synth / "splits.json").read_text())["test"]
    preds = tmp_path / "preds"
    (preds / "sub").mkdir(parents=True)
    for i, case in enumerate(test_ids):
        gt = np.asarray(Image.open(synth / "masks" / f"{case}.png"))
        if i == 0:
            gt = np.zeros_like(gt)  # an empty prediction of a lesion: HD95 undefined, a failure
        # Any tool's naming: a tag after the stem, sub-folders, 0/1 values.
        Image.fromarray((gt > 0).astype(np.uint8)).save(preds / "sub" / f"{case}_pred.png")
    code = main(["evaluate", "--predictions", str(preds), "--data", str(synth), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "4 cases" in printed and "1 undefined" in printed and str(tmp_path / "out" / "report.md") in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    hd = summary["per_class"]["1"]["hd95"]
    assert summary["num_cases"] == 4 and hd["failures"] == 1 and hd["count"] == 3
    assert hd["mean"] == pytest.approx(0.0)
    assert hd["with_failures_as_diagonal"]["mean"] == pytest.approx(np.hypot(40, 48) / 4)
    assert summary["per_class"]["1"]["dice"]["mean"] == pytest.approx(3 / 4)
    rows = read_csv(tmp_path / "out" / "cases.csv")
    assert [r["hd95_failed"] for r in rows if r["case"] == test_ids[0]] == ["1"]
    assert test_ids[0] in (tmp_path / "out" / "report.md").read_text()


def test_predictions_that_do_not_match_labels_are_refused(tmp_path, synth, capsys):
    test_ids = json.loads((synth / "splits.json").read_text())["test"]
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in test_ids[1:]:  # the first test case gets no prediction
        shutil.copy(synth / "masks" / f"{case}.png", preds / f"{case}.png")
    shutil.copy(synth / "masks" / f"{test_ids[1]}.png", preds / "stranger.png")
    code = main(["evaluate", "--predictions", str(preds), "--data", str(synth), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "stranger.png" in err and "match no case" in err
    assert test_ids[0] in err and "no prediction" in err
    assert not (tmp_path / "o" / "summary.json").exists()

    # A prediction of another size than its ground truth is named with both sizes.
    (preds / "stranger.png").unlink()
    Image.fromarray(np.zeros((40, 47), np.uint8)).save(preds / f"{test_ids[0]}.png")
    with pytest.raises(DataError, match=rf"{test_ids[0]}\.png: prediction size 47x40 differs .* \(48x40\)"):
        evaluate_predictions(preds, synth, tmp_path / "o")

    # Two predictions of one case.
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(preds / f"{test_ids[0]}.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(preds / f"{test_ids[0]}_mask.png")
    with pytest.raises(DataError, match="two predictions for case"):
        match_predictions(preds, test_ids, test_ids)


def test_class_count_mismatch_is_refused(tmp_path, model, synth):
    # A 3-class model on binary 0/255 masks.
    with pytest.raises(DataError, match=r"masks/synth_\d+\.png: mask values 255 .*predicts 3 classes"):
        evaluate_model(tiny(num_classes=3, seed=1), synth, tmp_path / "a", workers=0)
    assert not (tmp_path / "a" / "summary.json").exists()

    # A binary model on index masks 0..2.
    data = tmp_path / "multi"
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12], mask[20:28, 20:28] = 1, 2
    write_pair(data, "c0", np.full((32, 32, 3), 90, np.uint8), mask)
    (data / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": ["c0"]}))
    with pytest.raises(DataError, match=r"c0\.png: mask values 0\.\.2 look like an index mask.*predicts binary"):
        evaluate_model(model, data, tmp_path / "b", workers=0)

    # --num-classes of predictions that do not fit.
    with pytest.raises(DataError, match=r"--num-classes 2 means 2 classes"):
        evaluate_predictions(data / "masks", data, tmp_path / "c", num_classes=2)
    summary = evaluate_predictions(data / "masks", data, tmp_path / "c", num_classes=3)
    assert set(summary["per_class"]) == {"1", "2"}
    assert summary["per_class"]["2"]["dice"]["mean"] == 1.0
