"""Logging of a run: one ``log.csv`` row per epoch, TensorBoard scalars (when installed), the
lines of ``train.log`` and the list of skipped samples. Only rank 0 writes.

``log.csv`` is kept as text in memory and saved with the resume state, so a resumed run rewrites
the log as it stood at that state: rows of epochs no state records are dropped, none repeated.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import run_files
from ..fileio import atomic_write_text
from ..outputs import record_folder
from ..progress import Progress
from ..progress import write as progress_write

log = logging.getLogger("segdino.train")

SKIPPED = "skipped.txt"


@dataclass
class EpochResult:
    """What one epoch did: its mean training loss, validation Dice (None when not validated), the
    learning rate it ended at, and its speed."""
    epoch: int
    train_loss: float
    val_dice: float | None
    val_dice_per_class: list[float] | None
    lr: float
    seconds: float
    images_per_s: float


def epoch_progress(total: int, desc: str, quiet: bool, enabled: bool) -> Progress:
    """The progress bar of one epoch's steps."""
    # The epoch's own line (Trainer.end_epoch) closes each epoch, so a plain-text bar writes no last line.
    return Progress(total, desc, "step", quiet=quiet, enabled=enabled, final_line=False, tenths=False)


class RunLog:
    """The run folder's log files, written on the main rank only (``enabled``)."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = Path(out), enabled
        self.text = ""  # log.csv as written so far; saved with the resume state
        self.skipped: list[str] = []
        self._tb: Any = None

    @property
    def csv_path(self) -> Path:
        return self.out / run_files.LOG_CSV

    def say(self, line: str) -> None:
        """Print a line of the run's story and append it to the run folder's train.log."""
        if not self.enabled:
            return
        progress_write(line)
        path = self.out / run_files.TRAIN_LOG
        old = path.read_text() if path.exists() else ""
        atomic_write_text(path, old + line + "\n")

    def append(self, res: EpochResult, step: int) -> None:
        """The epoch's row of log.csv (and its TensorBoard scalars)."""
        if not self.enabled:
            return
        row = {
            "epoch": res.epoch, "step": step, "train_loss": f"{res.train_loss:.6f}",
            "val_dice": "" if res.val_dice is None else f"{res.val_dice:.6f}",
            "lr": f"{res.lr:.4e}", "seconds": f"{res.seconds:.2f}", "images_per_s": f"{res.images_per_s:.1f}",
        }
        if res.val_dice_per_class and len(res.val_dice_per_class) > 1:
            for c, d in enumerate(res.val_dice_per_class, start=1):
                row[f"val_dice_class{c}"] = f"{d:.6f}"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
        if not self.text:
            writer.writeheader()
        writer.writerow(row)
        self.text += buf.getvalue()
        atomic_write_text(self.csv_path, self.text)
        self.tensorboard(res)

    def tensorboard(self, res: EpochResult) -> None:
        """The epoch's scalars in ``tensorboard/``; nothing when TensorBoard is not installed."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # TensorBoard is optional
                self._tb = False
                return
            record_folder(self.out / run_files.TENSORBOARD)  # TensorBoard writes its own files there
            self._tb = SummaryWriter(str(self.out / run_files.TENSORBOARD), purge_step=res.epoch)
        if self._tb:
            self._tb.add_scalar("train/loss", res.train_loss, res.epoch)
            self._tb.add_scalar("train/lr", res.lr, res.epoch)
            self._tb.add_scalar("train/images_per_s", res.images_per_s, res.epoch)
            if res.val_dice is not None:
                self._tb.add_scalar("val/dice", res.val_dice, res.epoch)
            self._tb.flush()

    def close(self) -> None:
        if self._tb:
            self._tb.close()

    def record_skipped(self, messages: list[str]) -> None:
        """Warn about each newly skipped sample once and list them all in skipped.txt."""
        for m in messages:
            if m not in self.skipped:
                self.skipped.append(m)
                log.warning("skipped: %s", m)
        if self.enabled:
            atomic_write_text(self.out / SKIPPED, "".join(f"{m}\n" for m in self.skipped))

    def restart(self) -> None:
        """A run started again from its beginning: rows of epochs that no state records go."""
        if self.enabled and self.csv_path.exists():
            self.csv_path.unlink()

    def restore(self, meta: dict[str, Any], last_epoch: int) -> None:
        """Continue the log of a resumed run from the resume state's metadata ``meta``."""
        if self.enabled:
            if "log" in meta:
                # The log as it stood when this state was saved: rows written after it (by a run
                # killed before its next state) are dropped, and none is ever repeated.
                self.text = meta["log"]
                atomic_write_text(self.csv_path, self.text)
            else:  # a state written before the log travelled with it
                trim_log(self.csv_path, last_epoch)
                self.text = self.csv_path.read_text() if self.csv_path.is_file() else ""
        skipped = self.out / SKIPPED
        if skipped.is_file():
            self.skipped = [line for line in skipped.read_text().splitlines() if line]


def trim_log(path: Path, last_epoch: int) -> None:
    """Drop log rows after ``last_epoch`` (written by a run killed before its resume state)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= last_epoch]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


__all__ = ["EpochResult", "RunLog", "SKIPPED", "epoch_progress", "trim_log"]
