"""Weights from elsewhere: DINOv3 backbones (Meta, Hugging Face, timm) and the authors' whole model.

Four layouts reach us (SEGDINO.md, "Checkpoint formats"):

1. ``meta``: Meta's DINOv3 ``.pth`` (``storage_tokens``, ``blocks.N.ls1.gamma``, ``attn.qkv.bias``
   with a ``bias_mask``, SwiGLU ``mlp.w1/w2/w3``);
2. ``hf``: Hugging Face transformers ``DINOv3ViTModel`` (``embeddings.*``, ``[model.]layer.N.*``,
   separate ``q/k/v/o_proj``, SwiGLU ``gate/up/down_proj``);
3. ``timm``: timm's own Eva keys, which our backbone uses as they are;
4. ``segdino_v2``: the authors' trained model, ``backbone.<meta keys>`` plus ``decoder.*``.

Every backbone layout is converted to timm's keys by a pure function, then fitted to the model
with one strict rule: keys no inference backbone uses are dropped by name, missing qkv biases
become zeros (files of timm's non-qkvb models), and anything else missing, left over or of the
wrong shape is a :class:`CheckpointError` that lists the keys.

``.pth`` files are read with ``torch.load(weights_only=True)`` only: a pickle that needs code is
refused, never run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

from .backbone import BACKBONES, DINOv3Backbone
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .fileio import read_json
from .memory import check_memory, forward_bytes

log = logging.getLogger("segdino.weights")

if TYPE_CHECKING:
    from .model import SegDINO

__all__ = [
    "FORMAT_DESCRIPTIONS",
    "safe_torch_load",
    "read_state_dict",
    "read_shard_index",
    "detect_format",
    "detect_backbone_format",
    "meta_to_timm",
    "hf_to_timm",
    "timm_to_timm",
    "backbone_to_timm",
    "guess_backbone",
    "authors_to_segdino",
    "infer_model_config",
    "load_backbone_weights",
    "weights_checksum",
    "load_foreign_model",
    "is_hub_name",
    "download_from_hub",
]

FORMAT_DESCRIPTIONS = {
    "meta": "a DINOv3 backbone in Meta's layout",
    "hf": "a DINOv3 backbone in Hugging Face transformers' layout",
    "timm": "a DINOv3 backbone in timm's layout",
    "segdino_v2": "a whole SegDINO model in the authors' (segdino_v2) layout",
    "segdino": "a whole SegDINO model state dict without its config",
}
BACKBONE_FORMATS = ("meta", "hf", "timm")
MODEL_FORMATS = ("segdino_v2", "segdino")

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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
            raise CheckpointError(f"{index}: its shards lack {_list(missing)}")
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
            f"{path}: expected a dict of tensors (a state dict); these entries are not tensors: {_list(other)}"
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


def _list(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


# --- recognising a layout ---------------------------------------------------------------

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HF_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.")


def detect_format(state: Mapping[str, Any]) -> str | None:
    """The layout of a state dict: ``meta``, ``hf``, ``timm``, ``segdino_v2``, ``segdino``, or None."""
    keys = set(state)
    if any(k.startswith("decoder.") for k in keys) and any(k.startswith("backbone.") for k in keys):
        return "segdino_v2"
    if any(k.startswith("backbone.vit.") for k in keys) and any(k.startswith(("tpa.", "sad.", "head.")) for k in keys):
        return "segdino"
    if "storage_tokens" in keys or any(k.endswith((".ls1.gamma", ".attn.qkv.bias_mask")) for k in keys):
        return "meta"
    if any(k.startswith("embeddings.") for k in keys) or any(_HF_LAYER.match(k) for k in keys):
        return "hf"
    if "reg_token" in keys or any(k.endswith((".gamma_1", ".attn.q_bias")) for k in keys):
        return "timm"
    if "cls_token" in keys and any(_BLOCK.match(k) for k in keys):
        # Without register tokens or layer scale the layout is still timm's (and Meta's) naming.
        return "timm"
    return None


def detect_backbone_format(state: Mapping[str, Any], source: str | os.PathLike = "checkpoint") -> str:
    """``meta``, ``hf`` or ``timm`` for a backbone state dict; :class:`CheckpointError` otherwise."""
    fmt = detect_format(state)
    if fmt in BACKBONE_FORMATS:
        return fmt
    if fmt in MODEL_FORMATS:
        raise CheckpointError(
            f"{source} is {FORMAT_DESCRIPTIONS[fmt]}, not a backbone; expected a DINOv3 backbone file "
            "(Meta .pth, Hugging Face or timm safetensors). Load a whole model with segdino.load_model() "
            "(--model or --init on the command line)"
        )
    raise CheckpointError(
        f"{source}: not a DINOv3 backbone or SegDINO model; expected Meta, Hugging Face or timm DINOv3 keys, "
        f"found {_list(sorted(state), 6)}"
    )


# --- backbone layouts -> timm keys --------------------------------------------------------

# Keys an inference backbone never uses, by layout: pretraining-only tokens, buffers that are
# recomputed, and the 7B's second CLS norm for local crops.
_META_UNUSED = re.compile(r"^(mask_token|rope_embed\.periods|local_cls_norm\..*|.*\.bias_mask)$")
_HF_UNUSED = re.compile(r"^(embeddings\.mask_token|rope_embeddings\.inv_freq)$")
_TIMM_UNUSED = re.compile(r"^(mask_token|rope\.periods)$")


def meta_to_timm(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Meta's DINOv3 keys (format 1) -> timm's Eva keys.

    ``attn.qkv.bias`` (3C,) becomes ``attn.q_bias`` and ``attn.v_bias``: Meta masks the key bias
    to zero with ``bias_mask`` and timm has no key bias. An unmasked non-zero key bias cannot be
    represented and raises :class:`CheckpointError`.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if _META_UNUSED.match(k):
            continue
        if k.endswith(".attn.qkv.bias"):
            base = k[: -len("qkv.bias")]
            q, kb, vb = _split3(source, k, v)
            mask = state.get(k + "_mask")
            if mask is not None and mask.shape == v.shape and torch.isfinite(mask).all():
                mq, mk, mv = mask.chunk(3, dim=-1)
                q, kb, vb = q * mq, kb * mk, vb * mv
                if torch.count_nonzero(kb):
                    raise CheckpointError(
                        f"{source}: {k} has a key bias that its bias_mask does not mask; DINOv3 as timm "
                        "implements it has no key bias, so these weights cannot be loaded exactly"
                    )
            out[base + "q_bias"] = q
            out[base + "v_bias"] = vb
            continue
        k = k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        k = re.sub(r"\.mlp\.w1\.", ".mlp.fc1_g.", k)
        k = re.sub(r"\.mlp\.w2\.", ".mlp.fc1_x.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        if k == "storage_tokens":
            k = "reg_token"
        out[k] = v
    return out


# Per-layer names after ``layer.N.``; the norms keep theirs.
_HF_RENAMES = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attention.o_proj.", "attn.proj."),
    ("layer_scale1.lambda1", "gamma_1"),
    ("layer_scale2.lambda1", "gamma_2"),
)


def hf_to_timm(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Hugging Face ``DINOv3ViTModel`` keys (format 2, ``model.`` before ``layer.N`` or not) -> timm's.

    ``q_proj``, ``k_proj``, ``v_proj`` weights are stacked into ``attn.qkv.weight`` (q, k, v order);
    SwiGLU ``gate_proj``/``up_proj``/``down_proj`` become ``fc1_g``/``fc1_x``/``fc2``. A non-zero
    ``k_proj`` bias cannot be represented (timm has no key bias) and raises :class:`CheckpointError`.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    gated = any(k.endswith(".mlp.gate_proj.weight") for k in state)
    for k, v in state.items():
        if _HF_UNUSED.match(k):
            continue
        if k.startswith("embeddings."):
            name = k[len("embeddings."):]
            mapped = {
                "cls_token": "cls_token",
                "register_tokens": "reg_token",
                "patch_embeddings.weight": "patch_embed.proj.weight",
                "patch_embeddings.bias": "patch_embed.proj.bias",
            }.get(name)
            out[mapped or k] = v  # an unknown name stays and is reported as left over
            continue
        m = _HF_LAYER.match(k)
        if not m:
            out[k] = v  # norm.* keeps its name; anything else is reported as left over
            continue
        i, rest = int(m.group(1)), k[m.end():]
        prefix = f"blocks.{i}."
        if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            proj, param = rest.split(".")[1:3]
            if param == "weight":
                qkv.setdefault(i, {})[proj] = v
            elif proj == "q_proj" and param == "bias":
                out[prefix + "attn.q_bias"] = v
            elif proj == "v_proj" and param == "bias":
                out[prefix + "attn.v_bias"] = v
            elif proj == "k_proj" and param == "bias":
                if torch.count_nonzero(v):
                    raise CheckpointError(
                        f"{source}: {k} is a non-zero key bias; DINOv3 as timm implements it has no key "
                        "bias, so these weights cannot be loaded exactly"
                    )
            else:
                out[k] = v
            continue
        if rest.startswith("mlp."):
            sub, _, param = rest[len("mlp."):].partition(".")
            names = {"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"} if gated else {
                "up_proj": "fc1", "down_proj": "fc2"}
            if sub in names:
                out[f"{prefix}mlp.{names[sub]}.{param}"] = v
            else:
                out[k] = v
            continue
        for old, new in _HF_RENAMES:
            if rest.startswith(old):
                out[prefix + new + rest[len(old):]] = v
                break
        else:
            out[k] = v
    for i, parts in sorted(qkv.items()):
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            absent = sorted({"q_proj", "k_proj", "v_proj"} - set(parts))
            raise CheckpointError(
                f"{source}: layer {i} lacks attention.{', attention.'.join(p + '.weight' for p in absent)}"
            )
        shapes = {tuple(t.shape) for t in parts.values()}
        if len(shapes) != 1:
            raise CheckpointError(
                f"{source}: layer {i} has q/k/v projection weights of different shapes "
                f"{', '.join(f'{p} {tuple(t.shape)}' for p, t in sorted(parts.items()))}"
            )
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    return out


def timm_to_timm(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """timm's keys (format 3) as they are, less the few an inference backbone never uses."""
    return {k: v for k, v in state.items() if not _TIMM_UNUSED.match(k)}


_CONVERTERS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "meta": meta_to_timm,
    "hf": hf_to_timm,
    "timm": timm_to_timm,
}


def backbone_to_timm(
    state: Mapping[str, torch.Tensor], fmt: str | None = None, source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Any backbone layout (detected when ``fmt`` is None) -> timm's Eva keys."""
    fmt = fmt or detect_backbone_format(state, source)
    return _CONVERTERS[fmt](state, source=source)


def _split3(source, key: str, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if v.dim() != 1 or v.shape[0] % 3:
        raise CheckpointError(f"{source}: {key} has shape {tuple(v.shape)}; expected (3 * width,)")
    return v.chunk(3)


def guess_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone name whose width, depth and MLP kind match a timm-key state dict, if any."""
    cls = state.get("cls_token")
    if cls is None or cls.dim() == 0:
        return None
    width = int(cls.shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    swiglu = any(".mlp.fc1_g." in k for k in state)
    for spec in BACKBONES.values():
        if (spec.width, spec.depth, spec.swiglu) == (width, depth, swiglu):
            return spec.name
    return None


# --- fitting a converted state dict to a model -------------------------------------------

_QKV_BIAS = re.compile(r"(^|\.)blocks\.\d+\.attn\.[qv]_bias$")


def _fit(
    source,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    file_holds: str | None = None,
    file_name: Callable[[str], str] = str,
) -> dict[str, torch.Tensor]:
    """``state`` completed and checked against ``expected`` (a model's state dict).

    Missing qkv biases become zeros; qkv biases the model lacks are dropped when zero (timm's
    models without qkv bias compute the same function). Anything else missing or left over, a
    shape mismatch, or a non-finite value raises :class:`CheckpointError`. ``file_name`` maps a
    key (timm's naming) to the file's own name for that tensor, for messages.
    """
    state = dict(state)
    for k in [k for k in state if k not in expected and _QKV_BIAS.search(k)]:
        if not torch.count_nonzero(state[k]):
            del state[k]
    for k, ref in expected.items():
        if k not in state and _QKV_BIAS.search(k):
            state[k] = torch.zeros(ref.shape, dtype=ref.dtype)
    holds = f" (the file holds {file_holds})" if file_holds else ""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing: {_list(file_name(k) for k in missing)}")
        if unexpected:
            parts.append(f"left over: {_list(file_name(k) for k in unexpected)}")
        raise CheckpointError(f"{source} does not fit {what}{holds}; keys {'; '.join(parts)}")
    for k, ref in expected.items():
        t = state[k]
        if t.numel() == ref.numel() and t.numel() == 1 and t.shape != ref.shape:
            t = state[k] = t.reshape(ref.shape)  # a scalar stored as () or (1,)
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source} does not fit {what}{holds}: {file_name(k)} has shape {tuple(t.shape)} in the file, "
                f"the model expects {tuple(ref.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: {file_name(k)} holds non-finite values (NaN or infinity)")
        if not t.is_floating_point() and ref.is_floating_point():
            raise CheckpointError(f"{source}: {file_name(k)} has dtype {t.dtype}; expected floating point values")
    return state


def _describe_size(state: Mapping[str, torch.Tensor]) -> str | None:
    name = guess_backbone(state)
    if name:
        return f"a {name} backbone"
    cls = state.get("cls_token")
    if cls is not None and cls.dim() > 0:
        blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
        return f"a backbone of width {cls.shape[-1]} and depth {max(blocks) + 1 if blocks else 0}"
    return None


# --- public loaders -------------------------------------------------------------------------


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


def load_backbone_weights(backbone: DINOv3Backbone, weights: str | os.PathLike) -> dict[str, str]:
    """Load a DINOv3 backbone file (format 1, 2 or 3, detected from its keys) into ``backbone``.

    ``weights`` is a file, a folder holding one (a Hugging Face or timm download), or, when
    online, a hub name such as ``timm/vit_small_patch16_dinov3_qkvb.lvd1689m`` or
    ``facebook/dinov3-vits16-pretrain-lvd1689m``. Raises :class:`CheckpointError` when the file
    is unreadable, is a whole model, or does not match the backbone's size.

    Returns (and keeps as ``backbone.weights_info``) what was loaded: ``path``, ``format``
    (``meta``, ``hf`` or ``timm``), ``format_description`` and ``sha256`` of the file.
    """
    path = Path(weights)
    if not path.exists() and is_hub_name(str(weights)):
        path = download_from_hub(str(weights))
    state = read_state_dict(path)
    if path.is_file():
        _reject_our_model_file(path, state)
    fmt = detect_backbone_format(state, path)
    converted = backbone_to_timm(state, fmt, source=path)
    what = f"the {backbone.spec.name} backbone"
    fitted = _fit(path, converted, backbone.vit.state_dict(), what, file_holds=_describe_size(converted),
                  file_name=_name_in_layout(fmt))
    backbone.vit.load_state_dict(fitted, strict=True)
    info = {"path": str(path), "format": fmt, "format_description": FORMAT_DESCRIPTIONS[fmt],
            "sha256": weights_checksum(path)}
    backbone.weights_info = info
    log.info("backbone weights: %s (%s, sha256 %s)", path, info["format_description"], info["sha256"])
    return info


def _reject_our_model_file(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    if detect_format(state) == "segdino" or _is_our_file(path):
        raise CheckpointError(
            f"{path} is a whole SegDINO model file, not a backbone; expected a DINOv3 backbone file (Meta .pth, "
            "Hugging Face or timm safetensors). Load it with segdino.load_model() (--model or --init on the "
            "command line)"
        )


def _is_our_file(path: Path) -> bool:
    from .checkpoint import FORMAT_KEY, FORMAT_NAME, read_metadata

    meta = read_metadata(path)
    return bool(meta) and meta.get(FORMAT_KEY) == FORMAT_NAME


_AUTHORS_BLOCK = re.compile(r"^decoder\.(sad_intra|sad_inter)_([1-4])\.(.+)$")
_AUTHORS_BRANCH = re.compile(r"^decoder\.tpa_branch_([1-4])\.conv\.weight$")
_AUTHORS_PROJ = re.compile(r"^decoder\.token_projections\.([0-3])\.weight$")


def authors_to_segdino(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The authors' whole-model keys (format 4) -> ours.

    ``backbone.<Meta keys>`` -> ``backbone.vit.<timm keys>``; ``decoder.token_projections.i`` ->
    ``tpa.projections.i``; ``decoder.tpa_branch_{i+1}.conv`` -> ``tpa.refine.i``;
    ``decoder.sad_{intra,inter}_{i+1}`` -> ``sad.{intra,inter}.i`` (``gamma`` -> ``gain``);
    ``decoder.out_conv`` -> ``head.conv``. Index 1 of the authors is their shallowest tap, our 0.
    Unknown keys are kept under their own name so the strict fit reports them.
    """
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {"backbone.vit." + k: v for k, v in backbone_to_timm(backbone, source=source).items()}
    for k, v in state.items():
        if k.startswith("backbone."):
            continue
        if m := _AUTHORS_PROJ.match(k):
            out[f"tpa.projections.{m.group(1)}.weight"] = v
        elif m := _AUTHORS_BRANCH.match(k):
            out[f"tpa.refine.{int(m.group(1)) - 1}.weight"] = v
        elif m := _AUTHORS_BLOCK.match(k):
            kind = "intra" if m.group(1) == "sad_intra" else "inter"
            param = "gain" if m.group(3) == "gamma" else m.group(3)
            out[f"sad.{kind}.{int(m.group(2)) - 1}.{param}"] = v
        elif k.startswith("decoder.out_conv."):
            out["head.conv." + k[len("decoder.out_conv."):]] = v
        else:
            out[k] = v
    return out


_META_NAMES = (
    (r"^reg_token$", "storage_tokens"),
    (r"\.gamma_1$", ".ls1.gamma"),
    (r"\.gamma_2$", ".ls2.gamma"),
    (r"\.mlp\.fc1_g\.", ".mlp.w1."),
    (r"\.mlp\.fc1_x\.", ".mlp.w2."),
    (r"\.attn\.[qv]_bias$", ".attn.qkv.bias"),
)
_HF_NAMES = (
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^reg_token$", "embeddings.register_tokens"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings."),
    (r"^blocks\.(\d+)\.", r"layer.\1."),
    (r"\.gamma_1$", ".layer_scale1.lambda1"),
    (r"\.gamma_2$", ".layer_scale2.lambda1"),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.attn\.qkv\.weight$", ".attention.{q,k,v}_proj.weight"),
    (r"\.attn\.([qv])_bias$", r".attention.\1_proj.bias"),
    (r"\.mlp\.fc1\.", ".mlp.up_proj."),
    (r"\.mlp\.fc1_g\.", ".mlp.gate_proj."),
    (r"\.mlp\.fc1_x\.", ".mlp.up_proj."),
    (r"\.mlp\.fc2\.", ".mlp.down_proj."),
)


def _name_in_layout(fmt: str | None) -> Callable[[str], str]:
    """Maps a timm key to the name the same tensor has in a ``meta`` or ``hf`` file, for messages."""
    rules = {"meta": _META_NAMES, "hf": _HF_NAMES}.get(fmt or "", ())

    def name(key: str) -> str:
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        return key

    return name


def _authors_name(key: str) -> str:
    """The authors' name of one of our model keys, for messages."""
    if key.startswith("backbone.vit."):
        return "backbone." + _name_in_layout("meta")(key[len("backbone.vit."):])
    if m := re.match(r"^tpa\.projections\.(\d)\.weight$", key):
        return f"decoder.token_projections.{m.group(1)}.weight"
    if m := re.match(r"^tpa\.refine\.(\d)\.weight$", key):
        return f"decoder.tpa_branch_{int(m.group(1)) + 1}.conv.weight"
    if m := re.match(r"^sad\.(intra|inter)\.(\d)\.(.+)$", key):
        param = "gamma" if m.group(3) == "gain" else m.group(3)
        return f"decoder.sad_{m.group(1)}_{int(m.group(2)) + 1}.{param}"
    if key.startswith("head.conv."):
        return "decoder.out_conv." + key[len("head.conv."):]
    return key


def infer_model_config(state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The :class:`ModelConfig` of a state dict in our keys, from its tensor shapes.

    Backbone from width/depth/MLP kind, decoder width from ``tpa.projections.0.weight`` (D, C, 1, 1),
    class count from ``head.conv.weight`` (K, D, 1, 1), BatchNorm when running statistics are
    present. Preprocessing is the authors' default (256x256, ImageNet mean/std), since such a
    file carries none.
    """
    vit = {k[len("backbone.vit."):]: v for k, v in state.items() if k.startswith("backbone.vit.")}
    name = guess_backbone(vit)
    if name is None:
        found = _describe_size(vit) or "no recognisable backbone"
        sizes = ", ".join(f"{s.name} ({s.width} wide, {s.depth} deep{', SwiGLU' if s.swiglu else ''})"
                          for s in BACKBONES.values())
        raise CheckpointError(f"{source}: its backbone is {found}; expected one of {sizes}")
    for key in ("tpa.projections.0.weight", "head.conv.weight"):
        if key not in state or state[key].dim() != 4:
            raise CheckpointError(f"{source}: cannot infer the decoder: {key} is missing or not a conv weight")
    decoder_dim = int(state["tpa.projections.0.weight"].shape[0])
    num_classes = int(state["head.conv.weight"].shape[0])
    norm = "batch" if "sad.intra.0.norm.running_mean" in state else "group"
    try:
        return ModelConfig(backbone=name, num_classes=num_classes, decoder_dim=decoder_dim, norm=norm)
    except ConfigError as e:
        raise CheckpointError(f"{source}: the inferred model is invalid: {e}") from None


def load_foreign_model(path: str | os.PathLike) -> "SegDINO":
    """A :class:`~segdino.model.SegDINO` from a whole-model file that is not our own safetensors.

    Accepts the authors' state dict (format 4) and a state dict in our own keys without config;
    the config is inferred from the tensor shapes (see :func:`infer_model_config`). A backbone-only
    file raises :class:`CheckpointError` saying so.
    """
    from .model import SegDINO  # imported here: model.py imports this module lazily too

    path = Path(path)
    state = read_state_dict(path)
    fmt = detect_format(state)
    if fmt in BACKBONE_FORMATS:
        raise CheckpointError(
            f"{path} is {FORMAT_DESCRIPTIONS[fmt]}, not a whole model; expected a SegDINO model file (ours, or "
            "the authors' state dict). To start from this backbone, pass it as backbone_weights= to "
            "segdino.build_model() (--backbone-weights on the command line)"
        )
    if fmt is None:
        raise CheckpointError(
            f"{path}: not a SegDINO model; expected our .safetensors file or the authors' state dict "
            f"(backbone.* and decoder.* keys), found {_list(sorted(state), 6)}"
        )
    ours = authors_to_segdino(state, source=path) if fmt == "segdino_v2" else dict(state)
    config = infer_model_config(ours, path)
    what = f"a SegDINO model with backbone {config.backbone}, decoder width {config.decoder_dim}, " \
           f"{config.num_classes} class{'es' if config.num_classes > 1 else ''}"
    # Shapes first, on a skeleton without storage: a file with one oversized tensor must not make us
    # allocate the (much larger) model that tensor's shape implies.
    with torch.device("meta"):
        skeleton = SegDINO(config)
    fitted = _fit(path, ours, skeleton.state_dict(), what, file_name=_authors_name if fmt == "segdino_v2" else str)
    del skeleton
    check_memory(forward_bytes(config), f"{path}: {what} at {config.image_size[0]}x{config.image_size[1]}",
                 CheckpointError)
    model = SegDINO(config)
    model.load_state_dict(fitted, strict=True)
    return model


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
