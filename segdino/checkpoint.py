"""Our model file: one .safetensors file whose metadata holds the model config.

``load_model`` also accepts a run folder (its ``best.safetensors``) and the foreign whole-model
files that :mod:`segdino.conversion` converts (the authors' state dict), through
:func:`load_foreign_model`.

A model file is untrusted input. Reading one runs no code (safetensors holds only tensors and
strings; ``.pth`` files go through :func:`segdino.weight_files.safe_torch_load`), and the metadata
config is checked field by field, then every tensor's name, shape and dtype is compared with the
model that config describes *before* the model is built or any tensor is read, so a forged config
cannot make us allocate a model the file does not hold. Any mismatch is a
:class:`~segdino.errors.CheckpointError` naming the file and the key or field.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .config import MAX_ABS_MEAN, MAX_SAD_BLOCKS, STD_RANGE, ModelConfig
from .conversion import (BACKBONE_FORMATS, FORMAT_DESCRIPTIONS, authors_name, authors_to_segdino, detect_format,
                         infer_model_config)
from .errors import CheckpointError, ConfigError
from .fileio import atomic_path
from .memory import check_memory, forward_bytes
from .model import SegDINO
from .weight_files import CONFIG_KEY, FORMAT_KEY, FORMAT_NAME, list_keys, read_metadata, read_state_dict
from .weights import fit_state_dict

FORMAT_VERSION = "1"

# Largest input side a model file may ask for. Inference resizes every image to the model's input
# size, so a forged size would make it allocate without bound; the paper's models use 256.
MAX_INPUT_SIDE = 8192


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 error: type[Exception] = CheckpointError) -> Path:
    """Write ``tensors`` (name -> CPU tensor) as one ``.safetensors`` file, atomically.

    When the write fails (disk full, I/O error) the file already at ``path`` is left as it was and
    ``error`` is raised saying so.
    """
    path = Path(path)
    with atomic_path(path, error) as tmp:
        write_safetensors(tmp, tensors, metadata)
    return path


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, streaming one tensor at a time.

    safetensors' own writer stages its output in a ``.tmpXXXXXX`` file of its own, which a kill
    leaves behind beyond our reach; writing the (simple, documented) format here keeps every byte
    inside our atomic writer's temporary and costs no second copy of the weights in memory.
    Layout: 8-byte little-endian header length, a JSON header (``dtype``, ``shape``,
    ``data_offsets`` per tensor, ``__metadata__``) padded with spaces to 8 bytes, then the data.
    """
    if sys.byteorder != "little":
        raise OSError("the safetensors format is little-endian; this machine is not")
    prepared = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: not a tensor")
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors name")
        prepared[name] = t.detach().to("cpu").contiguous()
    # Larger elements first, so every tensor starts at a multiple of its element size.
    order = sorted(prepared, key=lambda k: (-prepared[k].element_size(), k))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        t = prepared[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name in order:
            t = prepared[name]
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def save_model(model: SegDINO, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` to one ``.safetensors`` file (config in its metadata), atomically.

    Raises:
        CheckpointError: a weight is NaN or infinite (nothing is written), or the write failed
            (the message says that the previous file at ``path``, if any, is intact).
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}; {kept}")
    metadata = {FORMAT_KEY: FORMAT_NAME, "format_version": FORMAT_VERSION, CONFIG_KEY: model.config.to_json()}
    if extra_metadata:
        metadata.update({str(k): str(v) for k, v in extra_metadata.items()})
    return save_tensors(path, state, metadata)


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder meaning its ``best.safetensors``."""
    p = Path(path)
    if p.is_dir():
        best = p / "best.safetensors"
        if not best.is_file():
            raise CheckpointError(f"{p} is a folder without best.safetensors; pass a checkpoint file or a run folder")
        return best
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty")
    return p


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SegDINO:
    """Load a whole model: our ``.safetensors``, a run folder, or the authors' state dict.

    Raises:
        CheckpointError: the file is missing, unreadable, a pickle that needs code, or its
            tensors or metadata config do not describe one valid model (the message names the
            file and the key or config field).
    """
    p = resolve_model_path(path)
    meta = read_metadata(p)
    if meta is not None and meta.get(FORMAT_KEY) == FORMAT_NAME:
        model = _load_ours(p, meta)
    else:
        model = load_foreign_model(p)
    model.source = p  # named in messages about the model's outputs
    return model.to(map_location).eval()


# --- the metadata config -----------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _list_of(check, n: int | None = None):
    return lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(check(x) for x in v)


# Field -> (test of the JSON value, what it must be). Types are checked here, on the file's JSON,
# because ModelConfig converts values (float("1e9"), int(True)) that a forged file should not pass.
_FIELDS: dict[str, tuple[Any, str]] = {
    "backbone": (lambda v: isinstance(v, str), "a backbone name"),
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "decoder_dim": (lambda v: _is_int(v) and 1 <= v <= 65536, "an integer in 1..65536"),
    "taps": (lambda v: v is None or _list_of(_is_int)(v), "null or a list of block indices"),
    "norm": (lambda v: isinstance(v, str), "a normalisation name"),
    "image_size": (lambda v: _list_of(lambda s: _is_int(s) and 16 <= s <= MAX_INPUT_SIDE)(v) and len(v) == 2,
                   f"[height, width], each 16..{MAX_INPUT_SIDE}"),
    "mean": (_list_of(lambda m: _is_number(m) and abs(m) <= MAX_ABS_MEAN, 3),
             f"three numbers in -{MAX_ABS_MEAN:g}..{MAX_ABS_MEAN:g}"),
    "std": (_list_of(lambda s: _is_number(s) and STD_RANGE[0] <= s <= STD_RANGE[1], 3),
            f"three numbers in {STD_RANGE[0]:g}..{STD_RANGE[1]:g}"),
    "mask_threshold": (lambda v: _is_int(v) and 0 <= v <= 255, "an integer in 0..255"),
    "class_names": (lambda v: v is None or _list_of(lambda s: isinstance(s, str))(v), "null or a list of names"),
    "no_tpa": (lambda v: isinstance(v, bool), "true or false"),
    "no_sad": (lambda v: isinstance(v, bool), "true or false"),
    "sad_blocks": (lambda v: _is_int(v) and 1 <= v <= MAX_SAD_BLOCKS, f"an integer in 1..{MAX_SAD_BLOCKS}"),
    "volume": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
}
_REQUIRED = ("backbone", "num_classes", "decoder_dim", "image_size")


def config_from_metadata(path: str | os.PathLike, text: str | None) -> ModelConfig:
    """The :class:`ModelConfig` stored in a model file's metadata, checked field by field.

    Raises:
        CheckpointError: the text is not a JSON object, a field is unknown, missing, of the
            wrong type or out of range, or the fields together are not a valid model.
    """
    where = f"{path}: its metadata config"
    if text is None:
        raise CheckpointError(f"{path}: the file says it is a SegDINO model but its metadata has no "
                              f"{CONFIG_KEY!r} entry")
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{where} must be a JSON object, found {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in _FIELDS)
    if unknown:
        raise CheckpointError(f"{where} has unknown fields: {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise CheckpointError(f"{where} lacks the fields: {', '.join(missing)}")
    for name, value in d.items():
        ok, expected = _FIELDS[name]
        if not ok(value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise CheckpointError(f"{where}: field {name!r} must be {expected}, found {shown}")
    try:
        config = ModelConfig.from_dict(d)
        if config.volume is not None:
            from .volumes.intensity import read_volume_settings

            read_volume_settings(config.volume)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} is invalid: {e}") from None
    return config


def _check_format_version(path: Path, meta: dict[str, str]) -> None:
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        newer = version.isdigit() and int(version) > int(FORMAT_VERSION)
        why = "it was written by a newer SegDINO; upgrade to read it" if newer else "the value is not one we wrote"
        raise CheckpointError(f"{path}: metadata field 'format_version' is {version[:40]!r}, this SegDINO reads "
                              f"{FORMAT_VERSION!r} ({why})")


# safetensors' dtype names of the torch dtypes a model holds.
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype name) of every tensor, from the header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                s = f.get_slice(k)
                out[k] = (tuple(int(n) for n in s.get_shape()), str(s.get_dtype()))
            return out
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read its tensor index ({e})") from None


def _describe_config(config: ModelConfig) -> str:
    return (f"backbone {config.backbone}, decoder_dim {config.decoder_dim}, num_classes {config.num_classes}, "
            f"norm {config.norm}")


def _load_ours(path: Path, meta: dict[str, str]) -> SegDINO:
    _check_format_version(path, meta)
    config = config_from_metadata(path, meta.get(CONFIG_KEY))
    try:
        # A skeleton without storage gives the expected names, shapes and dtypes for free.
        with torch.device("meta"):
            skeleton = SegDINO(config)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its metadata config is invalid: {e}") from None
    expected = skeleton.state_dict()
    header = _read_header(path)
    _check_names(path, set(header), set(expected), config)
    for k, ref in expected.items():
        shape, dtype = header[k]
        if shape != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: {k} has shape {shape} in the file, but the model its metadata config describes "
                f"({_describe_config(config)}) expects {tuple(ref.shape)}"
            )
        want = _SAFETENSORS_DTYPES.get(ref.dtype, str(ref.dtype))
        if dtype != want:
            raise CheckpointError(f"{path}: {k} has dtype {dtype} in the file, the model expects {want} ({ref.dtype})")
    del skeleton, expected
    h, w = config.image_size
    check_memory(forward_bytes(config), f"{path}: the model its metadata config describes ({_describe_config(config)}, "
                 f"input {h}x{w})", CheckpointError)
    model = SegDINO(config)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read tensors; the file is truncated or corrupt ({e})") from None
    check_state_dict(path, state, model.state_dict())
    model.load_state_dict(state, strict=True)
    return model


def _check_names(path: Path, found: set[str], expected: set[str], config: ModelConfig | None = None) -> None:
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
        described = f" ({_describe_config(config)})" if config is not None else ""
        raise CheckpointError(f"{path} does not match its model config{described}; {'; '.join(parts)}")


def check_state_dict(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` on missing/unexpected keys, wrong shapes/dtypes or non-finite values."""
    _check_names(path, set(state), set(expected))
    for k, ref in expected.items():
        t = state[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(t.shape)}, the model expects {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise CheckpointError(f"{path}: {k} has dtype {t.dtype}, the model expects {ref.dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: {k} holds non-finite values (NaN or infinity)")


def describe(path: str | os.PathLike) -> dict:
    """Config of one of our files (checked as :func:`load_model` checks it), without building the model."""
    p = resolve_model_path(path)
    meta = read_metadata(p)
    if not meta or meta.get(FORMAT_KEY) != FORMAT_NAME:
        raise CheckpointError(f"{p} is not a SegDINO model file")
    _check_format_version(p, meta)
    return json.loads(meta[CONFIG_KEY]) if config_from_metadata(p, meta.get(CONFIG_KEY)) else {}


def load_foreign_model(path: str | os.PathLike) -> SegDINO:
    """A :class:`~segdino.model.SegDINO` from a whole-model file that is not our own safetensors.

    Accepts the authors' state dict (format 4) and a state dict in our own keys without config;
    the config is inferred from the tensor shapes (see :func:`segdino.conversion.infer_model_config`). A backbone-only
    file raises :class:`CheckpointError` saying so.
    """
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
            f"(backbone.* and decoder.* keys), found {list_keys(sorted(state), 6)}"
        )
    ours = authors_to_segdino(state, source=path) if fmt == "segdino_v2" else dict(state)
    config = infer_model_config(ours, path)
    what = f"a SegDINO model with backbone {config.backbone}, decoder width {config.decoder_dim}, " \
           f"{config.num_classes} class{'es' if config.num_classes > 1 else ''}"
    # Shapes first, on a skeleton without storage: a file with one oversized tensor must not make us
    # allocate the (much larger) model that tensor's shape implies.
    with torch.device("meta"):
        skeleton = SegDINO(config)
    fitted = fit_state_dict(path, ours, skeleton.state_dict(), what, file_name=authors_name if fmt == "segdino_v2" else str)
    del skeleton
    check_memory(forward_bytes(config), f"{path}: {what} at {config.image_size[0]}x{config.image_size[1]}",
                 CheckpointError)
    model = SegDINO(config)
    model.load_state_dict(fitted, strict=True)
    return model
