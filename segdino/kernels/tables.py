"""Fixed tables (interpolation matrices) kept on the device, built once per size, device and dtype.

Built per call, a table is a chain of small kernels; built with numpy inside a compiled region, it
is a host computation plus a host-to-device copy, which also makes CUDA graphs skip the whole
graph. So a table is built once outside any compiled region (the fast path runs one eager call per
input size first) and handed to the compiled code as a fixed-address input, which CUDA graphs read
in place instead of copying it in on every replay. Inside a compiled region a table that is not
there yet is traced from device-side operations, never from the host.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

_TABLES: dict[str, torch.Tensor] = {}


def device_table(name: str, host: Callable[[], np.ndarray], on_device: Callable[[], torch.Tensor],
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed table on ``device`` in ``dtype``, cached under ``name`` (which names its contents).

    ``host()`` gives the table as a numpy array (used outside compiled regions, where a tracing
    exporter records it as a constant); ``on_device()`` the same numbers as a tensor built on
    ``device`` (used only while ``torch.compile`` traces a size not cached yet). Cached tables are
    ordinary tensors (not inference tensors), so they serve training as well.
    """
    key = f"{name}|{device}|{dtype}"
    table = _TABLES.get(key)
    if table is not None:
        return table
    if torch.compiler.is_compiling():
        return on_device().to(dtype)
    with torch.inference_mode(False), torch.no_grad():
        table = torch.from_numpy(host()).to(device, dtype)
    if table.is_cuda:  # CUDA graphs then read it in place
        torch._dynamo.mark_static_address(table)
    _TABLES[key] = table
    return table


def clear_tables() -> None:
    """Forget every cached table (they are rebuilt on next use)."""
    _TABLES.clear()
