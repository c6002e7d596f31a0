"""Static int8 quantisation of an exported SegDINO ONNX file, for faster CPU inference.

The quantised file keeps the export's metadata (see :mod:`segdino.onnx_runtime`) with
``precision`` = ``int8`` and a ``quantization`` entry saying how it was made. ``onnx`` and
``onnxruntime`` are needed, imported only inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .data.dataset import SegmentationDataset
from .errors import CheckpointError, ConfigError, DataError
from .export import atomic_onnx, quiet_export, save_proto, set_metadata
from .onnx_runtime import (CHECK_KEY, CONFIG_KEY, FORMAT_NAME, INPUT_NAME, PRECISION_KEY, ExportError, ort_session,
                           read_onnx_metadata, rel_l2)
from .ops import preprocess

def calibration_inputs(data: str | os.PathLike | None, config: ModelConfig, samples: int = 16,
                       seed: int = 0) -> list[np.ndarray]:
    """Normalised ``(1, 3, H, W)`` inputs for int8 calibration, ``(H, W)`` = ``config.image_size``.

    ``samples`` training images of ``data`` (seeded choice), preprocessed as at inference; without
    ``data``, four random normal inputs (fit for timing, not for a file meant for patients).
    """
    if data is not None:
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
    samples = _calibration_arrays(calibration, config)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    t0 = time.perf_counter()
    with atomic_onnx(dst) as tmpdir:
        pre, raw = tmpdir / "pre.onnx", tmpdir / "int8.onnx"
        try:
            with quiet_export(), contextlib.redirect_stdout(io.StringIO()):
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
        set_metadata(proto, meta)
        staged = tmpdir / dst.name
        save_proto(proto, staged, dst.name + ".data")
        ref = ort_session(src).run(None, {INPUT_NAME: samples[0]})[0]
        out = ort_session(staged).run(None, {INPUT_NAME: samples[0]})[0]
        nbytes = sum(f.stat().st_size for f in tmpdir.iterdir())
    return {"path": str(dst), "bytes": nbytes, "calibration_samples": len(samples), "op_types": list(op_types),
            "rel_l2_vs_fp32": rel_l2(out, ref), "seconds": round(time.perf_counter() - t0, 3)}


def _calibration_arrays(calibration: Sequence[np.ndarray | torch.Tensor] | None, config: ModelConfig) -> list[np.ndarray]:
    """Contiguous float32 arrays of the calibration inputs (default four random normal ones)."""
    if calibration is None:
        g = torch.Generator().manual_seed(0)
        calibration = [torch.randn(1, 3, *config.image_size, generator=g) for _ in range(4)]
    samples = [np.ascontiguousarray(torch.as_tensor(c).detach().cpu().float().numpy()) for c in calibration]
    if not samples:
        raise ConfigError("int8 calibration needs at least one input")
    return samples
