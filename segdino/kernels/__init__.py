"""Fused GPU kernels of the fast path, each with a pure-PyTorch fallback computing the same function.

The kernels are Triton programs registered as PyTorch custom operators (``torch.library``), so
``torch.compile`` treats them as single opaque calls and CUDA graphs capture them. Each operator
dispatches on its inputs: the Triton kernel where Triton and a CUDA tensor are there and the
shape is one the kernel covers, else the PyTorch formulation. Both are checked against the
reference modules by the tests (the kernels under Triton's CPU interpreter).

This package imports nothing else of ``segdino``: it is a low layer the model code can use.
"""

from __future__ import annotations

from .dispatch import kernels_enabled, triton_available
from .resize import bilinear_matrix, resize_bilinear, upsample_add

__all__ = ["bilinear_matrix", "kernels_enabled", "resize_bilinear", "triton_available", "upsample_add"]
