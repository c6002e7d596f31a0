"""Results a user can read and trust: learning curves, which split a report scored, models that
refuse inputs of the wrong kind, clean help texts."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import segdino
from segdino.cli import build_parser
from segdino.cli import main as cli_main
from segdino.report import learning_curve_panels, learning_curves_figure


def test_learning_curves_show_loss_and_validation_only_at_whole_epochs(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,step,train_loss,val_dice,lr,seconds,images_per_s,val_dice_class1,val_dice_class2\n"
                   "1,10,0.9,0.2,1e-3,3.1,40,0.3,0.1\n2,20,0.6,0.5,9e-4,3.0,41,0.6,0.4\n"
                   "3,30,0.4,0.7,5e-4,2.9,42,0.8,0.6\n")
    xname, panels = learning_curve_panels(log)
    assert xname == "epoch"
    assert [(title, sorted(cols)) for title, cols in panels] == [
        ("training loss", ["train_loss"]), ("validation", ["val_dice", "val_dice_class1", "val_dice_class2"])]
    fig = learning_curves_figure(log)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert axes[1].get_ylim() == (0.0, 1.0)


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


def test_help_texts_are_plain_and_name_what_they_take():
    def sub(name):
        action = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
        return action.choices[name]

    assert "``" not in sub("demo").format_help()
    export = sub("export").format_help()
    assert "RUN_DIR" in export
