"""Weights files as they reach us: safetensors files, PyTorch pickles (read safely), folders of
shards, the Hugging Face Hub, and the metadata our own files carry.

Everything here reads or names files and returns plain ``{name: tensor}`` dicts; which layout
those keys are in is :mod:`segdino.conversion`'s business, fitting them to a model is
:mod:`segdino.weights`' and :mod:`segdino.checkpoint`'s.

``.pth`` files are read with ``torch.load(weights_only=True)`` only: a pickle that needs code is
refused, never run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import CheckpointError
from .fileio import read_json

__all__ = [
    "FORMAT_KEY",
    "FORMAT_NAME",
    "CONFIG_KEY",
    "safe_torch_load",
    "read_state_dict",
    "read_shard_index",
    "read_metadata",
    "is_segdino_file",
    "weights_checksum",
    "is_hub_name",
    "download_from_hub",
    "list_keys",
]

# The metadata entries that mark one of our own model files (segdino.checkpoint writes them).
FORMAT_KEY = "format"
FORMAT_NAME = "segdino"
CONFIG_KEY = "segdino_config"

WEIGHTS_DOC = "docs/WEIGHTS.md"
_LOCAL_FILE_HINT = (
    "pass a local file instead: build_model(..., backbone_weights='path/to/file') in Python or "
    f"--backbone-weights path/to/file on the command line (see {WEIGHTS_DOC} for where to get one)"
)

# Containers that training scripts wrap a state dict in, most specific first.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


# --- reading files ----------------------------------------------------------------------


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with user-facing errors.

    A pickle that needs code to be rebuilt (a class, a function) is refused and not executed;
    truncated or unreadable files raise :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    _check_file(path)
    # Memory-map zip-format files so a multi-gigabyte backbone is not held twice while it is copied.
    with open(path, "rb") as f:
        mmap = f.read(4) == b"PK\x03\x04"
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the outcome is reported below.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except pickle.UnpicklingError as e:
        needs = _needed_code(str(e))
        if needs:
            raise CheckpointError(
                f"{path}: refused to load: the pickle needs code ({needs}) to be rebuilt, and "
                "running code from a file can do anything, so it was not executed. If you trust the file, "
                "convert it yourself: in a separate Python session run torch.load(path, weights_only=False), "
                "take its dict of tensors and save it with safetensors.torch.save_file(tensors, "
                "'weights.safetensors'), then pass that file"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (torch's safe loader stopped: {_last_line(e)})"
        ) from None
    except MemoryError:
        raise
    except Exception as e:
        # The restricted unpickler runs no code, so whatever else it raises on a damaged file
        # (struct.error, AssertionError, safetensors' own errors, ...) means the bytes are bad.
        raise CheckpointError(
            f"{path}: cannot read it as a PyTorch checkpoint; the file is truncated or corrupt "
            f"({type(e).__name__}: {_last_line(e)})"
        ) from None


# How torch's restricted unpickler has named a refused class or function: "Unsupported global:
# GLOBAL os.system was not an allowed global" (torch 2.4-2.13), "Trying to load unsupported GLOBAL
# posix.system whose module posix is blocked" (2.14). Matched on the GLOBAL opcode's name, which
# every wording gives, with the words around it left free.
_GLOBAL_NAME = re.compile(r"\bGLOBAL\s+'?([A-Za-z_][\w.]*)")
_NEEDS_CODE_WORDS = ("unsupported global", "allowed global", "safe_globals", "is blocked", "not an allowed")


def _needed_code(message: str) -> str | None:
    """The class or function a refused pickle asks for, from torch's message (any version's wording).

    Returns None when the message is about something else (a damaged file).
    """
    m = _GLOBAL_NAME.search(message)
    if m:
        return m.group(1)
    low = message.lower()
    if any(w in low for w in _NEEDS_CODE_WORDS):
        return "a class or function"
    return None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a weights file or folder, by name, on the CPU.

    Accepts a ``.safetensors`` file, a PyTorch ``.pth``/``.pt``/``.bin`` file (read safely), or a
    folder holding one (``model.safetensors``, a sharded ``model.safetensors.index.json``, ...).
    The format is recognised from the content, not the name. Common wrappers (``state_dict``,
    ``model``, ...) and a ``module.`` prefix (DataParallel) are removed.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    _check_file(path)
    kind = _sniff(path)
    if kind == "safetensors":
        state = _read_safetensors(path)
    elif kind == "torch":
        state = _unwrap(path, safe_torch_load(path))
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint: expected a safetensors file or a PyTorch .pth file, found neither "
            "(check that the download completed and that this is the weights file)"
        )
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return _strip_common_prefix(state, "module.")


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise CheckpointError(f"{path}: no such file")
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file")
        empty = path.stat().st_size == 0
    except OSError as e:  # a name too long for the file system, a folder we may not enter
        raise CheckpointError(f"{str(path)[:300]}: cannot read ({e.strerror or type(e).__name__})") from None
    if empty:
        raise CheckpointError(f"{path}: the file is empty")


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"  # zip archive of torch.save, or a legacy pickle
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100_000_000:
            return "safetensors"
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read this safetensors file; it is truncated or corrupt ({e})") from None


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_shard_index(index)
        shards = sorted(set(weight_map.values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors_checked(folder / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise CheckpointError(f"{index}: its shards lack {list_keys(missing)}")
        return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    candidates = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
    if len(candidates) == 1:
        return read_state_dict(candidates[0])
    found = ", ".join(p.name for p in candidates) or "no weights files"
    raise CheckpointError(
        f"{folder} is a folder; expected model.safetensors, model.safetensors.index.json, pytorch_model.bin "
        f"or exactly one weights file in it, found {found}; pass the file itself"
    )


def read_shard_index(index: str | os.PathLike) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a ``model.safetensors.index.json``.

    Every shard must be a plain file name in the index's own folder: an index names no file
    elsewhere (no absolute path, no ``..``, no subfolder), so a downloaded folder reads only
    itself.

    Raises:
        CheckpointError: unreadable, not UTF-8 JSON, nested too deeply, no ``weight_map`` object
            of strings, or a shard name that leaves the folder; the message names the index.
    """
    index = Path(index)
    data = read_json(index, CheckpointError, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: not a valid shard index; expected an object with a non-empty "
                              '"weight_map": {"tensor name": "shard file name", ...}')
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index}: not a valid shard index; the shard of {str(key)[:80]!r} is "
                                  f"{type(shard).__name__} {str(shard)[:40]}, expected a file name")
        if (not shard or shard in (".", "..") or "/" in shard or "\\" in shard or "\0" in shard
                or Path(shard).is_absolute()):
            raise CheckpointError(f"{index}: shard {shard[:120]!r} is not a file name in the index's folder; "
                                  "an index may name only files beside it")
    return weight_map


def _read_safetensors_checked(path: Path) -> dict[str, torch.Tensor]:
    _check_file(path)
    return _read_safetensors(path)


def _unwrap(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict of tensors (a state dict), found a {type(obj).__name__}"
        )
    if not _all_tensors(obj):
        other = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(
            f"{path}: expected a dict of tensors (a state dict); these entries are not tensors: {list_keys(other)}"
        )
    return {str(k): v for k, v in obj.items()}


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def _strip_common_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _last_line(e: BaseException) -> str:
    """The informative line of a library's (often long) error message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:") or "Unsupported" in ln:
            return ln
    if not lines:
        return type(e).__name__
    first = lines[0]
    return first.split(". ")[0] if len(first) > 160 else first


def list_keys(keys: Iterable[str], limit: int = 12) -> str:
    """The first ``limit`` keys, comma-separated, and how many there are in all, for messages."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The safetensors header metadata, or None when ``path`` is not a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


def is_segdino_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a safetensors file that says it is one of our model files."""
    meta = read_metadata(path)
    return bool(meta) and meta.get(FORMAT_KEY) == FORMAT_NAME


def weights_checksum(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a weights file; of a folder, over its weight files' names and contents.

    Logged and recorded with a run so that two runs can be shown to start from the same weights
    whatever the files were called.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
    else:
        files = [path]
    for f in files:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


# --- the hub ------------------------------------------------------------------------------

_HUB_NAME = re.compile(r"^(?:hf-hub:)?((?:timm|facebook)/[A-Za-z0-9][A-Za-z0-9._-]*)$")


def is_hub_name(name: str) -> bool:
    """True for ``timm/<model>`` and ``facebook/dinov3-...`` names (optionally ``hf-hub:``-prefixed)."""
    return bool(_HUB_NAME.match(name))


def download_from_hub(name: str) -> Path:
    """Download a backbone from the Hugging Face Hub; returns the local folder holding its weights.

    Needs ``huggingface_hub`` and a connection (and, for Meta's gated ``facebook/dinov3-*`` repos,
    an accepted licence and ``hf auth login``). Any failure raises :class:`CheckpointError`
    saying how to pass a local file instead.
    """
    m = _HUB_NAME.match(name)
    if not m:
        raise CheckpointError(f"{name!r}: not a hub name; expected timm/<model> or facebook/dinov3-<model>")
    repo = m.group(1)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{name}: downloading from the Hugging Face Hub needs the huggingface_hub package "
            f"(pip install huggingface_hub); or {_LOCAL_FILE_HINT}"
        ) from None
    try:
        folder = snapshot_download(repo, allow_patterns=["*.safetensors", "*.safetensors.index.json", "config.json"])
    except Exception as e:  # offline, gated, unknown repo, network: all end in the same advice
        reason = _last_line(e)
        gated = " (Meta's repos are gated: accept the licence on the model page, then run `hf auth login`)" \
            if repo.startswith("facebook/") else ""
        raise CheckpointError(
            f"{name}: cannot download it from the Hugging Face Hub ({type(e).__name__}: {reason}){gated}. "
            f"Offline or where the download is blocked, {_LOCAL_FILE_HINT}"
        ) from None
    return Path(folder)
