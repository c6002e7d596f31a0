"""`segdino demo` end to end at a short length (8 of its 36 epochs): every output is written and
reported, and the model already beats the best global threshold, as the README says it does."""

import json

import pytest

from segdino.cli import main as cli_main



def test_demo_runs_end_to_end_and_prints_model_and_threshold_dice(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out), "--epochs", "8", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "SegDINO (vitt16, trained here)" in text and "best global threshold" in text
    model_line = next(line for line in text.splitlines() if line.startswith("SegDINO"))
    threshold_line = next(line for line in text.splitlines() if line.startswith("best global threshold"))
    model_dice = float(model_line.split()[-1])
    baseline = float(threshold_line.split("per image")[1].split()[0])
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert model_dice == pytest.approx(summary["mean_over_classes"]["dice"]["mean"], abs=5e-4)
    assert 0.0 <= model_dice <= 1.0 and baseline < 0.3  # texture, not brightness, marks the lesions
    # Measured 0.364 against 0.187 at seed 0 (36 epochs reach far more): the margin is the claim.
    assert model_dice > baseline + 0.1, (model_dice, baseline)
    for path in ("run/best.safetensors", "run/log.csv", "run/config.yaml", "report/report.md",
                 "report/cases.csv", "data/splits.json"):
        assert (out / path).is_file(), path
    masks = sorted((out / "predictions" / "masks").glob("*.png"))
    overlays = sorted((out / "predictions" / "overlays").glob("*.png"))
    assert len(masks) == len(overlays) == 40
    # A second demo into the same folder is refused unless asked for.
    assert cli_main(["demo", "--out", str(out), "--epochs", "1", "--device", "cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err
