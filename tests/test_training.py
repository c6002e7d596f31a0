"""Training: learning, resume to the bit, best checkpoint, freezing, --init, config, bad input."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import segdino
from segdino.cli import main as cli_main
from segdino.errors import ConfigError
from segdino.train_config import resolve_config
from segdino.training import (EpochSampler, Trainer, TrainingError, build_datasets, dice_from_counts, make_transform,
                              overlap_counts, run_training)



def write_discs(root: Path, n: int = 32, size: int = 32, seed: int = 0) -> Path:
    """Bright discs of varied radius on a noisy darker background: a quickly learnable task."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    names = []
    for i in range(n):
        r = rng.uniform(size * 0.15, size * 0.3)
        cy, cx = rng.uniform(r, size - r, 2)
        fg = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.normal(70, 20, (size, size, 3))
        img[fg] += 110
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"c{i:02d}.png")
        Image.fromarray((fg * 255).astype(np.uint8)).save(root / "masks" / f"c{i:02d}.png")
        names.append(f"c{i:02d}")
    splits = {"train": names[: n * 3 // 4], "val": names[n * 3 // 4 :], "test": []}
    (root / "splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    return write_discs(tmp_path_factory.mktemp("discs") / "data")


def config(data, out, **kw):
    opts = dict(data=str(data), out=str(out), backbone="vitt16", decoder_dim=16, image_size=32, epochs=2,
                batch_size=8, num_workers=0, device="cpu", quiet=True, lr=2e-3, warmup_epochs=0.0,
                save_every=0.0)
    opts.update(kw)
    return resolve_config(opts)


def log_rows(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# --- learning ---------------------------------------------------------------------------------


def test_loss_falls_and_validation_dice_rises(discs, tmp_path):
    cfg = config(discs, tmp_path / "run", epochs=8, augment="none")
    summary = run_training(cfg)
    rows = log_rows(tmp_path / "run")
    loss = [float(r["train_loss"]) for r in rows]
    dice = [float(r["val_dice"]) for r in rows]
    assert len(rows) == 8
    assert loss[-1] < 0.6 * loss[0], loss
    assert max(dice[-3:]) > dice[0] + 0.2 and max(dice) > 0.6, dice
    assert summary["best_score"] == pytest.approx(max(dice), abs=1e-6)
    for name in ("config.yaml", "best.safetensors", "last.safetensors", "resume/state.safetensors", "splits.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_best_follows_the_validation_score(discs, tmp_path):
    cfg = config(discs, tmp_path / "run", epochs=4)
    run_training(cfg)
    rows = log_rows(tmp_path / "run")
    dice = [float(r["val_dice"]) for r in rows]
    best_epoch = int(np.argmax(dice)) + 1  # first maximum, as "improved" is strict
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert int(meta["epoch"]) == best_epoch
    assert float(meta["val_dice"]) == pytest.approx(max(dice), abs=1e-6)
    # The file holds that epoch's weights: re-validating it reproduces the logged score.
    model = segdino.load_model(tmp_path / "run")
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, None, model=model, out=tmp_path / "run")
    assert trainer.validate()[0] == pytest.approx(max(dice), abs=1e-6)


def test_training_time_dice_from_counts_scores_both_empty_as_one():
    """The validation Dice that picks the best epoch: 2|P∩G| / (|P|+|G|), 1 when both are empty."""
    counts = np.array([[3, 4, 6],    # 6 / 10
                       [0, 0, 0],    # both empty: perfect
                       [0, 5, 0],    # false positive on an empty mask
                       [0, 0, 7],    # lesion missed
                       [9, 9, 9]])  # exact
    assert dice_from_counts(counts).tolist() == pytest.approx([0.6, 1.0, 0.0, 0.0, 1.0])
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    gt = torch.tensor([[0, 1, 0], [2, 0, 0]])
    assert overlap_counts(pred, gt, 3).tolist() == [[1, 2, 1], [1, 2, 1]]
    assert overlap_counts(pred, gt, 1).tolist() == [[1, 2, 1]]  # binary: label 1
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert dice_from_counts(overlap_counts(empty, empty, 3)).tolist() == [1.0, 1.0]


def test_validation_scores_an_empty_case_predicted_empty_as_one(discs, tmp_path):
    """An empty mask predicted empty counts 1 in the mean (DDTI has seven such cases), not 0 or NaN."""
    cfg = config(discs, tmp_path / "run")
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, None, out=tmp_path / "run")
    with torch.no_grad():  # a model that predicts background everywhere
        trainer.model.head.conv.weight.zero_()
        trainer.model.head.conv.bias.fill_(-10.0)
    trainer.native_mask = lambda index: torch.zeros(tuple(val.native_mask(index).shape), dtype=torch.long)
    assert trainer.validate() == (1.0, [1.0])


# --- resume -----------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_bit_identical_weights(discs, tmp_path, monkeypatch):
    full = config(discs, tmp_path / "full", epochs=3, steps_per_epoch=2)
    run_training(full)

    original = Trainer.end_epoch

    def end_epoch_then_die(self, res):
        original(self, res)
        if res.epoch == 2:
            raise Interrupt()

    monkeypatch.setattr(Trainer, "end_epoch", end_epoch_then_die)
    with pytest.raises(Interrupt):
        run_training(config(discs, tmp_path / "cut", epochs=3, steps_per_epoch=2))
    monkeypatch.setattr(Trainer, "end_epoch", original)
    assert len(log_rows(tmp_path / "cut")) == 2
    before = log_rows(tmp_path / "cut")
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(config(discs, tmp_path / "cut", epochs=3, steps_per_epoch=2))
    ran = _record_epochs(monkeypatch)
    run_training(config(discs, tmp_path / "cut", epochs=3, steps_per_epoch=2, resume=True))
    # It continued: only the third epoch ran (its two steps), and the first two rows, wall time
    # included, are the ones the interrupted run wrote. A restart from epoch 1 reaches the same
    # weights (training is deterministic), so the weights alone would not show it.
    assert ran == [(2, 4, 6)]
    assert log_rows(tmp_path / "cut")[:2] == before

    a, b = weights(tmp_path / "full" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["train_loss"] for r in log_rows(tmp_path / "full")] == [r["train_loss"] for r in log_rows(tmp_path / "cut")]


def _record_epochs(monkeypatch) -> list[tuple[int, int, int]]:
    """Record (epoch index, step before, step after) of every epoch the trainer runs from now on."""
    ran = []
    original = Trainer.run_epoch

    def run_epoch(self, epoch, loader, bar):
        first = self.step
        result = original(self, epoch, loader, bar)
        ran.append((epoch, first, self.step))
        return result

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    return ran


def _resume_epoch(run: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run / "resume" / "state.safetensors"), framework="pt") as f:
        return int(json.loads(f.metadata()["segdino_resume"])["epoch"])


def _model_epoch(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["epoch"]


def test_save_every_throttles_saves_and_a_run_resumes_from_the_last_one(discs, tmp_path, monkeypatch):
    """--save-every 3600: last + state after epoch 1 and the last epoch only; a run interrupted in
    between resumes from epoch 1, removes the temporaries of killed writes and ends bit-identical."""
    import segdino.training.checkpoints as checkpoints

    saved = []
    real_save = checkpoints.save_resume_state
    monkeypatch.setattr(checkpoints, "save_resume_state",
                        lambda path, model, opt, meta: (saved.append(meta["epoch"]), real_save(path, model, opt, meta)))
    opts = dict(epochs=4, steps_per_epoch=1, save_every=3600.0)
    run_training(config(discs, tmp_path / "full", **opts))
    assert saved == [1, 4]
    assert _model_epoch(tmp_path / "full" / "last.safetensors") == "4"

    original = Trainer.end_epoch

    def end_epoch_then_die(self, res):
        original(self, res)
        if res.epoch == 3:
            raise Interrupt()

    monkeypatch.setattr(Trainer, "end_epoch", end_epoch_then_die)
    with pytest.raises(Interrupt):
        run_training(config(discs, tmp_path / "cut", **opts))
    monkeypatch.setattr(Trainer, "end_epoch", original)
    cut = tmp_path / "cut"
    assert _resume_epoch(cut) == 1 and _model_epoch(cut / "last.safetensors") == "1"  # epochs 2, 3 not saved
    assert len(log_rows(cut)) == 3
    first_row = log_rows(cut)[0]
    # What a write killed mid-way leaves behind, in both folders a run writes into.
    leftovers = [cut / ".last.safetensors.k2j4x9_a.tmp", cut / "resume" / ".state.safetensors.p0q1r2s3.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")

    ran = _record_epochs(monkeypatch)
    saved.clear()
    run_training(config(discs, cut, resume=True, **opts))
    assert [epoch for epoch, _, _ in ran] == [1, 2, 3]  # from the last save, not from the interruption
    assert ran[0][1] == 1
    assert saved == [2, 4]  # the first epoch a process runs is saved, then throttled again
    assert not any(p.exists() for p in leftovers)
    rows = log_rows(cut)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"] and rows[0] == first_row
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in log_rows(tmp_path / "full")]
    a, b = weights(tmp_path / "full" / "last.safetensors"), weights(cut / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _resume_epoch(cut) == 4


def test_resume_refuses_another_model(discs, tmp_path):
    run_training(config(discs, tmp_path / "run", epochs=1, steps_per_epoch=1))
    with pytest.raises(ConfigError, match="decoder_dim"):
        run_training(config(discs, tmp_path / "run", epochs=2, decoder_dim=32, resume=True))


# --- freezing and --init ----------------------------------------------------------------------


def test_frozen_backbone_stays_unchanged(discs, tmp_path):
    cfg = config(discs, tmp_path / "run", epochs=1, steps_per_epoch=2, freeze_backbone=True)
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, make_transform(cfg), out=tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(("tpa.", "sad.", "head.")))
    assert {g["name"] for g in trainer.opt.param_groups} == {"decoder"}


def test_init_from_authors_state_dict_with_a_new_head(discs, tmp_path):
    from tests.conftest import randomize_
    from tests.test_weights import authors_state

    src = randomize_(segdino.build_model("vitt16", num_classes=3, decoder_dim=16, image_size=(32, 32)))
    torch.save(authors_state(src), tmp_path / "authors.pth")
    cfg = config(discs, tmp_path / "run", epochs=1, steps_per_epoch=1, init=str(tmp_path / "authors.pth"),
                 decoder_dim=None)
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, None, out=tmp_path / "run")
    model = trainer.model
    assert model.num_classes == 1 and model.config.decoder_dim == 16
    src_sd, sd = src.state_dict(), model.state_dict()
    for k, v in sd.items():
        if k.startswith("head."):
            assert v.shape[0] == 1
        else:
            assert torch.equal(v, src_sd[k]), k
    trainer.fit()
    assert segdino.load_model(tmp_path / "run" / "last.safetensors").num_classes == 1


def test_init_with_the_same_class_count_keeps_the_head(tmp_path, discs):
    from tests.conftest import randomize_

    src = randomize_(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)))
    segdino.save_model(src, tmp_path / "src.safetensors")
    cfg = config(discs, tmp_path / "run", init=str(tmp_path / "src.safetensors"), decoder_dim=None)
    train, val, _ = build_datasets(cfg)
    model = Trainer(cfg, train, val, None, out=tmp_path / "run").model
    assert torch.equal(model.head.conv.weight, src.head.conv.weight)


def test_init_contradicting_backbone_is_refused(discs, tmp_path):
    segdino.save_model(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)), tmp_path / "m.safetensors")
    cfg = config(discs, tmp_path / "run", init=str(tmp_path / "m.safetensors"), backbone="vits16")
    with pytest.raises(ConfigError, match="contradicts --init"):
        run_training(cfg)


# --- configuration ----------------------------------------------------------------------------


def test_config_file_keys_are_flag_names_and_flags_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("recipe: paper\nimage-size: 64\nbatch_size: 2\nlr: 3.0e-4\n")
    cfg = resolve_config({"batch_size": 6}, str(f))
    assert cfg.recipe == "paper" and cfg.image_size == (64, 64)
    assert cfg.batch_size == 6  # flag beats file
    assert cfg.lr == 3e-4  # file beats recipe
    assert cfg.loss == "bce" and cfg.schedule == "constant" and cfg.precision == "fp32"  # recipe defaults
    segdino_cfg = resolve_config({})
    assert segdino_cfg.loss == "bce_dice" and segdino_cfg.schedule == "cosine"
    assert resolve_config({"num_classes": 3}).loss == "ce_dice"


@pytest.mark.parametrize("text, match", [
    ("epochs: ten\n", "epochs expects int"),
    ("learning_rate: 1\n", "unknown option"),
    ("- a\n- b\n", "mapping"),
    ("image-size: [1, 2, x]\n", "image-size"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_config_files_are_refused(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config({}, str(f))


def test_resolved_config_written_and_usable_as_config_file(discs, tmp_path):
    run_training(config(discs, tmp_path / "run", epochs=1, steps_per_epoch=1))
    again = resolve_config({"resume": False}, str(tmp_path / "run" / "config.yaml"))
    assert again.decoder_dim == 16 and again.image_size == (32, 32) and again.backbone == "vitt16"


@pytest.mark.parametrize("opts, match", [
    ({"resume": True, "overwrite": True}, "contradict"),
    ({"init": "a.safetensors", "backbone_weights": "b.pth"}, "contradict"),
    ({"freeze_backbone": True, "backbone_lr_scale": 0.5}, "contradict"),
    ({"image_size": 40}, "multiple of 16"),
    ({"foreground_ratio": 1.5}, "between 0 and 1"),
    ({"epochs": 0}, "--epochs must be >= 1"),
])
def test_contradicting_or_invalid_options_are_refused(opts, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(opts)


# --- bad input at the command line ------------------------------------------------------------


def test_cli_refuses_a_folder_holding_another_run(discs, tmp_path, capsys):
    args = ["train", "--data", str(discs), "--out", str(tmp_path / "run"), "--backbone", "vitt16",
            "--decoder-dim", "16", "--image-size", "32", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--quiet"]
    assert cli_main(args) == 0
    assert "best validation Dice" in capsys.readouterr().out
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--resume" in err[0]
    assert cli_main(args + ["--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert cli_main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "other")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_nan_loss_stops_naming_step_and_cases_and_keeps_the_last_good_checkpoint(discs, tmp_path, monkeypatch):
    cfg = config(discs, tmp_path / "run", epochs=3, steps_per_epoch=2)
    train, val, _ = build_datasets(cfg)
    from segdino.training import prepare_run_folder

    prepare_run_folder(cfg)
    trainer = Trainer(cfg, train, val, None, out=tmp_path / "run")
    calls = {"n": 0}

    def poison(loss, batch):
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 else loss

    trainer.loss_hook = poison
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    msg = str(e.value)
    assert "step 3" in msg and "epoch 2" in msg
    assert all(c in msg for c in ("c0",))  # case ids of the batch
    last = weights(tmp_path / "run" / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in last.values())
    assert len(log_rows(tmp_path / "run")) == 1


def test_nan_loss_can_be_skipped(discs, tmp_path):
    cfg = config(discs, tmp_path / "run", epochs=1, steps_per_epoch=3, on_nan="skip")
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, None, out=tmp_path / "run")
    (tmp_path / "run").mkdir()
    trainer.loss_hook = lambda loss, batch: loss * float("nan") if trainer.step == 1 else loss
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.step == 3
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


# --- order and sampling -----------------------------------------------------------------------


def test_epoch_order_depends_on_seed_and_epoch_only():
    data = list(range(23))
    a = EpochSampler(data, 4, seed=1)
    b = EpochSampler(data, 4, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and len(list(a)) == 20
    b.set_epoch(4)
    assert list(a) != list(b)
    # Two ranks of a 2-process run share out the one-process order of the same global batch.
    one = [i for _, i in EpochSampler(data, 8, seed=1)]
    r0 = [i for _, i in EpochSampler(data, 4, seed=1, rank=0, world=2)]
    r1 = [i for _, i in EpochSampler(data, 4, seed=1, rank=1, world=2)]
    assert sorted(r0 + r1) == sorted(one) and not set(r0) & set(r1)


def test_foreground_ratio_is_met_in_every_batch():
    data = list(range(100))
    fg = np.arange(90, 100)
    s = EpochSampler(data, 6, seed=0, foreground=fg, foreground_ratio=1 / 3)
    order = [i for _, i in s]
    for b in range(0, len(order), 6):
        assert sum(i in set(fg.tolist()) for i in order[b : b + 6]) >= 2
    overall = np.isin(order, fg).mean()
    assert overall >= 1 / 3 - 1e-9 and overall < 0.5
