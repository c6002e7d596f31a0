"""The training loop: learning, best checkpoint, resume to the bit, frozen backbone, NaN policy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import segdino
from segdino.errors import ConfigError
from segdino.training import Trainer, TrainingError, build_datasets, make_transform, run_training
from tests.training.conftest import config, log_rows, weights


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


# --- resume ---------------------------------------------------------------------------------------


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


# --- freezing and NaN ---------------------------------------------------------------------------


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


def _fixed_batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, size, size, generator=g), "mask": (torch.rand(n, size, size, generator=g) > 0.6).long(),
            "case_id": [f"r{i}" for i in range(n)], "skipped": []}


def test_fused_decoder_trains_the_plain_models_parameters_with_the_same_losses_and_gradients(discs, tmp_path):
    batch = _fixed_batch()
    trainers = {}
    for fused in (False, True):
        cfg = config(discs, tmp_path / f"run{int(fused)}", batch_size=4, fused_decoder=fused, loss="bce_dice")
        trainers[fused] = Trainer(cfg, list(range(8)), None, None, out=tmp_path / f"run{int(fused)}")
    plain, fused = trainers[False], trainers[True]
    assert plain.train_module is plain.model and fused.train_module is not fused.model
    assert type(fused.train_module.tpa).__name__ != type(fused.model.tpa).__name__  # the folded TPA runs
    shared = dict(fused.train_module.named_parameters())
    assert all(shared[k] is p for k, p in fused.model.named_parameters())
    for _ in range(3):
        la, lb = plain.train_step(batch, 0), fused.train_step(batch, 0)
        assert torch.allclose(la, lb, rtol=1e-4, atol=1e-6), (la, lb)
        for (name, pa), pb in zip(plain.model.named_parameters(), fused.model.parameters()):
            if pa.grad is None:
                assert pb.grad is None, name
                continue
            err = (pa.grad - pb.grad).norm() / pa.grad.norm().clamp_min(1e-12)
            assert err < 1e-3, (name, float(err))
    # The checkpoint is the plain model's: it loads as any model file and predicts what the run's model does.
    (tmp_path / "run1").mkdir(exist_ok=True)
    fused.checkpoints.save_weights(fused.model, {"epoch": "1", "val_dice": "", "pretrained": "false"}, last=True,
                                   best=False)
    loaded = segdino.load_model(tmp_path / "run1" / "last.safetensors").eval()
    assert set(loaded.state_dict()) == set(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)).state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = fused.model.eval()(x)
        assert torch.equal(loaded(x), want)
        assert torch.allclose(fused.train_module.eval()(x), want, rtol=1e-4, atol=1e-5)


def test_losses_are_read_every_n_steps_and_a_nan_stops_at_the_read(discs, tmp_path):
    cfg = config(discs, tmp_path / "run", epochs=1, batch_size=4)  # 24 training images: 6 steps
    train, _, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, None, None, out=tmp_path / "run")
    trainer.loss_every = 4
    reads = []
    real = trainer._host
    trainer._host = lambda t: reads.append(trainer.step) or real(t)
    loader = trainer.train_loader()
    from segdino.progress import Progress

    mean, seen = trainer.run_epoch(0, loader, Progress(6, "e", "step", quiet=True, enabled=False))
    assert reads == [4, 6, 6] and seen == 24 and np.isfinite(mean)  # two reads of losses, one of the epoch's sums
    reads.clear()
    trainer.loss_hook = lambda loss, batch: loss * float("nan") if trainer.step == 7 else loss  # the 8th step
    with pytest.raises(TrainingError, match=r"step 8 \(epoch 2\) on cases"):
        trainer.run_epoch(1, loader, Progress(6, "e", "step", quiet=True, enabled=False))
    assert reads == [10]  # noticed at the first read after it, not by waiting at every step


def test_a_skipped_step_leaves_weights_and_optimiser_unchanged_on_the_device(discs, tmp_path):
    cfg = config(discs, tmp_path / "run", batch_size=4, on_nan="skip")
    trainer = Trainer(cfg, list(range(8)), None, None, out=tmp_path / "run")
    trainer.opt = torch.optim.AdamW(trainer.model.parameters(), lr=1e-3, fused=True)  # as on CUDA
    trainer.base_lrs = [g["lr"] for g in trainer.opt.param_groups]
    batch = _fixed_batch()
    trainer.train_step(batch, 0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = [s["step"].clone() for s in trainer.opt.state.values()]
    trainer.loss_hook = lambda loss, b: loss * float("nan")
    loss = trainer.train_step(batch, 0)
    assert not torch.isfinite(loss) and not hasattr(trainer.opt, "found_inf")
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(a, s["step"]) for a, s in zip(steps, trainer.opt.state.values()))
    trainer.loss_hook = None
    trainer.train_step(batch, 0)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
