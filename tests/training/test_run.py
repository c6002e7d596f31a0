"""A run from start to end: its config.yaml serves as --config; --resume trains on the run's recorded
split, rewrites its log from the resume state, and accepts the data folder spelled otherwise; a NaN at the
first step claims no checkpoint."""

import csv
import json
import shutil
from pathlib import Path

import pytest

import segdino
from segdino import training
from segdino.errors import ConfigError
from segdino.train_config import resolve_config
from segdino.training import run_training
from tests.test_run_folder import data  # noqa: F401 (a fixture)
from tests.training.conftest import config


def _config(data: Path, out: Path, **kw):
    opts = dict(data=str(data), out=str(out), backbone="vitt16", decoder_dim=16, image_size=32, epochs=2,
                batch_size=4, num_workers=0, device="cpu", quiet=True, save_every=0.0, steps_per_epoch=2,
                warmup_epochs=0.0)
    opts.update(kw)
    return resolve_config(opts)


def _log_epochs(run: Path) -> list[str]:
    with open(run / "log.csv") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def test_resolved_config_written_and_usable_as_config_file(discs, tmp_path):
    run_training(config(discs, tmp_path / "run", epochs=1, steps_per_epoch=1))
    again = resolve_config({"resume": False}, str(tmp_path / "run" / "config.yaml"))
    assert again.decoder_dim == 16 and again.image_size == (32, 32) and again.backbone == "vitt16"


def _add_images(data: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        stem = f"added_{i:02d}"
        shutil.copy(data / "images" / "synth_0000.png", data / "images" / f"{stem}.png")
        shutil.copy(data / "masks" / "synth_0000.png", data / "masks" / f"{stem}.png")
        names.append(stem)
    return names


def test_resume_keeps_the_recorded_split_after_images_are_added(data, tmp_path, monkeypatch):
    (data / "splits.json").unlink()  # the seeded 80/10/10 rule: adding cases would re-split
    run = tmp_path / "run"
    training.run_training(_config(data, run, epochs=1))
    recorded = json.loads((run / "splits.json").read_text())
    _add_images(data, 15)
    seen: list[str] = []
    real = training.Trainer.loss_of

    def loss_of(self, batch):
        seen.extend(batch["case_id"])
        return real(self, batch)

    monkeypatch.setattr(training.Trainer, "loss_of", loss_of)
    training.run_training(_config(data, run, epochs=3, resume=True))
    assert seen and set(seen) <= set(recorded["train"]), sorted(set(seen) - set(recorded["train"]))
    assert json.loads((run / "splits.json").read_text()) == recorded


def test_resume_refuses_a_recorded_case_that_is_gone(data, tmp_path):
    run = tmp_path / "run"
    training.run_training(_config(data, run, epochs=1))
    train_case = json.loads((run / "splits.json").read_text())["train"][0]
    (data / "images" / f"{train_case}.png").unlink()
    (data / "masks" / f"{train_case}.png").unlink()
    with pytest.raises(segdino.DataError, match=rf"splits.json.*{train_case}"):
        training.run_training(_config(data, run, epochs=2, resume=True))


def test_kill_between_log_row_and_state_leaves_no_repeated_row(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = training.checkpoints.save_resume_state
    calls = {"n": 0}

    def killed_at_second_state(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a kill: the epoch-2 row is in log.csv, its state is not
        return real(*a, **k)

    monkeypatch.setattr(training.checkpoints, "save_resume_state", killed_at_second_state)
    with pytest.raises(KeyboardInterrupt):
        training.run_training(_config(data, run, epochs=3))
    assert _log_epochs(run) == ["1", "2"]
    monkeypatch.setattr(training.checkpoints, "save_resume_state", real)
    with open(run / "log.csv", "a") as f:  # and a row no state knows of, duplicated
        f.write("1,2,0.5,0.5,1e-3,1.0,1.0\n")
    training.run_training(_config(data, run, epochs=3, resume=True))
    assert _log_epochs(run) == ["1", "2", "3"]


def test_kill_in_the_first_epoch_restarts_the_log(data, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.checkpoints, "save_resume_state", killed)
    with pytest.raises(KeyboardInterrupt):
        training.run_training(_config(data, run, epochs=2))
    assert _log_epochs(run) == ["1"]
    monkeypatch.undo()
    training.run_training(_config(data, run, epochs=2, resume=True))
    assert _log_epochs(run) == ["1", "2"]


def test_nan_at_the_first_step_says_no_checkpoint_was_written(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = training.Trainer.loss_of
    monkeypatch.setattr(training.Trainer, "loss_of", lambda self, batch: real(self, batch) * float("nan"))
    with pytest.raises(training.TrainingError) as e:
        training.run_training(_config(data, run))
    assert "no checkpoint was written yet" in str(e.value) and "is kept" not in str(e.value)
    assert not (run / "last.safetensors").exists()


def test_resume_accepts_the_data_folder_spelled_otherwise(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data.parent)
    run = tmp_path / "run"
    training.run_training(_config(Path(data.name), run, epochs=1))
    for spelling in (data.name + "/", str(data.resolve()), f"./{data.name}//"):
        training.run_training(_config(spelling, run, epochs=1, resume=True))
    other = tmp_path / "other"
    shutil.copytree(data, other)
    with pytest.raises(ConfigError, match="data is"):
        training.run_training(_config(other, run, epochs=1, resume=True))


def test_a_volume_run_resumes_with_the_class_count_its_data_decided(tiny_volumes, tmp_path):
    """The resume check compares the configuration the data completed (3 classes from dataset.json),
    not the options as given (1 class by default)."""
    opts = dict(intensity="abdomen", foreground_ratio=0.0, augment="none")
    first = run_training(_config(tiny_volumes, tmp_path / "run", epochs=1, steps_per_epoch=1, **opts))
    assert segdino.load_model(first["best"]).num_classes == 3
    run_training(_config(tiny_volumes, tmp_path / "run", epochs=2, steps_per_epoch=1, resume=True, **opts))
    assert _log_epochs(tmp_path / "run") == ["1", "2"]


def test_resume_refuses_another_decoder_switch(data, tmp_path):
    """--no-tpa keeps every weight's name and shape, so only the check can tell the runs apart."""
    run = tmp_path / "run"
    training.run_training(_config(data, run, epochs=1, no_tpa=True))
    with pytest.raises(ConfigError, match="no_tpa is False but the run .* used True"):
        training.run_training(_config(data, run, epochs=2, resume=True))
    training.run_training(_config(data, run, epochs=2, resume=True, no_tpa=True))
