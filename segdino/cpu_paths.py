"""The CPU paths the benchmark compares: the same model run by eager PyTorch, with TPA folded,
by ONNX Runtime (fp32 and int8), in bf16 channels-last, and compiled.

Each path is a callable ``(B, 3, H, W) -> (B, K, H, W)`` float32 logits built from one model, so
every path computes with the same weights.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .export import export_onnx, fold_tpa
from .onnx_runtime import load_onnx_model
from .quantize import quantize_onnx
from .timing import cpu_flags

CPU_PATHS = ("eager", "folded", "onnx", "onnx-int8", "bf16", "compile", "compile-bf16")
DEFAULT_CPU_PATHS = ("eager", "folded", "onnx", "onnx-int8", "bf16")
PATH_NAMES = {
    "eager": "eager fp32",
    "folded": "torch fp32 TPA folded",
    "onnx": "onnxruntime fp32",
    "onnx-int8": "onnxruntime int8",
    "bf16": "torch bf16 channels-last",
    "compile": "torch.compile fp32",
    "compile-bf16": "torch.compile bf16",
}
PATH_PRECISION = {"eager": "fp32", "folded": "fp32", "onnx": "fp32", "onnx-int8": "int8", "bf16": "bf16", "compile": "fp32",
                  "compile-bf16": "bf16"}


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matrix work natively (AVX512-BF16 or AMX), where bf16 pays off."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


class Bf16CpuModel(torch.nn.Module):
    """The model in bf16 with channels-last activations (oneDNN's fastest CPU layout); float32 logits out.

    Reduced precision: judge it by Dice, not by bitwise agreement.
    """

    def __init__(self, model: torch.nn.Module, compile_mode: str | None = None):
        super().__init__()
        self.config = model.config
        m = copy.deepcopy(model).to("cpu", torch.bfloat16).eval().to(memory_format=torch.channels_last)
        for p in m.parameters():
            p.requires_grad_(False)
        self.inner = m
        self.fn = torch.compile(m, dynamic=False) if compile_mode else m

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cpu", torch.bfloat16).contiguous(memory_format=torch.channels_last)
        return self.fn(x).float().contiguous()


def _compiled_fp32(model: torch.nn.Module, compile_mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    m = copy.deepcopy(model).to("cpu").eval().to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.requires_grad_(False)
    kwargs = {} if compile_mode == "default" else {"mode": compile_mode}
    compiled = torch.compile(m, dynamic=False, **kwargs)

    def run(x: torch.Tensor) -> torch.Tensor:
        return compiled(x.contiguous(memory_format=torch.channels_last)).contiguous()

    return run


def build_cpu_paths(model: torch.nn.Module, paths: Sequence[str], workdir: Path, image_size: tuple[int, int],
                    threads: int, calibration: Sequence[np.ndarray] | None = None,
                    compile_mode: str = "default") -> tuple[dict[str, Callable], list[str]]:
    """Callables ``(B, 3, H, W) -> (B, K, H, W)`` float32 logits for each requested CPU path.

    ONNX files are written to ``workdir``. Returns the paths by display name, and notes about
    paths that could not be built (the benchmark goes on without them).
    """
    built: dict[str, Callable] = {}
    notes: list[str] = []
    onnx_file = workdir / "model.onnx"
    folded = fold_tpa(model)
    for key in paths:
        name = PATH_NAMES[key]
        try:
            if key == "eager":
                built[name] = model
            elif key == "folded":
                built[name] = folded
            elif key == "onnx" or key == "onnx-int8":
                if not onnx_file.exists():
                    export_onnx(model, onnx_file, image_size=image_size, check=False)
                if key == "onnx":
                    built[name] = load_onnx_model(onnx_file, threads=threads)
                else:
                    int8_file = workdir / "model.int8.onnx"
                    quantize_onnx(onnx_file, int8_file, calibration=calibration)
                    built[name] = load_onnx_model(int8_file, threads=threads)
            elif key == "bf16":
                built[name] = Bf16CpuModel(folded)
            elif key == "compile":
                built[name] = _compiled_fp32(folded, compile_mode)
            elif key == "compile-bf16":
                built[name] = Bf16CpuModel(folded, compile_mode=compile_mode)
        except (ImportError, ConfigError) as e:
            notes.append(f"{name}: not run ({e})")
    return built, notes
