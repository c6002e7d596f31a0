"""Checkpointing: the weights of a run (``best``, ``last``) and the state it resumes from.

The state (model, optimiser, loop counters, the CPU random state and the log as it stood) is one
safetensors file with JSON metadata, checked field by field when read back, so that a damaged or
forged file is one :class:`~segdino.errors.CheckpointError` naming it. docs/FORMATS.md describes
the files of a run folder.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .. import run_files
from ..checkpoint import save_model, save_tensors
from ..errors import CheckpointError

RESUME_FILE = run_files.RESUME_STATE


def save_resume_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Model, optimiser and loop state in one safetensors file (tensors) with JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    osd = opt.state_dict()
    for pid, state in osd["state"].items():
        for k, v in state.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = t.detach().cpu().contiguous().clone()
    meta = dict(meta)
    meta["param_groups"] = osd["param_groups"]
    meta["rng_cpu"] = torch.get_rng_state().tolist()
    save_tensors(path, tensors, {"segdino_resume": json.dumps(meta)})


def _check_resume_meta(path: Path, meta: Any, n_groups: int) -> dict[str, Any]:
    """The loop metadata of a training state, checked field by field (a forged or damaged file is one
    :class:`CheckpointError` naming the field, never a traceback later)."""
    def bad(field: str, expected: str) -> CheckpointError:
        shown = json.dumps(meta.get(field)) if isinstance(meta, dict) else ""
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return CheckpointError(f"{path}: the training state's field {field!r} must be {expected}, found {shown}")

    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the training state's metadata must be a JSON object")
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for field in ("epoch", "step", "best_epoch"):
        if not is_int(meta.get(field)) or meta[field] < 0:
            raise bad(field, "an integer >= 0")
    if not (is_int(meta.get("best")) or isinstance(meta.get("best"), float)) or math.isnan(meta["best"]):
        raise bad("best", "a number")
    if not is_int(meta.get("world", 1)) or meta.get("world", 1) < 1:
        raise bad("world", "an integer >= 1")
    if "log" in meta and not isinstance(meta["log"], str):
        raise bad("log", "the text of log.csv")
    rng = meta.get("rng_cpu")
    if not isinstance(rng, list) or not rng or not all(is_int(v) and 0 <= v <= 255 for v in rng):
        raise bad("rng_cpu", "a list of byte values")
    groups = meta.get("param_groups")
    if (not isinstance(groups, list) or len(groups) != n_groups
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                       and all(is_int(i) for i in g["params"]) for g in groups)):
        raise bad("param_groups", f"a list of {n_groups} parameter group(s) of this model")
    for g in groups:
        for k, v in g.items():
            if k in ("lr", "weight_decay", "eps") and not (is_int(v) or isinstance(v, float)):
                raise CheckpointError(f"{path}: the training state's parameter group field {k!r} must be a number")
    return meta


def _match_parameter_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each restored per-parameter state tensor its parameter's strides. The file stores them
    contiguous, so a channels-last convolution weight would get moments of another layout, which
    the fused CUDA AdamW refuses at the first step after a resume."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][name] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def load_resume_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_resume_state` wrote; returns its loop metadata.

    Raises:
        CheckpointError: the file is unreadable, truncated or forged (a field of the wrong type or
            range, tensors or parameter groups that do not fit this run), naming the file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["segdino_resume"])
        tensors = load_file(str(path))
    except Exception as e:  # any unreadable state is reported as such
        raise CheckpointError(f"{path}: cannot read the training state to resume ({e})") from None
    meta = _check_resume_meta(path, meta, len(opt.param_groups))
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the saved model does not fit this run's configuration ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        _match_parameter_layouts(opt)
        torch.set_rng_state(torch.tensor(meta["rng_cpu"], dtype=torch.uint8))
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the saved optimiser does not fit this run ({e})") from None
    return meta


class Checkpoints:
    """Writes a run's ``last`` and ``best`` weights and its resume state, and reads the state back.

    ``last`` and the state (model and optimiser: the larger writes) are written when ``save_every``
    seconds have passed since the previous write, always after the first epoch a process runs and
    after the final one; ``best`` whenever the score improved.
    """

    def __init__(self, out: Path, save_every: float):
        self.out, self.save_every = Path(out), float(save_every)
        self._last_save = -math.inf  # the first epoch is always saved

    @property
    def state_path(self) -> Path:
        return self.out / RESUME_FILE

    def due(self, final: bool) -> bool:
        """Whether this epoch writes ``last`` and the state."""
        return final or time.monotonic() - self._last_save >= self.save_every

    def save_weights(self, model: torch.nn.Module, meta: dict[str, str], last: bool, best: bool) -> None:
        """``last`` and/or ``best`` weights with ``meta`` (epoch, val_dice, pretrained) in their header."""
        if last:
            save_model(model, self.out / run_files.LAST, extra_metadata=meta)
        if best:
            save_model(model, self.out / run_files.BEST, extra_metadata=meta)

    def save_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
        """The resume state; ``meta`` holds the loop counters and the log text."""
        save_resume_state(self.state_path, model, opt, meta)
        self._last_save = time.monotonic()

    def load_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Restore the resume state into ``model`` and ``opt``; its loop metadata, or None when the
        run folder holds no finished epoch."""
        if not self.state_path.is_file():
            return None
        return load_resume_state(self.state_path, model, opt)

    def kept(self) -> str:
        """What a stopped run leaves to use: its last good checkpoint, or nothing yet."""
        if (self.out / run_files.LAST).is_file() or (self.out / run_files.BEST).is_file():
            return f"the last good checkpoint in {self.out} is kept"
        return f"no checkpoint was written yet (none in {self.out})"


__all__ = ["Checkpoints", "RESUME_FILE", "load_resume_state", "save_resume_state"]
