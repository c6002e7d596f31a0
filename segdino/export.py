"""ONNX export, checked against PyTorch, and an ONNX Runtime model that stands in for ours on CPU.

An exported file holds the graph of the whole model (normalised ``(B, 3, H, W)`` float32 in,
``(B, num_classes, H, W)`` float32 logits out; ``H, W`` fixed at export, the batch dynamic by
default) and, in its ``metadata_props``, everything needed to use it without PyTorch:

- ``format`` = ``segdino-onnx`` and ``format_version``;
- ``segdino_config``: the full :class:`~segdino.config.ModelConfig` as JSON (its ``image_size``
  is the exported size);
- ``preprocessing``: JSON with the input size, the [0, 1] scaling, mean/std, the resize rule, the
  output activation and how to turn logits into a mask;
- ``precision`` (``fp32``, or ``int8`` for quantised files), ``tpa`` (``folded`` or ``direct``,
  see :func:`fold_tpa`) and ``export_check`` (the relative L2 error measured when the file was
  written).

``onnx`` is needed to export, ``onnxruntime`` to check and to run; both are imported only here,
inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, DataError
from .memory import check_memory
from .kernels.fold import shifted_interpolation
from .kernels.resize import bilinear_matrix

log = logging.getLogger("segdino.export")

FORMAT_NAME = "segdino-onnx"
FORMAT_VERSION = "1"
CONFIG_KEY = "segdino_config"
PREPROCESSING_KEY = "preprocessing"
PRECISION_KEY = "precision"
CHECK_KEY = "export_check"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# LayerNormalization became a standard op in 17; ONNX Runtime fuses it and GELU from there on.
DEFAULT_OPSET = 17
MIN_OPSET = 14
DEFAULT_TOLERANCE = 1e-4
# Protobuf cannot hold one message over 2 GiB; larger models keep their weights in FILE.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportError(CheckpointError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


# --------------------------------------------------------------------------------------------
# Helpers


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


def rel_l2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64 (``b`` is the reference)."""
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


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
def _quiet_export():
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
    with _quiet_export(), torch.no_grad():
        try:
            # The TorchScript exporter writes one self-contained file whose graph ONNX Runtime
            # optimises well; the dynamo exporter is the fallback where it is gone.
            torch.onnx.export(module, (example,), str(file), dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(module, (example,), str(file), **kwargs)


def _metadata(config: ModelConfig, precision: str, check: dict | None, folded: bool) -> dict[str, str]:
    from . import __version__

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


def _set_metadata(proto, meta: dict[str, str]) -> None:
    from . import __version__

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


def _save_proto(proto, file: Path, data_name: str) -> None:
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
def _atomic_onnx(path: Path):
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


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session tuned for inference: all graph optimisations, one thread per physical core."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or physical_cores())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare_with_torch(session, module: torch.nn.Module, image_size: tuple[int, int], batches: Sequence[int],
                       seed: int = 0) -> dict[str, Any]:
    """Run ``session`` and ``module`` on the same random normalised inputs.

    Returns ``rel_l2`` (the worst relative L2 error over ``batches``), ``max_abs`` and ``batches``.
    Raises :class:`ExportError` when an output is not finite or has the wrong shape.
    """
    g = torch.Generator().manual_seed(seed)
    worst, max_abs = 0.0, 0.0
    name = session.get_inputs()[0].name
    for b in batches:
        x = torch.randn(b, 3, *image_size, generator=g)
        with torch.inference_mode():
            ref = module(x).float()
        out = session.run(None, {name: x.numpy()})[0]
        if tuple(out.shape) != tuple(ref.shape):
            raise ExportError(f"ONNX Runtime returned shape {tuple(out.shape)} for batch {b}, PyTorch {tuple(ref.shape)}")
        if not np.isfinite(out).all():
            raise ExportError(f"ONNX Runtime returned non-finite logits for batch {b}")
        worst = max(worst, rel_l2(out, ref))
        max_abs = max(max_abs, float(np.abs(out - ref.numpy()).max()))
    return {"rel_l2": worst, "max_abs": max_abs, "batches": list(batches)}


# --------------------------------------------------------------------------------------------
# Exact TPA folding: the same function with ~25 GFLOP fewer per 256x256 image


def interpolation_matrix(n: int, factor: int) -> np.ndarray:
    """(factor*n, n) float64 matrix of PyTorch's bilinear resize by ``factor`` (align_corners=False).

    See :func:`segdino.kernels.resize.bilinear_matrix`, which holds the rule for any sizes.
    """
    return bilinear_matrix(n, factor * n)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """``conv3x3(bilinear_resize(x, factor), weight)`` (padding 1, no bias), computed at low resolution.

    Both operations are linear and the resize is separable, so
    ``y = sum_{dy,dx} S_dy A (W[:, :, dy, dx] x) B^T S_dx^T`` with ``A``, ``B`` the row and column
    interpolation matrices and ``S`` the conv's shifts: nine 1x1 convs on the small map, then one
    matrix product per axis. For TPA's x8 level at 256x256 and D=256 that is ~0.9 GFLOP instead of
    19.3, and the resized map is never stored.

    Args:
        x: (B, D, h, w). weight: (O, D, 3, 3).

    Returns:
        (B, O, factor*h, factor*w), equal to the direct computation up to float rounding.
    """
    b, d, h, w = x.shape
    o = weight.shape[0]
    rows = torch.from_numpy(shifted_interpolation(int(h), factor)).to(x.device, x.dtype)  # (fh, 3h)
    cols = torch.from_numpy(shifted_interpolation(int(w), factor).T.copy()).to(x.device, x.dtype)  # (3w, fw)
    # q[:, dy, dx] = W[:, :, dy, dx] x
    q = F.conv2d(x, weight.permute(2, 3, 0, 1).reshape(9 * o, d, 1, 1)).view(b, 3, 3, o, h, w)
    # columns: r[:, dy] = sum_dx q[:, dy, dx] B_dx^T   -> (B, 3, O, h, fw)
    r = torch.matmul(q.permute(0, 1, 3, 4, 2, 5).reshape(b, 3, o, h, 3 * w), cols)
    # rows: y = sum_dy A_dy r[:, dy]   -> (B, O, fh, fw)
    return torch.matmul(rows, r.permute(0, 2, 1, 3, 4).reshape(b, o, 3 * h, factor * w))


def _foldable(conv: torch.nn.Module) -> bool:
    return (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class FoldedTokenPyramidAdaptation(torch.nn.Module):
    """TPA with each "resize by 8/4/2, then 3x3 conv" computed by :func:`upsample_conv3x3`.

    Holds the original projections and refine convs (same parameters, same state-dict keys), so
    it computes the same function as :class:`segdino.tpa.TokenPyramidAdaptation`.
    """

    def __init__(self, tpa: torch.nn.Module):
        super().__init__()
        from .tpa import SCALE_FACTORS

        self.resample = tpa.resample
        self.projections = tpa.projections
        self.refine = tpa.refine
        self.factors = SCALE_FACTORS

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        pyramid = []
        for proj, conv, factor, x in zip(self.projections, self.refine, self.factors, maps):
            x = proj(x)
            if self.resample and factor != 1 and _foldable(conv):
                y = upsample_conv3x3(x, conv.weight, factor)
                if conv.bias is not None:
                    y = y + conv.bias.view(1, -1, 1, 1)
            else:
                if self.resample and factor != 1:
                    h, w = x.shape[-2:]
                    x = F.interpolate(x, size=(h * factor, w * factor), mode="bilinear", align_corners=False)
                y = conv(x)
            pyramid.append(y)
        return pyramid


def fold_tpa(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a SegDINO model whose TPA runs folded (:class:`FoldedTokenPyramidAdaptation`).

    Same function and parameters; on CPU about 1.4x faster in PyTorch and 1.35x in ONNX Runtime
    at 256x256 (ViT-S/16, D=256), since the x8 level's 3x3 conv alone is 44% of the model's FLOPs.
    """
    from .tpa import TokenPyramidAdaptation

    folded = copy.deepcopy(model)
    if isinstance(getattr(folded, "tpa", None), TokenPyramidAdaptation):
        folded.tpa = FoldedTokenPyramidAdaptation(folded.tpa)
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
    if isinstance(model, (str, os.PathLike)):
        from .checkpoint import load_model

        model = load_model(model)
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(config, ModelConfig):
        raise ConfigError(f"export_onnx needs a SegDINO model (with a ModelConfig), got {type(model).__name__}")
    size = _export_size(image_size, config)
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET:
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
    if check:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("checking the export needs 'onnxruntime': pip install onnxruntime (or check=False)") from None

    path = Path(path)
    export_config = dataclasses.replace(config, image_size=size)
    module = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    batch = 2 if dynamic_batch else 1
    example = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))

    t0 = time.perf_counter()
    with _atomic_onnx(path) as tmpdir:
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
        _set_metadata(proto, _metadata(export_config, "fp32", None, fold))
        _save_proto(proto, staged, path.name + ".data")
        if check:
            session = ort_session(staged, threads)
            checked = compare_with_torch(session, module, size, _check_batches(dynamic_batch, batch))
            del session
            if not checked["rel_l2"] <= tolerance:
                raise ExportError(
                    f"the export to {path} disagrees with PyTorch: relative L2 error {checked['rel_l2']:.3g} "
                    f"> {tolerance:g} (max abs {checked['max_abs']:.3g}); no file written"
                )
            result.update(rel_l2=checked["rel_l2"], max_abs=checked["max_abs"], check_batches=checked["batches"],
                          onnxruntime=onnxruntime.__version__)
            # Record the check in the file itself (metadata only: the graph is the one just checked).
            _set_metadata(proto, _metadata(export_config, "fp32", {
                "rel_l2": checked["rel_l2"], "max_abs": checked["max_abs"], "batches": checked["batches"],
                "onnxruntime": onnxruntime.__version__}, fold))
            # Only the graph file is rewritten: saving moved large weights out of ``proto`` into the
            # data file beside it, which stays as it is and is still referenced.
            staged.unlink()
            onnx.save_model(proto, str(staged))
        result["bytes"] = sum(f.stat().st_size for f in tmpdir.iterdir())
    log.debug("exported %s in %.1f s", path, seconds)
    return result


def calibration_inputs(data: str | os.PathLike | None, config: ModelConfig, samples: int = 16,
                       seed: int = 0) -> list[np.ndarray]:
    """Normalised ``(1, 3, H, W)`` inputs for int8 calibration, ``(H, W)`` = ``config.image_size``.

    ``samples`` training images of ``data`` (seeded choice), preprocessed as at inference; without
    ``data``, four random normal inputs (fit for timing, not for a file meant for patients).
    """
    if data is not None:
        from .data.dataset import SegmentationDataset
        from .inference import preprocess

        # Images only: calibration needs no masks, so their format does not matter here.
        ds = SegmentationDataset(data, split="train", num_classes=config.num_classes, image_size=None,
                                 allow_unpaired=True)
        if len(ds) == 0:
            raise DataError(f"{data}: the 'train' split is empty; int8 calibration needs training images")
        idx = np.random.default_rng(seed).permutation(len(ds))[:samples]
        return [preprocess(ds.native_image(int(i)), config)[None].numpy() for i in idx]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *config.image_size, generator=g).numpy() for _ in range(min(samples, 4))]


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Sequence[np.ndarray | torch.Tensor] | None = None,
    *,
    op_types: Sequence[str] = ("Conv", "MatMul"),
    per_channel: bool = True,
) -> dict[str, Any]:
    """Static int8 quantisation of an exported SegDINO file, for faster CPU inference.

    QDQ format: uint8 activations with scales calibrated (min/max) on ``calibration``, int8 weights
    (per output channel), for the ``op_types`` nodes; the rest stays fp32. Reduced precision:
    judge the result by Dice on real images (``segdino benchmark --model CKPT --data DIR``).

    Args:
        src: an fp32 file written by :func:`export_onnx`.
        dst: the int8 file to write (atomically; same metadata, ``precision`` = ``int8``).
        calibration: normalised ``(B, 3, H, W)`` inputs, ideally real images of the task; default
            four random normal ones, fit for timing only.

    Returns:
        ``path``, ``bytes``, ``calibration_samples``, ``op_types``, ``rel_l2_vs_fp32`` (on the first
        calibration input) and ``seconds``.
    """
    try:
        import onnx
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConfigError("int8 quantisation needs 'onnx' and 'onnxruntime': pip install onnx onnxruntime") from None
    src, dst = Path(src), Path(dst)
    meta = read_onnx_metadata(src)
    if meta.get("format") != FORMAT_NAME or CONFIG_KEY not in meta:
        raise CheckpointError(f"{src} is not a SegDINO ONNX export; quantise a file written by segdino export")
    if meta.get(PRECISION_KEY, "fp32") != "fp32":
        raise CheckpointError(f"{src} is already {meta[PRECISION_KEY]}; quantise the fp32 export")
    config = ModelConfig.from_json(meta[CONFIG_KEY])
    if calibration is None:
        g = torch.Generator().manual_seed(0)
        calibration = [torch.randn(1, 3, *config.image_size, generator=g) for _ in range(4)]
    samples = [np.ascontiguousarray(torch.as_tensor(c).detach().cpu().float().numpy()) for c in calibration]
    if not samples:
        raise ConfigError("int8 calibration needs at least one input")

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    t0 = time.perf_counter()
    with _atomic_onnx(dst) as tmpdir:
        pre, raw = tmpdir / "pre.onnx", tmpdir / "int8.onnx"
        try:
            with _quiet_export(), contextlib.redirect_stdout(io.StringIO()):
                # Shape inference and constant folding first, as ONNX Runtime recommends, so that
                # every Conv and MatMul is seen with known shapes.
                quant_pre_process(str(src), str(pre))
                quantize_static(str(pre), str(raw), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=list(op_types))
            proto = onnx.load(str(raw))
        except Exception as e:  # the quantiser raises many types; all mean "this file cannot be quantised"
            raise ExportError(f"int8 quantisation of {src} failed: {type(e).__name__}: {e}") from e
        for f in tmpdir.iterdir():
            f.unlink()
        quant = {"method": "static", "format": "QDQ", "activations": "uint8", "weights": "int8",
                 "per_channel": per_channel, "op_types": list(op_types), "calibration_samples": len(samples)}
        meta = {k: v for k, v in meta.items() if k != CHECK_KEY}
        meta.update({PRECISION_KEY: "int8", "quantization": json.dumps(quant, sort_keys=True)})
        _set_metadata(proto, meta)
        staged = tmpdir / dst.name
        _save_proto(proto, staged, dst.name + ".data")
        ref = ort_session(src).run(None, {INPUT_NAME: samples[0]})[0]
        out = ort_session(staged).run(None, {INPUT_NAME: samples[0]})[0]
        nbytes = sum(f.stat().st_size for f in tmpdir.iterdir())
    return {"path": str(dst), "bytes": nbytes, "calibration_samples": len(samples), "op_types": list(op_types),
            "rel_l2_vs_fp32": rel_l2(out, ref), "seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------------------------
# Running an exported file


class OnnxModel:
    """An exported SegDINO model run by ONNX Runtime on CPU, usable wherever a model's logits are.

    ``model(x)`` maps a normalised ``(B, 3, H, W)`` batch (torch tensor on any device, or numpy),
    ``(H, W)`` = ``config.image_size``, to ``(B, num_classes, H, W)`` float32 logits on CPU.
    ``config`` is the :class:`~segdino.config.ModelConfig` stored in the file.
    """

    training = False

    def __init__(self, session, config: ModelConfig, path: Path, metadata: dict[str, str], threads: int):
        self.session = session
        self.config = config
        self.path = path
        self.metadata = metadata
        self.threads = threads
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        batch = inp.shape[0]
        self.batch_size: int | None = batch if isinstance(batch, int) and batch > 0 else None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.config.image_size)

    @property
    def precision(self) -> str:
        return self.metadata.get(PRECISION_KEY, "fp32")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        if mode:
            raise ConfigError(f"{self.path} is an ONNX export: it runs inference only and cannot be trained")
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        """Returns itself: ONNX Runtime runs on CPU; inputs on another device are copied over."""
        return self

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) normalised float -> (B, num_classes, H, W) float32 CPU logits."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise DataError(f"model input must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"model input must be (batch, 3, height, width), got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise DataError(
                f"{self.path.name} was exported for {h}x{w} inputs, got {x.shape[-2]}x{x.shape[-1]}; "
                f"resize to {h}x{w} or export again with --image-size"
            )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        n = arr.shape[0]
        if n == 0:
            return torch.zeros(0, self.num_classes, *self.image_size)
        step = self.batch_size or n
        outs = []
        for start in range(0, n, step):
            chunk = arr[start : start + step]
            if chunk.shape[0] < step:  # a fixed-batch graph: pad the last chunk
                pad = np.zeros((step - chunk.shape[0],) + chunk.shape[1:], dtype=np.float32)
                y = self._run(np.concatenate([chunk, pad]))[: chunk.shape[0]]
            else:
                y = self._run(chunk)
            outs.append(y)
        y = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    forward = __call__

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as e:  # ONNX Runtime's own types: a failed allocation, a node that cannot run
            text = " ".join(str(e).split())
            raise CheckpointError(f"{self.path}: ONNX Runtime could not run the graph "
                                  f"({type(e).__name__}: {text[:300]})") from None

    def __repr__(self) -> str:
        c = self.config
        return (f"OnnxModel({self.path.name}: {c.backbone} D={c.decoder_dim} K={c.num_classes} "
                f"{c.image_size[0]}x{c.image_size[1]} {self.precision}, {self.threads} threads)")


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (read with ``onnx``, weights not loaded)."""
    import onnx

    p = Path(path)
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise CheckpointError(f"{p} is not a readable ONNX file ({type(e).__name__}: {e})") from None
    return {m.key: m.value for m in proto.metadata_props}


def load_onnx_model(path: str | os.PathLike, threads: int | None = None) -> OnnxModel:
    """Open an exported SegDINO ``.onnx`` file for CPU inference with ONNX Runtime.

    ``threads``: intra-op threads (default: the physical cores available).

    Raises:
        CheckpointError: no such file, not an ONNX file, an ONNX file without SegDINO metadata,
            or a graph that does not match its stored config (the message names the file).
        ConfigError: ``onnxruntime`` is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(f"running {p} needs onnxruntime: pip install onnxruntime") from None
    n_threads = int(threads or physical_cores())
    _check_graph_memory(p)
    try:
        session = ort_session(p, n_threads)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise CheckpointError(f"{p} is not a usable ONNX file ({type(e).__name__}: {str(e).strip()[:300]})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("format") != FORMAT_NAME or CONFIG_KEY not in meta:
        raise CheckpointError(
            f"{p} is an ONNX file but not a SegDINO export (no '{CONFIG_KEY}' metadata); "
            "export one with: segdino export --model CKPT --format onnx --out FILE"
        )
    from .checkpoint import config_from_metadata

    config = config_from_metadata(p, meta[CONFIG_KEY])  # checked field by field, errors name the file
    _check_graph(p, session, config)
    return OnnxModel(session, config, p, meta, n_threads)


def largest_tensor_bytes(path: str | os.PathLike) -> tuple[int, str]:
    """Bytes and name of the largest tensor an ONNX graph computes at batch 1, from its shapes alone.

    Shapes come from ONNX shape inference with constant propagation (so a ``ConstantOfShape``
    fed a constant shape has a size); symbolic dimensions count as 1; tensors whose shape stays
    unknown are not counted. Returns ``(0, "")`` when the graph cannot be analysed.
    """
    import onnx
    from onnx import helper, shape_inference

    try:
        proto = onnx.load(str(path), load_external_data=False)
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # a graph ONNX cannot analyse is left to ONNX Runtime's own checks
        return 0, ""
    best, name = 0, ""
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = info.type.tensor_type
        if not t.HasField("shape"):
            continue
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") else 1
        try:
            size = n * np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
        except Exception:
            size = n
        if size > best:
            best, name = size, info.name
    return best, name


def _check_graph_memory(path: Path) -> None:
    """Refuse, before ONNX Runtime allocates it, a graph whose single tensor exceeds the memory limit."""
    needed, name = largest_tensor_bytes(path)
    if needed:
        check_memory(needed, f"{path}: the graph's tensor {name[:60]!r}", CheckpointError)


def _check_graph(path: Path, session, config: ModelConfig) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise CheckpointError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    shape_in, shape_out = inputs[0].shape, outputs[0].shape
    h, w = config.image_size
    if len(shape_in) != 4 or shape_in[1] != 3 or list(shape_in[2:]) != [h, w]:
        raise CheckpointError(f"{path}: input shape {shape_in} does not match its config ((batch, 3, {h}, {w}))")
    channels = shape_out[1] if len(shape_out) == 4 else None
    if len(shape_out) != 4 or (isinstance(channels, int) and channels != config.num_classes):
        raise CheckpointError(
            f"{path}: output shape {shape_out} does not match its config (batch, {config.num_classes}, {h}, {w})"
        )
