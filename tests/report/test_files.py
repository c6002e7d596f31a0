"""The evaluation's table files: per-case CSV and strict summary JSON."""

import csv
import json

import numpy as np
import pytest

from segdino.metrics import case_rows, summarize
from segdino.report import write_case_csv, write_summary_json


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
