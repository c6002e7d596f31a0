"""Where the Triton kernels may run: a CUDA tensor with Triton installed, or Triton's CPU interpreter.

``SEGDINO_NO_KERNELS=1`` turns every kernel off (the PyTorch formulations run instead), which is how
a suspected kernel problem is ruled out without changing code.
"""

from __future__ import annotations

import importlib.util
import os

import torch


# Looked up once, without importing Triton (slow), and as a plain constant so that torch.compile
# traces the dispatch decisions without graph breaks.
_TRITON = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when Triton is installed."""
    return _TRITON


def interpreting() -> bool:
    """True under Triton's CPU interpreter (``TRITON_INTERPRET=1``), where kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def kernels_enabled(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels can run on ``tensors``: all on CUDA (or all on CPU while interpreting)."""
    if os.environ.get("SEGDINO_NO_KERNELS") or not triton_available():
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)
