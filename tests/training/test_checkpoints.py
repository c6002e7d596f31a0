"""The resume state: a forged or truncated one is one line naming the file and the field; --resume
removes and lists the temporaries of killed writes."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from segdino.cli import main as cli_main
from segdino.fileio import stale_temporaries
from tests.test_run_folder import TRAIN, _one_error_line, trained  # noqa: F401 (trained: a fixture)


def _forge_state(path: Path, change) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    state = json.loads(meta["segdino_resume"])
    change(state)
    meta["segdino_resume"] = json.dumps(state)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("forgery, field", [
    (lambda s: s.update(epoch="one"), "epoch"),
    (lambda s: s.update(param_groups=[{"params": "all"}]), "param_groups"),
    (lambda s: s["param_groups"][0].update(lr="fast"), "lr"),
    (lambda s: s.update(rng_cpu=[999]), "rng_cpu"),
    (None, "cannot read"),
])
def test_forged_or_truncated_resume_state_is_one_line(trained, tmp_path, capsys, forgery, field):
    data, run = trained[0], tmp_path / "run"
    shutil.copytree(trained[1], run)
    args = ["train", "--data", str(data), "--out", str(run), *TRAIN, "--epochs", "1"]
    state = run / "resume" / "state.safetensors"
    if forgery is None:
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    else:
        _forge_state(state, forgery)
    capsys.readouterr()
    assert cli_main(args[:-2] + ["--epochs", "2", "--resume"]) == 2
    line = _one_error_line(capsys)
    assert str(state) in line and field in line, line


def test_resume_removes_and_lists_every_temporary_left_by_a_kill(trained, tmp_path, caplog):
    data, run = trained[0], tmp_path / "run"
    shutil.copytree(trained[1], run)
    args = ["train", "--data", str(data), "--out", str(run), *TRAIN, "--epochs", "1"]
    left = [run / ".last.safetensors.k2j4x9_a.tmp", run / ".tmpAb12Cd", run / "resume" / ".state.safetensors.x1.tmp"]
    for p in left:
        p.write_bytes(b"half written")
    with caplog.at_level("INFO", logger="segdino"):
        assert cli_main(args[:-2] + ["--epochs", "2", "--resume"]) == 0
    err = caplog.text
    for p in left:
        assert not p.exists()
        assert f"removed {p}" in err, err
    assert stale_temporaries(run, recursive=True) == []


def test_resumed_optimiser_moments_keep_their_parameters_channels_last_strides(tmp_path):
    """On CUDA the model trains channels-last and AdamW is fused, which refuses moments whose
    strides differ from their parameter's; the state file stores them contiguous."""
    import torch

    from segdino.training.checkpoints import load_resume_state, save_resume_state

    def model_and_optimiser():
        torch.manual_seed(0)
        m = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    m, opt = model_and_optimiser()
    m(torch.randn(2, 3, 8, 8)).square().sum().backward()
    opt.step()
    path = tmp_path / "state.safetensors"
    save_resume_state(path, m, opt, {"epoch": 1, "step": 1, "best": 0.0, "best_epoch": 1})
    m2, opt2 = model_and_optimiser()
    load_resume_state(path, m2, opt2)
    w, w2 = m.weight, m2.weight
    for name in ("exp_avg", "exp_avg_sq"):
        restored = opt2.state[w2][name]
        assert restored.stride() == w2.stride() != w2.contiguous().stride()
        assert torch.equal(restored, opt.state[w][name])
