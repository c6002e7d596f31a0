"""The fast inference path: the same function as the model, only faster.

On CUDA: the decoder rebuilt on fused pieces (:func:`segdino.fused.fuse_model`: TPA folded in
channels-last order, resizes as matrix products or one-pass kernels, RoPE tables cached),
bf16 weights and activations, channels-last memory layout, cuDNN autotuning for the fixed shapes,
and ``torch.compile`` (Inductor fuses what is left: normalisation, GELU, gain, residual adds), with
CUDA graphs (``reduce-overhead``) that remove launch gaps at small batches. Everything falls back
cleanly: without a GPU, or where compilation fails, the eager model runs; without Triton, the
reference modules.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os

import torch
from torch import nn

log = logging.getLogger("segdino.fast")


def compile_available(device: torch.device) -> bool:
    if os.environ.get("SEGDINO_NO_COMPILE"):
        return False
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return hasattr(torch, "compile")


@contextlib.contextmanager
def _cudnn_autotune(enabled: bool):
    """cuDNN picks the fastest algorithm per shape (the shapes are fixed here); restored afterwards."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


class FastModel(nn.Module):
    """Wraps a model for inference: casts inputs, runs the fast module, returns float32 logits.

    ``config`` and ``num_classes`` are those of the wrapped model, so it can stand in for it.
    ``fused``: run the decoder on :mod:`segdino.kernels` (:func:`segdino.fused.fuse_model`);
    False keeps the model's own modules (the "plain model" of the benchmark).
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 compile_mode: str | None, fused: bool = False, cudnn_benchmark: bool = False):
        super().__init__()
        self.config = model.config
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.fused, self.cudnn_benchmark = fused, cudnn_benchmark
        if fused:
            from .fused import fuse_model

            m = fuse_model(model)
        else:
            m = copy.deepcopy(model)
        m = m.eval().to(device=device, dtype=dtype)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        for p in m.parameters():
            p.requires_grad_(False)
        self.inner = m
        self.compiled = None
        self.compile_mode = compile_mode
        if compile_mode:
            self.compiled = torch.compile(m, mode=compile_mode, dynamic=False, fullgraph=False)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.fused:
            from .fused import prime_rope

            prime_rope(self.inner, tuple(x.shape[-2:]), self.device)
        fn = self.compiled if self.compiled is not None else self.inner
        with _cudnn_autotune(self.cudnn_benchmark):
            try:
                y = fn(x)
            except Exception as e:  # compilation can fail on unusual setups: fall back to eager
                if fn is self.inner:
                    raise
                log.warning("torch.compile failed (%s); using the eager model", type(e).__name__)
                self.compiled = None
                y = self.inner(x)
        return y.float().clone()


def fast_model(model: nn.Module, device: str | torch.device = "cuda", compile_mode: str | None = "auto",
               dtype: torch.dtype | None = None, fused: bool | None = None) -> nn.Module:
    """The model prepared for fast inference on ``device``.

    ``compile_mode``: ``auto`` (``reduce-overhead``, i.e. Triton kernels plus CUDA graphs, on CUDA
    when Triton is there; max-autotune gained 2% at batch 32 for minutes of tuning),
    a ``torch.compile`` mode, or None for eager. ``fused``: the fused decoder (default: on CUDA).
    On CPU the model is returned as it is (fp32), since bf16 matrix work is slow on most CPUs.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return model.to(device).eval()
    if compile_mode == "auto":
        compile_mode = "reduce-overhead" if compile_available(device) else None
    elif compile_mode and not compile_available(device):
        compile_mode = None
    return FastModel(model, device, dtype or torch.bfloat16, channels_last=True, compile_mode=compile_mode,
                     fused=True if fused is None else fused, cudnn_benchmark=True)


def plain_compiled_model(model: nn.Module, device: str | torch.device = "cuda") -> nn.Module:
    """The peer any user has: the model's own modules, bf16, channels-last, cuDNN autotuning and
    ``torch.compile(mode="reduce-overhead")`` (eager where compiling is not available)."""
    device = torch.device(device)
    mode = "reduce-overhead" if compile_available(device) else None
    return FastModel(model, device, torch.bfloat16, channels_last=True, compile_mode=mode, fused=False,
                     cudnn_benchmark=True)
