"""Exported SegDINO ONNX files: their format, and running and checking them with ONNX Runtime.

An exported file (written by :func:`segdino.export.export_onnx`) holds the graph of the whole
model (normalised ``(B, 3, H, W)`` float32 in, ``(B, num_classes, H, W)`` float32 logits out;
``H, W`` fixed at export, the batch dynamic by default) and, in its ``metadata_props``,
everything needed to use it without PyTorch:

- ``format`` = ``segdino-onnx`` and ``format_version``;
- ``segdino_config``: the full :class:`~segdino.config.ModelConfig` as JSON (its ``image_size``
  is the exported size);
- ``preprocessing``: JSON with the input size, the [0, 1] scaling, mean/std, the resize rule, the
  output activation and how to turn logits into a mask;
- ``precision`` (``fp32``, or ``int8`` for quantised files), ``tpa`` (``folded`` or ``direct``)
  and ``export_check`` (the relative L2 error measured when the file was written).

:func:`load_onnx_model` opens such a file as an :class:`OnnxModel`, which stands in for our model
on CPU wherever logits are needed. ``onnx`` and ``onnxruntime`` are optional and imported only
inside the functions that use them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .checkpoint import config_from_metadata
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, DataError
from .memory import check_memory

FORMAT_NAME = "segdino-onnx"
FORMAT_VERSION = "1"
CONFIG_KEY = "segdino_config"
PREPROCESSING_KEY = "preprocessing"
PRECISION_KEY = "precision"
CHECK_KEY = "export_check"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(CheckpointError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


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
