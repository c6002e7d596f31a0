"""The one evaluator: images and volumes give one summary format; the accumulator reduces over
cases and processes to the same statistics."""

import socket

import numpy as np
import pytest
import torch.distributed as dist

from segdino.data.synthetic import write_dataset
from segdino.evaluation import evaluate_predictions
from segdino.evaluator import MetricAccumulator, ScoredCase
from segdino.metric_stats import summarize
from segdino.summary_file import EVALUATION_KEYS, SUMMARY_FORMAT, read_summary
from segdino.volumes.evaluate import evaluate_volumes
from segdino.volumes.io import write_volume


def _volume_dataset(root):
    """images/ + labels/ with two 12x16x16 volumes of 0.8 x 0.8 x 2.5 mm voxels, two classes."""
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for i, name in enumerate(("v1", "v2")):
        label = np.zeros((16, 16, 12), np.uint8)
        label[3 + i : 10, 4:12, 2:9] = 1
        label[5:8, 6:9, 4:6] = 2
        image = label.astype(np.float32) * 400.0
        write_volume(root / "images" / f"{name}.nii.gz", image, affine)
        write_volume(root / "labels" / f"{name}.nii.gz", label, affine)
    return root


def _keys(summary):
    return set(summary), set(summary["evaluation"])


def test_images_and_volumes_write_one_summary_format(tmp_path):
    pytest.importorskip("nibabel")
    data2d = write_dataset(tmp_path / "images", 1, 1, 2, size=(32, 32), seed=1)
    s2 = evaluate_predictions(data2d / "masks", data2d, tmp_path / "r2", split="all")
    data3d = _volume_dataset(tmp_path / "volumes")
    s3 = evaluate_volumes(data3d, tmp_path / "r3", predictions=data3d / "labels", split="all")

    assert _keys(s2) == _keys(s3)
    assert set(s2["evaluation"]) == set(EVALUATION_KEYS)
    assert s2["summary_format"] == s3["summary_format"] == SUMMARY_FORMAT
    assert (s2["evaluation"]["kind"], s3["evaluation"]["kind"]) == ("images", "volumes")
    assert (s2["evaluation"]["distance_unit"], s3["evaluation"]["distance_unit"]) == ("px", "mm")
    assert s2["lesions"] == {} and set(s3["lesions"]) == {"class 1", "class 2"}
    assert s2["evaluation"]["cases"] == sorted(s2["evaluation"]["cases"]) and len(s2["evaluation"]["cases"]) == 4
    # The same statistics per metric, perfect predictions in both.
    assert set(s2["per_class"]["1"]["dice"]) == set(s3["per_class"]["1"]["dice"])
    assert s2["per_class"]["1"]["dice"]["mean"] == s3["per_class"]["2"]["dice"]["mean"] == 1.0
    # What is written is what is returned, read back in the same form.
    for out, s in ((tmp_path / "r2", s2), (tmp_path / "r3", s3)):
        back = read_summary(out / "summary.json")
        assert _keys(back) == _keys(s) and back["evaluation"]["split"] == "all"
        assert back["outputs"]["summary_json"] == str(out / "summary.json")


def _cases(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gt = np.zeros((24, 24), np.uint8)
        gt[4 : 10 + i, 5:15] = 1
        pred = np.roll(gt, int(rng.integers(0, 4)), axis=1)
        if i == 2:
            pred[:] = 0  # HD95 undefined: a failure, counted
        out.append(ScoredCase(f"c{i}", pred, gt, extras={"height": 24, "width": 24}))
    return out


def test_accumulator_merged_shares_give_the_statistics_of_all_cases():
    cases = _cases(5)
    whole = MetricAccumulator(1, lesions=True)
    for c in cases:
        whole.add(c)
    shares = [MetricAccumulator(1, lesions=True) for _ in range(2)]
    for i, c in enumerate(cases):  # interleaved, as processes share a split
        shares[i % 2].add(c)
    merged = shares[0].merge(shares[1:])
    assert len(merged.rows) == len(whole.rows) == 5 and all(r["height"] == 24 for r in merged.rows)
    assert [r["case"] for r in merged.rows] == ["c0", "c2", "c4", "c1", "c3"]  # its own cases first
    # The same numbers as one pass over every case (in case order: sums of floats depend on it).
    assert summarize(sorted(merged.rows, key=lambda r: r["case"])) == whole.statistics()
    assert merged.statistics()["per_class"]["1"]["hd95"]["failures"] == 1
    a, b = merged.lesion_summaries()["foreground"], whole.lesion_summaries()["foreground"]
    for key in ("num_lesions", "found", "missed", "false_positives", "detection_f1"):
        assert a[key] == b[key]
    assert a["lesion_dice"]["mean"] == pytest.approx(b["lesion_dice"]["mean"], abs=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_accumulator_gathers_within_a_process_group():
    acc = MetricAccumulator(1)
    for c in _cases(3):
        acc.add(c)
    before = acc.statistics()
    assert acc.gather() is acc and acc.statistics() == before  # no group: unchanged
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        acc.gather()
    finally:
        dist.destroy_process_group()
    assert acc.statistics() == before and [r["case"] for r in acc.rows] == ["c0", "c1", "c2"]
