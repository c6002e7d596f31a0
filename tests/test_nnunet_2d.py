"""nnU-Net raw folders of 2D images, predicted and scored from the command line as nnU-Net names them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny

from segdino.cli import main
from segdino.metrics import case_metrics


def make_nnunet_2d(root: Path, n_train: int = 4, n_test: int = 3) -> Path:
    """imagesTr/CASE_0000.png + labelsTr/CASE.png (0/1), the same for imagesTs/labelsTs."""
    rng = np.random.default_rng(0)
    for sub, prefix, n in (("Tr", "c", n_train), ("Ts", "t", n_test)):
        (root / f"images{sub}").mkdir(parents=True)
        (root / f"labels{sub}").mkdir()
        for i in range(n):
            lab = np.zeros((24, 28), np.uint8)
            lab[3 + i: 12 + i, 5: 15 + 2 * i] = 1
            img = (rng.integers(0, 60, (24, 28, 3)) + 150 * lab[..., None]).astype(np.uint8)
            Image.fromarray(img).save(root / f"images{sub}" / f"{prefix}{i}_0000.png")
            Image.fromarray(lab).save(root / f"labels{sub}" / f"{prefix}{i}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1},
        "numTraining": n_train, "file_ending": ".png"}))
    return root


def _cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return cap


def _rows(report: Path) -> dict[str, dict]:
    with open(report / "cases.csv", newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_nnunet_2d_predicted_and_scored_case_for_case(tmp_path, capsys):
    import segdino

    root = make_nnunet_2d(tmp_path / "Dataset020_Polyp")
    ckpt = segdino.save_model(tiny(), tmp_path / "model.safetensors")
    cases = ["t0", "t1", "t2"]
    for values in ("index", "255"):
        out = tmp_path / f"pred_{values}"
        _cli(["predict", "--model", str(ckpt), str(root / "imagesTs"), "--out", str(out), "--device", "cpu",
              "--label-values", values], capsys)
        # Named after the case, as nnU-Net names predictions: CASE.png, not CASE_0000.png.
        assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{c}.png" for c in cases]
        stored = {c: np.asarray(Image.open(out / "masks" / f"{c}.png")) for c in cases}
        allowed = {0, 1} if values == "index" else {0, 255}
        assert set(np.unique(np.concatenate([s.ravel() for s in stored.values()]))) <= allowed
        _cli(["evaluate", "--predictions", str(out), "--data", str(root), "--out", str(tmp_path / f"rep_{values}")],
             capsys)
        rows = _rows(tmp_path / f"rep_{values}")
        assert sorted(rows) == cases
        for c in cases:
            gt = np.asarray(Image.open(root / "labelsTs" / f"{c}.png"))
            want = case_metrics(stored[c] > 0, gt, 1)[1]
            assert float(rows[c]["dice"]) == pytest.approx(want["dice"])
            assert float(rows[c]["iou"]) == pytest.approx(want["iou"])
    # 0/1 and 0/255 masks of the same prediction score alike.
    a, b = (json.loads((tmp_path / f"rep_{v}" / "summary.json").read_text()) for v in ("index", "255"))
    assert a["per_class"] == b["per_class"]
    # Predictions from a tool that kept the image names (CASE_0000.png) are matched to CASE too.
    kept = tmp_path / "kept"
    kept.mkdir()
    for c in cases:
        shutil.copy(tmp_path / "pred_index" / "masks" / f"{c}.png", kept / f"{c}_0000.png")
    from segdino.evaluation import match_predictions

    assert match_predictions(kept, cases, cases + ["c0"]) == {c: kept / f"{c}_0000.png" for c in cases}


def test_names_outside_nnunet_folders_keep_their_suffix(tmp_path):
    from segdino.file_prediction import ImageInput, output_names
    from segdino.prediction_writer import mask_for_file

    (tmp_path / "frames").mkdir()
    items = [ImageInput(tmp_path / "frames" / f"frame_{i:04d}.png", tmp_path / "frames") for i in range(2)]
    assert output_names(items) == ["frame_0000", "frame_0001"]  # no dataset.json: not nnU-Net channels
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    assert mask_for_file(mask, 1, "index").tolist() == [[0, 1], [1, 0]]
    assert mask_for_file(mask, 1).tolist() == [[0, 255], [255, 0]]
    assert mask_for_file(mask * 2, 3, "index").tolist() == [[0, 2], [2, 0]]
