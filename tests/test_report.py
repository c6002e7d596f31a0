"""Evaluation files: per-case CSV, strict summary JSON, overlays and the Markdown report."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from segdino import DataError
from segdino.metrics import case_rows, lesion_metrics, summarize, summarize_lesions
from segdino.report import (
    BOTH_COLOUR,
    GT_COLOUR,
    PRED_COLOUR,
    contour,
    overlay,
    read_log,
    worst_slice,
    write_case_csv,
    write_report,
    write_summary_json,
)


def square(shape, top, left, size, value=1):
    m = np.zeros(shape, dtype=np.uint8)
    m[top : top + size, left : left + size] = value
    return m


@pytest.fixture
def cases_2d():
    shape = (32, 40)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    gt = square(shape, 8, 8, 12)
    return {
        "perfect": (image, gt, gt.copy()),
        "shifted": (image, gt, square(shape, 8, 11, 12)),
        "half": (image, gt, square(shape, 8, 8, 6)),
        "missed": (image, gt, np.zeros(shape, np.uint8)),
    }


def rows_of(cases, num_classes=1, spacing=None):
    return [r for name, (_, g, p) in cases.items() for r in case_rows(name, p, g, num_classes, spacing)]


def test_case_csv_round_trip(tmp_path, cases_2d):
    rows = rows_of(cases_2d)
    path = tmp_path / "out" / "cases.csv"
    write_case_csv(path, rows)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["case"] for r in back] == list(cases_2d)
    assert list(back[0])[:3] == ["case", "class", "class_name"]
    missed = back[3]
    assert missed["hd95"] == "" and missed["hd95_failed"] == "1"
    assert back[0]["hd95_failed"] == "0"
    assert float(back[1]["dice"]) == pytest.approx(rows[1]["dice"])
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_summary_json_is_strict(tmp_path, cases_2d):
    summary = summarize(rows_of(cases_2d))
    path = tmp_path / "summary.json"
    write_summary_json(path, summary)

    def refuse(const):
        raise AssertionError(f"non-standard JSON constant {const}")

    back = json.loads(path.read_text(), parse_constant=refuse)
    hd = back["per_class"]["1"]["hd95"]
    assert hd["failures"] == 1 and hd["count"] == 3
    assert hd["with_failures_as_diagonal"]["count"] == 4
    one = summarize(rows_of({"m": cases_2d["missed"]}))
    write_summary_json(path, one)
    back = json.loads(path.read_text(), parse_constant=refuse)
    assert back["per_class"]["1"]["hd95"]["mean"] is None  # NaN written as null
    assert back["per_class"]["1"]["dice"]["std"] is None  # one value: no sample std


def test_contour_and_overlay_colours():
    gt = square((12, 12), 2, 2, 5)
    edge = contour(gt)
    assert edge.sum() == 16 and not edge[4, 4] and edge[2, 2]
    pred = square((12, 12), 2, 4, 5)
    img = np.full((12, 12, 3), 50, dtype=np.uint8)
    out = overlay(img, gt, pred)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    assert tuple(out[4, 2]) == GT_COLOUR  # GT left edge only
    assert tuple(out[4, 8]) == PRED_COLOUR  # prediction right edge only
    assert tuple(out[2, 5]) == BOTH_COLOUR  # shared top edge
    assert tuple(out[4, 5]) == (50, 50, 50)  # interior untouched
    assert tuple(img[4, 2]) == (50, 50, 50)  # input not modified
    grey = overlay(np.linspace(-1000, 400, 144).reshape(12, 12), gt, pred)
    assert grey.shape == (12, 12, 3) and grey[..., 0].max() == 255
    with pytest.raises(DataError, match="same height and width"):
        overlay(img, gt[:10], pred)


def test_overlay_thickens_on_large_images():
    gt = square((1080, 1920), 300, 300, 200)
    out = overlay(np.zeros((1080, 1920, 3), np.uint8), gt, gt)
    # A 5-pixel-wide line across the square's top edge (rows 296..304 at most).
    column = np.all(out[:, 400] == BOTH_COLOUR, axis=-1)
    assert 4 <= column[280:320].sum() <= 9


def test_worst_slice():
    gt = np.zeros((6, 8, 8), dtype=np.uint8)
    gt[1:5, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[3, 0:8, 0:3] = 1  # most wrong voxels on slice 3
    assert worst_slice(pred, gt, axis=0) == 3
    assert worst_slice(np.moveaxis(pred, 0, 2), np.moveaxis(gt, 0, 2), axis=2) == 3
    assert worst_slice(gt, gt) == 1  # no error: most foreground, lowest index
    assert worst_slice(np.zeros_like(gt), np.zeros_like(gt)) == 3
    with pytest.raises(DataError):
        worst_slice(gt[0], gt[0])


def test_read_log_takes_numeric_columns(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_dice,lr,note\n0,0.9,,0.001,warmup\n1,0.7,0.4,0.001,\n2,0.5,0.6,0.0005,x\n")
    xname, curves = read_log(log)
    assert xname == "epoch" and set(curves) == {"train_loss", "val_dice", "lr"}
    assert curves["val_dice"] == ([1.0, 2.0], [0.4, 0.6])
    with pytest.raises(DataError, match="no such"):
        read_log(tmp_path / "absent.csv")


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
