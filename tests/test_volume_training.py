"""Training on volumes: the foreground sampler, a small model that learns small lesions, and the
``train`` / ``predict`` / ``evaluate`` / ``demo --volumes`` commands on generated nnU-Net data."""

import json

import numpy as np
import pytest

from segdino.cli import main as cli_main
from segdino.data import synthetic as syn
from segdino.summary_file import read_summary
from segdino.train_config import resolve_config
from segdino.training import EpochSampler, build_datasets

pytest.importorskip("nibabel")

LESION = syn.VOLUME_LABELS["lesion"]


@pytest.fixture(scope="module")
def tiny_volumes(tmp_path_factory):
    """6 train, 1 val, 2 test volumes of (8, 32, 32) voxels with anisotropic spacing."""
    root = tmp_path_factory.mktemp("volumes")
    return syn.write_volume_dataset(root / "data", 6, 1, 2, shape=(8, 32, 32), seed=3, spacing=(3.0, 1.2, 1.2))


# --- the sampler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("world", [1, 2])
def test_sampler_hits_the_foreground_ratio_on_volume_slices(tiny_volumes, ratio, world):
    cfg = resolve_config(dict(data=str(tiny_volumes), out="unused", image_size=32, intensity="abdomen",
                              foreground_ratio=ratio, seed=5))
    train, _, foreground = build_datasets(cfg)
    table = train.label_index()
    # The rarest class is the lesion (fewer slices than the organ), and the sampler is given its slices.
    assert LESION in table and len(table[LESION]) < len(table[1]) < len(train)
    np.testing.assert_array_equal(foreground, table[LESION])
    natural = len(table[LESION]) / len(train)
    assert natural < 0.5  # without forcing, most slices hold no lesion

    batch = 4
    gb = batch * world
    forced = int(round(ratio * gb))
    for epoch in range(3):
        ranks = []
        for rank in range(world):
            s = EpochSampler(train, batch, seed=5, rank=rank, world=world, foreground=foreground,
                             foreground_ratio=ratio)
            s.set_epoch(epoch)
            ranks.append([i for _, i in s])
        steps = len(ranks[0]) // batch
        assert steps == len(train) // gb
        hits = []
        for b in range(steps):
            global_batch = [i for r in ranks for i in r[b * batch : (b + 1) * batch]]
            # Judged by the masks the model is trained on, not by the sampler's own bookkeeping.
            with_lesion = sum(bool((train[i]["mask"] == LESION).any()) for i in global_batch)
            assert with_lesion >= forced, (epoch, b, global_batch)
            hits.append(with_lesion / gb)
        # The rest of each batch is drawn as without forcing: the overall share sits near
        # r + (1 - r) * natural, far above the natural share for small r.
        expected = forced / gb + (1 - forced / gb) * natural
        assert abs(np.mean(hits) - expected) < 0.2
        assert np.mean(hits) >= forced / gb


def test_sampler_without_ratio_keeps_the_natural_share(tiny_volumes):
    cfg = resolve_config(dict(data=str(tiny_volumes), out="unused", image_size=32, intensity="abdomen",
                              foreground_ratio=0.0))
    train, _, foreground = build_datasets(cfg)
    assert foreground is None
    s = EpochSampler(train, 4, seed=0, foreground=foreground, foreground_ratio=cfg.foreground_ratio)
    order = [i for _, i in s]
    assert len(set(order)) == len(order) == (len(train) // 4) * 4  # a plain pass: every slice at most once


# --- the command line ----------------------------------------------------------------------------


def test_train_predict_evaluate_from_the_command_line(tiny_volumes, tmp_path, capsys):
    from segdino.volumes import read_volume

    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(tiny_volumes), "--out", str(run), "--backbone", "vitt16",
                     "--decoder-dim", "32", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                     "--augment", "none", "--num-workers", "0", "--intensity", "ct:-160,240",
                     "--foreground-ratio", "0.5", "--quiet", "--device", "cpu"]) == 0
    assert "best validation Dice" in capsys.readouterr().out
    config = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert config["num_classes"] == 3 and config["foreground_ratio"] == 0.5
    assert (run / "best.safetensors").is_file() and (run / "splits.json").is_file()

    preds = tmp_path / "pred"
    assert cli_main(["predict", str(tiny_volumes / "imagesTs"), "--model", str(run), "--out", str(preds),
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    written = sorted((preds / "masks").glob("*.nii.gz"))
    sources = sorted((tiny_volumes / "imagesTs").glob("*_0000.nii.gz"))
    assert [p.name for p in written] == [s.name.replace("_0000", "") for s in sources]
    for w, s in zip(written, sources):
        pred, image = read_volume(w), read_volume(s)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(pred.array).tolist()) <= {0, 1, 2}

    by_model, by_files = tmp_path / "eval_model", tmp_path / "eval_files"
    assert cli_main(["evaluate", "--model", str(run), "--data", str(tiny_volumes), "--out", str(by_model),
                     "--device", "cpu"]) == 0
    assert cli_main(["evaluate", "--predictions", str(preds), "--data", str(tiny_volumes),
                     "--out", str(by_files)]) == 0
    capsys.readouterr()
    a = read_summary(by_model / "summary.json")
    b = read_summary(by_files / "summary.json")
    assert a["split"] == "test" and len(a["cases"]) == 2
    names = {v["class_name"] for v in a["per_class"].values()}
    assert names == {"organ", "lesion"}
    # Scoring the model directly and scoring its written volumes give the same numbers.
    for c, row in a["per_class"].items():
        assert row["dice"]["mean"] == pytest.approx(b["per_class"][c]["dice"]["mean"], abs=1e-9)
    for name in ("report.md", "cases.csv"):
        assert (by_model / name).is_file()


def test_demo_volumes_runs_and_prints_both_dice_lines(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--volumes", "--epochs", "1", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    model_line = next(line for line in text.splitlines() if line.startswith("SegDINO"))
    threshold_line = next(line for line in text.splitlines() if line.startswith("best global threshold"))
    assert "lesion Dice per volume" in model_line and "lesion Dice per volume" in threshold_line
    model_dice = float(model_line.split()[-1])
    baseline = float(threshold_line.split("per volume")[1].split()[0])
    assert 0.0 <= model_dice <= 1.0 and 0.0 <= baseline < 0.3
    summary = read_summary(out / "report" / "summary.json")
    lesion = next(v for v in summary["per_class"].values() if v["class_name"] == "lesion")
    assert model_dice == pytest.approx(lesion["dice"]["mean"], abs=5e-4)
    tests = sorted((out / "data" / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in (out / "predictions" / "masks").glob("*.nii.gz")) == [p.name for p in tests]
