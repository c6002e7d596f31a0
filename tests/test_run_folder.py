"""Output folders and run folders: ground truth is never overwritten, two processes never share a
folder, a run deletes only what it wrote, resumes with its own split and log, and every option out of
range or output that cannot be written is one line before any work.

Each test reproduces a way these went wrong (a new user's commands: vitt16, small images, CPU) and
asserts the guarded behaviour; kills and locks use real processes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segdino
from segdino.cli import main as cli_main
from segdino.fileio import MANIFEST_NAME, is_temporary_name
from segdino.outputs import LOCK_NAME, OutputError, foreign_files, open_output

from tests.conftest import tiny

TRAIN = ["--backbone", "vitt16", "--decoder-dim", "16", "--image-size", "32", "--batch-size", "4",
         "--num-workers", "0", "--device", "cpu", "--quiet", "--save-every", "0", "--steps-per-epoch", "2"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def data(tmp_path):
    from segdino.data.synthetic import write_dataset

    return write_dataset(tmp_path / "D", 8, 2, 2, size=(32, 32), seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data, run folder) of one finished 1-epoch run, to be copied, not changed."""
    from segdino.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("trained")
    data = write_dataset(root / "D", 8, 2, 2, size=(32, 32), seed=0)
    assert cli_main(["train", "--data", str(data), "--out", str(root / "run"), *TRAIN, "--epochs", "1"]) == 0
    return data, root / "run"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return segdino.save_model(tiny(), tmp_path_factory.mktemp("model") / "m.safetensors")


# --- 1. ground truth is never overwritten ----------------------------------------------------------


@pytest.mark.parametrize("where", ["", "masks", "images", "images/predicted"])
def test_predict_never_writes_into_the_dataset(data, model_file, capsys, where):
    before = _snapshot(data)
    out = data / where if where else data
    code = cli_main(["predict", "--model", str(model_file), str(data / "images"), "--out", str(out),
                     "--device", "cpu"])
    line = _one_error_line(capsys)
    assert code == 2 and f"--out {out}" in line, line
    assert str(data / "images") in line or "holds files SegDINO did not write (synth_0000.png" in line, line
    assert _snapshot(data) == before  # the dataset's masks are its own


def test_predict_refuses_a_folder_of_foreign_files_and_reuses_its_own(data, model_file, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["predict", "--model", str(model_file), str(data / "images"), "--out", str(out), "--device", "cpu"]
    assert cli_main(args) == 0
    assert cli_main(args) == 0  # a folder we wrote earlier is recognised by its manifest
    capsys.readouterr()
    (out / "masks" / "notes.txt").write_text("mine")
    assert cli_main(args) == 2
    line = _one_error_line(capsys)
    assert "holds files SegDINO did not write (masks/notes.txt)" in line, line
    other = tmp_path / "user"
    other.mkdir()
    (other / "x.png").write_bytes(b"user's")
    assert cli_main(args[:-4] + ["--out", str(other), "--device", "cpu"]) == 2
    assert "x.png" in _one_error_line(capsys)
    assert (other / "x.png").read_bytes() == b"user's"


def test_evaluate_export_and_demo_use_the_same_guard(data, model_file, tmp_path, capsys):
    before = _snapshot(data)
    assert cli_main(["evaluate", "--model", str(model_file), "--data", str(data), "--out", str(data / "masks"),
                     "--device", "cpu"]) == 2
    assert "lies inside the input" in _one_error_line(capsys)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"somebody else's file")
    assert cli_main(["export", "--model", str(model_file), "--out", str(foreign)]) == 2
    assert "was not written by SegDINO" in _one_error_line(capsys)
    assert foreign.read_bytes() == b"somebody else's file"
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "notes.txt").write_text("mine")
    assert cli_main(["demo", "--out", str(demo), "--overwrite"]) == 2
    assert "notes.txt" in _one_error_line(capsys)
    assert (demo / "notes.txt").read_text() == "mine"
    assert _snapshot(data) == before


# --- 2. one process per folder ---------------------------------------------------------------------

_HOLD = "import sys, time; from segdino.outputs import open_output; h = open_output(sys.argv[1]); " \
        "print('held', flush=True); time.sleep(60)"


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_the_holder_then_taken_over_after_kill_9(data, tmp_path, caplog):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(OutputError, match=rf"--out {run} is in use by another SegDINO process \(PID {proc.pid}\)"):
            open_output(run)
        # A real second training run into the same folder: one line, exit 2, nothing written.
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run([sys.executable, "-m", "segdino", "train", "--data", str(data), "--out", str(run),
                              *TRAIN, "--epochs", "1"], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and f"PID {proc.pid}" in err[0] and str(run) in err[0], err
        assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_NAME, MANIFEST_NAME])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The holder died without cleaning up: its PID is still in the lock file, the lock is free.
    assert (run / LOCK_NAME).read_text().strip() == str(proc.pid)
    with caplog.at_level("INFO", logger="segdino"):
        with open_output(run):
            pass
    assert f"taking over the lock of PID {proc.pid} (no longer running)" in caplog.text
    with open_output(run):  # released on exit: taken again at once
        pass


# --- 8. --overwrite deletes only what the run wrote ------------------------------------------------


def test_train_into_its_own_dataset_is_refused_and_changes_nothing(data, capsys):
    (data / "report").mkdir()
    (data / "report" / "notes.txt").write_text("mine")
    before = _snapshot(data)
    for extra in ([], ["--overwrite"]):
        assert cli_main(["train", "--data", str(data), "--out", str(data), *TRAIN, "--epochs", "1", *extra]) == 2
        line = _one_error_line(capsys)
        assert f"--out {data} is the input {data}" in line, line
    assert _snapshot(data) == before


def test_overwrite_deletes_only_what_the_run_wrote(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), *TRAIN, "--epochs", "1"]
    assert cli_main(args) == 0
    assert cli_main(["evaluate", "--model", str(run), "--data", str(data), "--device", "cpu"]) == 0
    assert (run / "report" / "summary.json").is_file()
    (run / "report" / "notes.txt").write_text("mine")
    capsys.readouterr()
    before = _snapshot(run)
    assert cli_main(args + ["--overwrite"]) == 2
    assert "report/notes.txt" in _one_error_line(capsys)
    assert _snapshot(run) == before  # refused before anything was deleted
    (run / "report" / "notes.txt").unlink()
    assert cli_main(args + ["--overwrite"]) == 0
    assert not (run / "report").exists()  # the report of the replaced run went with it
    assert foreign_files(run) == []


# --- 9. outputs that cannot be written, forged state, bad numbers: one line, before the work --------


def _read_only(monkeypatch, folder: Path) -> None:
    """Every file creation below ``folder`` fails as on a read-only file system (we may run as root)."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if str(os.path.abspath(path)).startswith(str(folder)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_read_only_out_is_one_line_for_train_evaluate_and_export(data, model_file, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    commands = [
        ["train", "--data", str(data), "--out", str(ro / "run"), *TRAIN, "--epochs", "1"],
        ["evaluate", "--model", str(model_file), "--data", str(data), "--out", str(ro / "report"), "--device", "cpu"],
        ["export", "--model", str(model_file), "--out", str(ro / "m.onnx")],
    ]
    for args in commands:
        assert cli_main(args) == 2, args
        line = _one_error_line(capsys)
        assert "Read-only file system" in line and str(ro) in line, line


def test_evaluate_checks_out_before_its_work(data, model_file, tmp_path, monkeypatch, capsys):
    from segdino import evaluation

    def must_not_run(*a, **k):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(evaluation, "evaluate_model", must_not_run)
    a_file = tmp_path / "report.txt"
    a_file.write_text("x")
    assert cli_main(["evaluate", "--model", str(model_file), "--data", str(data), "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file, not a folder" in _one_error_line(capsys)
    assert cli_main(["export", "--model", str(model_file), "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_error_line(capsys)


# One validator for every command's numeric options.
@pytest.mark.parametrize("argv, flag", [
    (["train", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["train", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "--backbone-lr-scale", "-1"], "--backbone-lr-scale must be >= 0"),
    (["train", "--warmup-epochs", "-5"], "--warmup-epochs must be >= 0"),
    (["train", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "--lr", "0"], "--lr must be > 0"),
    (["train", "--save-every", "-1"], "--save-every must be >= 0"),
    (["train", "--fold", "-2"], "--fold must be >= 0"),
    (["predict", "--workers", "-1"], "--workers must be >= 0"),
    (["predict", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["evaluate", "--seed", "-1"], "--seed must be >= 0"),
    (["evaluate", "--mask-threshold", "300", "--predictions", "P"], "--mask-threshold must be >= 0 and <= 255"),
    (["export", "--tolerance", "nan"], "--tolerance must be a finite number"),
    (["demo", "--epochs", "0"], "--epochs must be >= 1"),
])
def test_numeric_options_out_of_range_are_one_line(data, model_file, tmp_path, capsys, argv, flag):
    command, extra = argv[0], argv[1:]
    base = {
        "train": ["--data", str(data), "--out", str(tmp_path / "run"), *TRAIN],
        "predict": ["--model", str(model_file), str(data / "images"), "--out", str(tmp_path / "p")],
        "evaluate": ["--data", str(data), "--out", str(tmp_path / "e")]
                    + ([] if "--predictions" in extra else ["--model", str(model_file)]),
        "export": ["--model", str(model_file), "--out", str(tmp_path / "m.onnx")],
        "demo": ["--out", str(tmp_path / "demo")],
    }[command]
    assert cli_main([command, *base, *extra]) == 2
    line = _one_error_line(capsys)
    assert flag in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


# --- 12. temporaries: ours only, removed and listed on --resume -------------------------------------


def test_checkpoints_are_staged_only_in_our_temporary(tmp_path, monkeypatch):
    from segdino import checkpoint

    seen = []
    real = checkpoint.write_safetensors

    def spy(path, tensors, metadata=None):
        real(path, tensors, metadata)
        seen.append([is_temporary_name(p.name) and p.name.startswith(".m.safetensors.")
                     for p in Path(path).parent.iterdir()])

    monkeypatch.setattr(checkpoint, "write_safetensors", spy)
    segdino.save_model(tiny(), tmp_path / "m.safetensors")
    assert seen == [[True]]  # mid-write, nothing in the folder but our own temporary
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    m = segdino.load_model(tmp_path / "m.safetensors")
    ref = tiny()
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
