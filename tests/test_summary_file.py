"""The summary format: older 2D (nested) and volume (flat) summaries still read, in the one form."""

import json

import pytest

from segdino.errors import DataError
from segdino.summary_file import (
    EVALUATION_KEYS,
    SUMMARY_FORMAT,
    evaluation_facts,
    format_summary,
    make_summary,
    normalize_summary,
    read_summary,
)

STATS = {
    "num_cases": 2,
    "metrics": ["dice", "hd95"],
    "per_class": {"1": {"class_name": "lesion", "num_cases": 2,
                        "dice": {"mean": 0.8, "std": 0.1, "median": 0.8, "count": 2},
                        "hd95": {"mean": 3.0, "std": 1.0, "median": 3.0, "count": 1, "failures": 1,
                                 "with_failures_as_diagonal": {"mean": 10.0, "std": 9.9, "median": 10.0,
                                                               "count": 2}}}},
    "mean_over_classes": {"dice": {"mean": 0.8}},
}
OLD_2D = {**STATS, "evaluation": {"mode": "predictions", "predictions": "p", "data": "d", "split": "test",
                                  "split_source": "splits.json", "num_classes": 1, "pretrained": None,
                                  "metrics_at": "each image's own resolution",
                                  "warning": "classes [2] never occur"},
          "outputs": {"report": "r/report.md"}}
OLD_VOLUME = {**STATS, "lesions": {"lesion": {"num_lesions": 3, "found": 2}}, "data": "ds", "layout": "nnunet",
              "split": "val", "split_source": "run/splits.json", "cases": ["a", "b"], "predictions": None,
              "model": "m.safetensors (vitt16, 1 output(s))", "num_classes": 1, "class_names": {"1": "lesion"},
              "distance_unit": "mm", "nsd_tolerance": 1.0, "largest_component_classes": [], "reoriented": ["b"],
              "resampled": [], "ignored_predictions": [], "dataset_issues": [], "pretrained": True}


def test_the_old_2d_form_reads_with_its_facts_nested_as_before(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(OLD_2D))
    s = read_summary(path)
    assert s["summary_format"] == SUMMARY_FORMAT and set(s["evaluation"]) == set(EVALUATION_KEYS)
    assert s["evaluation"]["split"] == "test" and s["evaluation"]["kind"] == "images"
    assert s["evaluation"]["warning"] == "classes [2] never occur" and s["evaluation"]["distance_unit"] == "px"
    assert s["per_class"] == STATS["per_class"] and s["lesions"] == {} and s["outputs"] == OLD_2D["outputs"]
    assert format_summary(s).splitlines()[0] == "2 cases (test split)"
    assert "warning: classes [2]" in format_summary(OLD_2D)


def test_the_old_volume_form_reads_with_its_facts_moved_under_evaluation():
    s = normalize_summary(OLD_VOLUME)
    assert "split" not in dict.keys(s) and s["evaluation"]["split"] == "val"
    assert s["evaluation"]["kind"] == "volumes" and s["evaluation"]["reoriented"] == ["b"]
    assert s["lesions"] == OLD_VOLUME["lesions"] and s["per_class"] == STATS["per_class"]
    # Readers of the flat form keep working: a fact answers at the top level too.
    assert s["split"] == "val" and s["cases"] == ["a", "b"] and s.get("nsd_tolerance") == 1.0
    assert s.get("no such key", "x") == "x"
    with pytest.raises(KeyError):
        s["no such key"]
    assert "HD95 3.00 mm over 1 cases (1 undefined" in format_summary(s)
    assert OLD_VOLUME["split"] == "val" and "evaluation" not in OLD_VOLUME  # the input is left alone


def test_the_current_form_reads_back_unchanged():
    s = make_summary(STATS, None, evaluation_facts("volumes", split="all", distance_unit="mm"))
    again = normalize_summary(json.loads(json.dumps(s)))
    assert again == s and again["evaluation"]["kind"] == "volumes"
    with pytest.raises(ValueError, match="not facts"):
        evaluation_facts("images", splt="test")


def test_a_file_that_is_not_a_summary_is_refused(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"epochs": 3}))
    with pytest.raises(DataError, match="not an evaluation summary"):
        read_summary(path)
    with pytest.raises(DataError):
        read_summary(tmp_path / "missing.json")
