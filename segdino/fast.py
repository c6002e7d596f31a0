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


# torch.compile's options for the training step (segdino.training.Trainer): the forward and backward
# as CUDA graphs. Measured on one H200 (benchmarks/train_profile.py, fused decoder, batch 32, 256 px):
# 23.5 ms per step against 30.2 ms in the default mode, the same loss (docs/RESULTS.md, Speed).
TRAIN_COMPILE: dict = {"mode": "reduce-overhead"}


def train_compile_options(world: int) -> dict:
    """:data:`TRAIN_COMPILE` for a run of ``world`` processes: under DDP the step's gradients are
    all-reduced by hooks inside the backward, which CUDA graphs would replay without the other
    ranks, so several processes compile in the default mode."""
    if world > 1 and TRAIN_COMPILE.get("mode") == "reduce-overhead":
        return {k: v for k, v in TRAIN_COMPILE.items() if k != "mode"}
    return dict(TRAIN_COMPILE)


#: Compiled versions one code object may keep. Every FastModel compiles the same
#: ``_CastIn.forward``, once per model and input shape; at dynamo's default of 8 the ninth (an
#: ensemble's fifth model at two shapes, the benchmark's paths at two batch sizes and the Dice
#: pass) would run eagerly, with only a warning to say so.
COMPILED_ENTRIES = 64


def _allow_compiled_entries(n: int = COMPILED_ENTRIES) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name, n) < n:
        setattr(config, name, n)


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


class _CastIn(nn.Module):
    """Casts the input to the model's dtype and memory layout, then runs the model.

    Compiled together with the model, so that the cast and the layout change are part of the
    captured graph instead of separate launches before it.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.model, self.dtype, self.channels_last = model, dtype, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class FastModel(nn.Module):
    """Wraps a model for inference: casts inputs, runs the fast module, returns float32 logits.

    ``config`` and ``num_classes`` are those of the wrapped model, so it can stand in for it.
    ``fused``: run the decoder on :mod:`segdino.kernels` (:func:`segdino.fused.fuse_model`; a dict
    passes its options); False keeps the model's own modules (the "plain model" of the benchmark).

    Per call, outside the compiled graph, only the input's copy into the graph and the float32
    copy of the output remain; the first call at each input shape runs the model once eagerly,
    which builds the fixed tables (RoPE, interpolation matrices) on the device ahead of compiling.
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 compile_mode: str | None, fused: bool | dict = False, cudnn_benchmark: bool = False,
                 fp8: bool = False):
        super().__init__()
        self.config = model.config
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.fused, self.cudnn_benchmark = bool(fused), cudnn_benchmark
        if fused:
            from .fused import fuse_model

            m = fuse_model(model, **(fused if isinstance(fused, dict) else {}))
        else:
            m = copy.deepcopy(model)
        m = m.eval().to(device=device, dtype=dtype)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        for p in m.parameters():
            p.requires_grad_(False)
        self.fp8 = False
        if fp8:
            from .kernels.fp8 import fp8_backbone, fp8_supported

            if fp8_supported(device):
                self.fp8 = fp8_backbone(m) > 0
            else:
                log.warning("FP8 products need a CUDA GPU of compute capability 8.9 or newer; "
                            "the backbone stays in %s", str(dtype).replace("torch.", ""))
        self.inner = m
        # Not a registered submodule: it holds ``inner`` again, whose parameters must appear once.
        object.__setattr__(self, "_run", _CastIn(m, dtype, channels_last))
        self.compiled = None
        self.compile_mode = compile_mode
        if compile_mode:
            _allow_compiled_entries()
            self.compiled = torch.compile(self._run, mode=compile_mode, dynamic=False, fullgraph=False)
        self._shapes: set[tuple[int, ...]] = set()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _prepare(self, x: torch.Tensor) -> None:
        """First call at this input shape: RoPE table primed, then one eager call to build the tables."""
        from .fused import prime_rope

        prime_rope(self.inner, tuple(x.shape[-2:]), self.device)
        if self.compiled is not None:
            self._run(x)
        self._shapes.add(tuple(x.shape))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        with _cudnn_autotune(self.cudnn_benchmark):
            if tuple(x.shape) not in self._shapes:
                self._prepare(x)
            fn = self.compiled if self.compiled is not None else self._run
            try:
                y = fn(x)
            except Exception as e:  # compilation can fail on unusual setups: fall back to eager
                if fn is self._run:
                    raise
                log.warning("torch.compile failed (%s); using the eager model", type(e).__name__)
                self.compiled = None
                y = self._run(x)
        # A copy in any case: a CUDA graph's output is overwritten by its next replay.
        return y.to(torch.float32, copy=True)


def fast_model(model: nn.Module, device: str | torch.device = "cuda", compile_mode: str | None = "auto",
               dtype: torch.dtype | None = None, fused: bool | dict | None = None, fp8: bool = False) -> nn.Module:
    """The model prepared for fast inference on ``device``.

    ``compile_mode``: ``auto`` (``reduce-overhead``, i.e. Triton kernels plus CUDA graphs, on CUDA
    when Triton is there; max-autotune gained 2% at batch 32 for minutes of tuning),
    a ``torch.compile`` mode, or None for eager. ``fused``: the fused decoder (default: on CUDA);
    a dict gives it options (:func:`segdino.fused.fuse_model`, e.g. ``{"pointwise": "linear"}``).
    ``fp8``: the backbone's linear layers as row-scaled FP8 products
    (:mod:`segdino.kernels.fp8`) where the GPU has FP8 tensor cores; elsewhere they stay bf16.
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
                     fused=True if fused is None else fused, cudnn_benchmark=True, fp8=fp8)


def plain_compiled_model(model: nn.Module, device: str | torch.device = "cuda") -> nn.Module:
    """The peer any user has: the model's own modules, bf16, channels-last, cuDNN autotuning and
    ``torch.compile(mode="reduce-overhead")`` (eager where compiling is not available)."""
    device = torch.device(device)
    mode = "reduce-overhead" if compile_available(device) else None
    return FastModel(model, device, torch.bfloat16, channels_last=True, compile_mode=mode, fused=False,
                     cudnn_benchmark=True)
