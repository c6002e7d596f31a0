"""The Markdown and HTML report of 2D and 3D evaluations."""

import re

import numpy as np
import pytest
from PIL import Image

from segdino import DataError
from segdino.metrics import case_rows, lesion_metrics, summarize, summarize_lesions
from segdino.report import GT_COLOUR, write_report


def rows_of(cases, num_classes=1, spacing=None):
    return [r for name, (_, g, p) in cases.items() for r in case_rows(name, p, g, num_classes, spacing)]


def linked_images(md_text):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_text)


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()


def test_report_2d(tmp_path, cases_2d):
    rows = rows_of(cases_2d)
    summary = summarize(rows)
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_dice\n0,0.9,0.2\n1,0.6,0.5\n2,0.4,0.7\n")
    requested = []

    def load(name):
        requested.append(name)
        return cases_2d[name]

    path = write_report(tmp_path / "rep", rows, summary, cases=load, log_csv=log, title="Polyps")
    assert path == tmp_path / "rep" / "report.md"
    text = path.read_text()
    assert text.startswith("# Polyps")
    links = linked_images(text)
    assert links == [
        "figures/dice_histogram.png",
        "figures/dice_vs_size.png",
        "figures/learning_curves.png",
        "figures/case_best.png",
        "figures/case_median.png",
        "figures/case_worst.png",
        "figures/lowest_cases.png",
    ]
    for link in links:
        assert_png(path.parent / link)
    # Best/median/worst by Dice, then the lowest cases (all four here) from the lowest up.
    assert requested[:3] == ["perfect", "half", "missed"]
    assert requested[3] == "missed" and sorted(requested[3:]) == sorted(cases_2d)
    assert (path.parent / "report.html").is_file()
    assert "Best: perfect" in text and "Worst: missed" in text
    # The summary table shows the failure and both HD95 figures.
    table = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines() if line.startswith("| ")}
    assert table["metric"] == "foreground (1)" and table["cases"] == "4"
    assert table["HD95 failures"] == "1"
    assert table["HD95 (px), defined cases"].endswith("n=3")
    assert table["HD95 (px), failures scored as diagonal"].startswith(f"{summary['per_class']['1']['hd95']['with_failures_as_diagonal']['mean']:.2f}")
    assert "missed (foreground)" in text  # listed among surface-distance failures
    assert "green: ground truth" in text
    worst = np.asarray(Image.open(path.parent / "figures" / "case_worst.png"))
    assert worst.shape == (32 * 6, 40 * 6, 3)  # enlarged by a whole factor for visibility
    assert np.all(worst[8 * 6, 8 * 6 : 20 * 6] == GT_COLOUR)  # GT top edge drawn, nothing predicted


def test_report_3d_with_lesions(tmp_path):
    sp = (0.7, 0.7, 2.5)
    gt = np.zeros((8, 20, 20), dtype=np.uint8)
    gt[2:6, 4:10, 4:10] = 1
    gt[3:5, 14:17, 14:17] = 2
    pred = gt.copy()
    pred[4, 4:12, 4:12] = 1  # error concentrated on slice 4
    vol = np.random.default_rng(1).normal(0, 300, gt.shape)
    rows = case_rows("vol_001", pred, gt, 3, sp, class_names=["bg", "organ", "tumour"])
    summary = summarize(rows)
    summary["lesions"] = {"tumour": summarize_lesions([lesion_metrics(pred == 2, gt == 2, sp)])}
    path = write_report(tmp_path, rows, summary, cases={"vol_001": (vol, gt, pred)}, distance_unit="mm")
    text = path.read_text()
    assert "HD95 (mm)" in text and "slice 4" in text
    assert "## Lesion-wise detection" in text and "| tumour | 1 | 1 | 0 | 0 |" in text
    links = linked_images(text)
    assert links == ["figures/dice_histogram.png", "figures/dice_per_class.png", "figures/dice_vs_size.png",
                     "figures/case_best.png"]  # two classes: a box each; one case: shown once
    for link in links:
        assert_png(path.parent / link)
    with pytest.raises(DataError, match="no image data"):
        write_report(tmp_path / "other", rows, summary, cases={})


def test_report_without_optional_parts(tmp_path, cases_2d):
    rows = rows_of(cases_2d)
    path = write_report(tmp_path, rows, summarize(rows))
    links = linked_images(path.read_text())
    assert links == ["figures/dice_histogram.png", "figures/dice_vs_size.png"]  # from the rows alone
    assert not (tmp_path / "figures" / "learning_curves.png").exists()


def test_two_cases_show_best_and_worst(tmp_path, cases_2d):
    two = {k: cases_2d[k] for k in ("shifted", "half")}
    rows = rows_of(two)
    text = write_report(tmp_path, rows, summarize(rows), cases=two).read_text()
    assert linked_images(text) == ["figures/dice_histogram.png", "figures/dice_vs_size.png", "figures/case_best.png",
                                   "figures/case_worst.png"]
    assert "Best: shifted" in text and "Worst: half" in text and "Median" not in text
