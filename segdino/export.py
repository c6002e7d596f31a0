"""ONNX export of a SegDINO model, checked against PyTorch before the file appears.

The file's graph and metadata are described in :mod:`segdino.onnx_runtime`, which also opens,
runs and checks exported files; int8 quantisation of an export is :mod:`segdino.quantize`. The
names of both modules that callers have long imported from here are named here too.

``onnx`` is needed to export, ``onnxruntime`` to check; both are imported only inside the
functions that use them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import load_model
from .config import ModelConfig
from .errors import ConfigError
from .kernels.fold import interpolation_matrix, upsample_conv3x3  # noqa: F401  (named here too)
from .onnx_runtime import (  # noqa: F401  (named here too)
    CHECK_KEY,
    CONFIG_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISION_KEY,
    PREPROCESSING_KEY,
    ExportError,
    OnnxModel,
    compare_with_torch,
    largest_tensor_bytes,
    load_onnx_model,
    ort_session,
    physical_cores,
    read_onnx_metadata,
    rel_l2,
)
from .tpa import FoldedTokenPyramidAdaptation, TokenPyramidAdaptation  # noqa: F401

log = logging.getLogger("segdino.export")

# LayerNormalization became a standard op in 17; ONNX Runtime fuses it and GELU from there on.
DEFAULT_OPSET = 17
MIN_OPSET = 14
DEFAULT_TOLERANCE = 1e-4
# Protobuf cannot hold one message over 2 GiB; larger models keep their weights in FILE.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


def _export_size(image_size, config: ModelConfig) -> tuple[int, int]:
    if image_size is None:
        return tuple(config.image_size)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be an integer or (height, width), got {image_size!r}") from None
    if len(size) != 2 or any(s <= 0 or s % 16 for s in size):
        raise ConfigError(f"image_size must be positive multiples of 16 (height, width), got {image_size!r}")
    return size


def preprocessing_spec(config: ModelConfig) -> dict[str, Any]:
    """How raw images become the graph's input and logits become masks (written into the file)."""
    binary = config.num_classes == 1
    return {
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": "RGB",
        "image_size": list(config.image_size),  # (height, width)
        "resize": "bilinear, antialiased, to image_size; logits resized back to the image's size (bilinear)",
        "scale": 1.0 / 255.0,
        "mean": list(config.mean),
        "std": list(config.std),
        "formula": "input = (pixel / 255 - mean) / std",
        "activation": "sigmoid" if binary else "softmax",
        "mask": "logit > 0" if binary else "argmax over channels",
        "num_classes": config.num_classes,
    }


@contextlib.contextmanager
def quiet_export():
    """Silence the exporter's and ONNX Runtime's warnings and log lines inside the ``with`` block."""
    # The tracer warns about every Python-level shape check in the model; they are constants for a
    # fixed input size, which is exactly what the export promises.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxruntime")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)


def _torch_export(module: torch.nn.Module, example: torch.Tensor, file: Path, opset: int, dynamic_batch: bool) -> None:
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                  opset_version=opset, do_constant_folding=True)
    with quiet_export(), torch.no_grad():
        try:
            # The TorchScript exporter writes one self-contained file whose graph ONNX Runtime
            # optimises well; the dynamo exporter is the fallback where it is gone.
            torch.onnx.export(module, (example,), str(file), dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(module, (example,), str(file), **kwargs)


def _metadata(config: ModelConfig, precision: str, check: dict | None, folded: bool) -> dict[str, str]:
    meta = {
        "tpa": "folded" if folded else "direct",
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        CONFIG_KEY: config.to_json(),
        PREPROCESSING_KEY: json.dumps(preprocessing_spec(config), sort_keys=True),
        PRECISION_KEY: precision,
        "segdino_version": __version__,
        "torch_version": torch.__version__,
    }
    if check is not None:
        meta[CHECK_KEY] = json.dumps(check, sort_keys=True)
    return meta


def set_metadata(proto, meta: dict[str, str]) -> None:
    """Write ``meta`` into an ONNX model's ``metadata_props`` (other entries kept), and name us its producer."""
    keep = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "segdino"
    proto.producer_version = __version__
    proto.doc_string = "SegDINO segmentation model: normalised (B, 3, H, W) image -> (B, K, H, W) logits"


def _fix_output_shape(proto, config: ModelConfig) -> None:
    # With a dynamic batch the exporter leaves every output dim symbolic; classes and size are fixed,
    # and saying so lets a reader check the graph against the config without running it.
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        for d, v in zip(list(dims)[1:], (config.num_classes, *config.image_size)):
            d.dim_value = int(v)


def save_proto(proto, file: Path, data_name: str) -> None:
    """Write ``proto`` to ``file``; weights go to ``data_name`` beside it when the model is too big."""
    import onnx

    if proto.ByteSize() > EXTERNAL_DATA_BYTES or _has_external_data(proto):
        onnx.save_model(proto, str(file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(file))


def _has_external_data(proto) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in proto.graph.initializer)


@contextlib.contextmanager
def atomic_onnx(path: Path):
    """Yield a temporary folder; on success ``<tmp>/<name>`` (and its data file) move to ``path``.

    Nothing is left behind on error; a previous file at ``path`` stays untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmpdir
        staged = tmpdir / path.name
        data = tmpdir / (path.name + ".data")
        # The weights first, so the graph never appears without them.
        for src in ([data] if data.exists() else []) + [staged]:
            with open(src, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(src, path.parent / src.name)
    finally:
        for f in tmpdir.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            tmpdir.rmdir()


def _check_batches(dynamic_batch: bool, fixed_batch: int) -> list[int]:
    # The graph is traced at batch 2; checking 1 and 3 proves the batch was not baked in.
    return [1, 3] if dynamic_batch else [fixed_batch]


def fold_tpa(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a SegDINO model whose TPA runs folded (:meth:`TokenPyramidAdaptation.fold`).

    Same function and parameters; on CPU about 1.4x faster in PyTorch and 1.35x in ONNX Runtime
    at 256x256 (ViT-S/16, D=256), since the x8 level's 3x3 conv alone is 44% of the model's FLOPs.
    """
    folded = copy.deepcopy(model)
    if isinstance(getattr(folded, "tpa", None), TokenPyramidAdaptation):
        folded.tpa = folded.tpa.fold()
    return folded


# --------------------------------------------------------------------------------------------
# Export


def export_onnx(
    model: torch.nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None,
    fold: bool = True,
) -> dict[str, Any]:
    """Export a SegDINO model to one ONNX file, checked against PyTorch before it appears.

    The graph maps a normalised ``(B, 3, H, W)`` float32 image batch to ``(B, num_classes, H, W)``
    float32 logits, ``(H, W)`` = ``image_size`` (default: the model's). With ``dynamic_batch`` the
    batch is free, else 1. The model's config and preprocessing go into the file's metadata.

    Args:
        model: a SegDINO model (any device and dtype: it is exported as a float32 CPU copy), or a
            checkpoint path / run folder for :func:`segdino.load_model`.
        path: the ``.onnx`` file to write (atomically; weights over ~1.8 GB go to ``path.data``).
        opset: ONNX opset (default 17).
        check: run ONNX Runtime on random inputs (batches 1 and 3, or the fixed batch) against
            PyTorch fp32; a relative L2 error above ``tolerance`` raises and leaves no file.
        fold: write TPA folded (:func:`fold_tpa`: same function, far fewer FLOPs); the check
            compares with the model as it is, unfolded.

    Returns:
        ``path``, ``opset``, ``image_size``, ``dynamic_batch``, ``bytes``, ``seconds`` (export),
        ``rel_l2`` and ``max_abs`` (None without ``check``), ``check_batches``, ``torch`` and
        ``onnxruntime`` versions.

    Raises:
        ConfigError: bad ``image_size``/``opset``, or ``model`` is not a SegDINO model.
        ExportError: the exporter failed, or ONNX Runtime disagrees with PyTorch.
    """
    model, config, size, opset = _export_inputs(model, image_size, opset, check)
    import onnx

    path = Path(path)
    export_config = dataclasses.replace(config, image_size=size)
    module = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    batch = 2 if dynamic_batch else 1
    example = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))

    t0 = time.perf_counter()
    with atomic_onnx(path) as tmpdir:
        raw = tmpdir / "raw.onnx"
        try:
            _torch_export(fold_tpa(module) if fold else module, example, raw, opset, dynamic_batch)
            proto = onnx.load(str(raw), load_external_data=True)
        except Exception as e:  # the exporter raises many types; all mean "this model cannot be exported"
            raise ExportError(f"exporting to {path} failed (opset {opset}): {type(e).__name__}: {e}") from e
        for f in tmpdir.iterdir():  # the exporter's own files; the final ones are written below
            f.unlink()
        _fix_output_shape(proto, export_config)
        seconds = time.perf_counter() - t0
        result: dict[str, Any] = {
            "path": str(path), "format": "onnx", "opset": opset, "image_size": list(size),
            "dynamic_batch": dynamic_batch, "tpa_folded": fold, "rel_l2": None, "max_abs": None, "check_batches": [],
            "seconds": round(seconds, 3), "torch": torch.__version__, "onnxruntime": None,
        }
        staged = tmpdir / path.name
        set_metadata(proto, _metadata(export_config, "fp32", None, fold))
        save_proto(proto, staged, path.name + ".data")
        if check:
            result.update(_check_staged(proto, staged, module, export_config, _check_batches(dynamic_batch, batch),
                                        tolerance, threads, path, fold))
        result["bytes"] = sum(f.stat().st_size for f in tmpdir.iterdir())
    log.debug("exported %s in %.1f s", path, seconds)
    return result


def _export_inputs(model, image_size, opset, check: bool) -> tuple[torch.nn.Module, ModelConfig, tuple[int, int], int]:
    """The model (loaded when a path), its config, the export size and opset, all checked."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(config, ModelConfig):
        raise ConfigError(f"export_onnx needs a SegDINO model (with a ModelConfig), got {type(model).__name__}")
    size = _export_size(image_size, config)
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET:
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("checking the export needs 'onnxruntime': pip install onnxruntime (or check=False)") from None
    return model, config, size, opset


def _check_staged(proto, staged: Path, module: torch.nn.Module, export_config: ModelConfig, batches: list[int],
                  tolerance: float, threads: int | None, path: Path, fold: bool) -> dict[str, Any]:
    """Run the staged file against ``module``; raise above ``tolerance``, else record the check in the file."""
    import onnx
    import onnxruntime

    session = ort_session(staged, threads)
    checked = compare_with_torch(session, module, tuple(export_config.image_size), batches)
    del session
    if not checked["rel_l2"] <= tolerance:
        raise ExportError(
            f"the export to {path} disagrees with PyTorch: relative L2 error {checked['rel_l2']:.3g} "
            f"> {tolerance:g} (max abs {checked['max_abs']:.3g}); no file written"
        )
    # Record the check in the file itself (metadata only: the graph is the one just checked).
    set_metadata(proto, _metadata(export_config, "fp32", {
        "rel_l2": checked["rel_l2"], "max_abs": checked["max_abs"], "batches": checked["batches"],
        "onnxruntime": onnxruntime.__version__}, fold))
    # Only the graph file is rewritten: saving moved large weights out of ``proto`` into the
    # data file beside it, which stays as it is and is still referenced.
    staged.unlink()
    onnx.save_model(proto, str(staged))
    return {"rel_l2": checked["rel_l2"], "max_abs": checked["max_abs"], "check_batches": checked["batches"],
            "onnxruntime": onnxruntime.__version__}
