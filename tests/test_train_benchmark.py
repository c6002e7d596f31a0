"""`segdino benchmark --train --device cpu` at a tiny size: the report's shape and real rows (never timed)."""

import dataclasses
import json
import math

from segdino.benchmark import BenchmarkReport, PathResult
from segdino.cli import main as cli_main
from tests.training.conftest import write_discs

# The inference benchmark's report shape, which the training benchmark shares.
REPORT_KEYS = {f.name for f in dataclasses.fields(BenchmarkReport)}
RESULT_KEYS = {f.name for f in dataclasses.fields(PathResult)}


def test_train_benchmark_cli_reports_every_path_in_the_benchmark_shape(tmp_path, capsys):
    data = write_discs(tmp_path / "data", n=16)
    out = tmp_path / "train.json"
    rc = cli_main(["benchmark", "--train", "--device", "cpu", "--backbone", "vitt16", "--image-size", "32",
                   "--decoder-dim", "16", "--batch", "4", "--steps", "2", "--repeats", "2", "--warmup", "1",
                   "--compile", "none", "--data", str(data), "--epochs", "2", "--num-workers", "0",
                   "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS
    names = [r["name"] for r in report["results"]]
    assert len(names) == 6, names
    steps, epoch1, later, loader = report["results"][:3], *report["results"][3:]
    assert [r["name"].startswith("train step: ") for r in steps] == [True] * 3
    assert "authors' recipe" in steps[0]["name"] and steps[0]["batch"] == 4 and steps[0]["precision"] == "fp32"
    assert "plain model" in steps[1]["name"] and "fused decoder" in steps[2]["name"]
    assert epoch1["name"].startswith("epoch 1 ") and later["name"].startswith("epochs 2-2 ")
    assert loader["name"].startswith("DataLoader alone")
    for r in report["results"]:
        assert set(r) == RESULT_KEYS
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0, r
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        # images/s is what the measured time says of the batch (or the epoch's images)
        if r["name"].startswith("train step"):
            assert abs(r["images_per_s"] - r["batch"] * 1000 / r["median_ms"]) < 1e-6 * r["images_per_s"]
            assert r["runs"] == 4
    assert report["results"][0]["ratio_vs_eager"] == 1.0
    assert report["gflops_per_image"] > 0 and report["params_total"] > 0
    assert "train step: plain model" in capsys.readouterr().out
