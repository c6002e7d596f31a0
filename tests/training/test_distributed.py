"""Two gloo processes train like one process with the same global batch and augmentation seeds."""

import csv
import json
import os
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file

from segdino.train_config import resolve_config
from segdino.training import run_training
from tests.training.conftest import write_discs


pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(data, out, batch):
    # augmentation on; 13 training images: not a multiple of the 2 processes, nor of the global batch
    return dict(data=str(data), out=str(out), backbone="vitt16", decoder_dim=16, image_size=32, epochs=2,
                batch_size=batch, num_workers=0, device="cpu", quiet=True, lr=2e-3, warmup_epochs=0.5,
                save_every=0.0, seed=3, augment="segdino")


def _record_case_counts(training_module) -> list:
    """Record the pooled (|P∩G|, |P|, |G|) of every validation case that is scored from now on."""
    scored = []
    real = training_module.dice_from_counts

    def dice_from_counts(counts):
        scored.append(counts.tolist())
        return real(counts)

    training_module.dice_from_counts = dice_from_counts
    return scored


def _worker(rank: int, world: int, port: int, data: str, out: str, spy: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    sys.path.insert(0, os.getcwd())
    torch.set_num_threads(1)
    import segdino.training.validation

    scored = _record_case_counts(segdino.training.validation)
    run_training(resolve_config(_options(data, out, batch=2)))
    with open(f"{spy}.{rank}.json", "w") as f:
        json.dump(scored, f)


def _rows(run):
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, monkeypatch):
    import segdino.training.validation as validation

    data = write_discs(tmp_path / "data", n=18, size=32)  # 13 train, 5 val (odd: split 3 + 2 across ranks)
    torch.set_num_threads(1)
    monkeypatch.setattr(validation, "dice_from_counts", validation.dice_from_counts)  # undone after
    scored_one = _record_case_counts(validation)
    run_training(resolve_config(_options(data, tmp_path / "one", batch=4)))
    spy = tmp_path / "scored"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(data), str(tmp_path / "two"), str(spy)),
                                nprocs=2, join=True)
    one, two = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        a, b = one[k].double(), two[k].double()
        assert (a - b).norm() <= 1e-5 * max(a.norm().item(), 1e-12), k
    r1, r2 = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == ["3", "6"]  # 13 // 4 whole global batches
    for a, b in zip(r1, r2):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
        # Every validation case scored once: the same Dice as one process over all 5 cases.
        assert float(a["val_dice"]) == pytest.approx(float(b["val_dice"]), abs=1e-6)
    # Only rank 0 wrote: one log row per epoch, no stray files from rank 1.
    assert len(r2) == 2
    # Counted once: every rank pooled exactly the counts one process found, 5 cases in each of the
    # 2 validations. (Dice is a ratio, so scoring every case on every rank would not change it.)
    assert len(scored_one) == 10
    for rank in (0, 1):
        scored_two = json.loads(spy.with_name(f"scored.{rank}.json").read_text())
        assert sorted(scored_two) == sorted(scored_one), rank
