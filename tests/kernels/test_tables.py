"""Fixed tables are built once per size, device and dtype, outside compiled regions, and traced from
device-side operations (never from numpy) inside one."""

import numpy as np
import torch

from segdino.kernels import tables
from segdino.kernels.fold import _shift_taps, shifted_interpolation, upsample_conv3x3_cl
from segdino.kernels.resize import bilinear_matrix, bilinear_matrix_tensor, resize_bilinear_matmul


def test_device_rule_is_the_numpy_rule():
    for n_in, n_out in [(8, 16), (5, 13), (16, 128), (7, 3), (1, 4), (3, 3)]:
        assert np.array_equal(bilinear_matrix(n_in, n_out), bilinear_matrix_tensor(n_in, n_out).numpy())
    for n, f in [(4, 2), (16, 8), (3, 4)]:
        assert np.array_equal(shifted_interpolation(n, f), _shift_taps(torch, bilinear_matrix_tensor(n, f * n)).numpy())


def test_tables_cached_once_and_usable_for_training(monkeypatch):
    monkeypatch.setattr(tables, "_TABLES", {})
    x = torch.randn(1, 4, 3, 5)
    with torch.inference_mode():
        resize_bilinear_matmul(x, (6, 10))
    assert sorted(tables._TABLES) == ["bilinear:3:6|cpu|torch.float32", "bilinear:5:10|cpu|torch.float32"]
    cached = tables._TABLES["bilinear:3:6|cpu|torch.float32"]
    assert not cached.is_inference()
    xg = x.clone().requires_grad_()
    resize_bilinear_matmul(xg, (6, 10)).sum().backward()  # the cached table works outside inference mode
    assert xg.grad is not None and tables._TABLES["bilinear:3:6|cpu|torch.float32"] is cached


def test_compiled_region_reads_cached_tables_or_builds_them_on_the_device(monkeypatch):
    monkeypatch.setattr(tables, "_TABLES", {})
    x = torch.randn(1, 4, 3, 5).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 4, 3, 3)

    def f(t):
        return resize_bilinear_matmul(t, (6, 10)) + upsample_conv3x3_cl(t, w, 2)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    ref = f(x)  # eager: builds and caches the tables
    n_tables = len(tables._TABLES)
    torch._dynamo.reset()
    y = torch.compile(f, backend=backend, fullgraph=True)(x)
    inputs = [n.target for n in graphs[-1].graph.nodes if n.op == "placeholder"]
    assert sum("TABLES" in t for t in inputs) == n_tables and torch.allclose(y, ref)
    # Not cached yet: traced as device-side operations (no numpy), and nothing is cached while tracing.
    monkeypatch.setattr(tables, "_TABLES", {})
    torch._dynamo.reset()
    y = torch.compile(f, backend=backend, fullgraph=True)(x)
    code = graphs[-1].code
    assert torch.allclose(y, ref, atol=1e-6) and "numpy" not in code and "from_numpy" not in code
    assert "arange" in code and tables._TABLES == {}
    torch._dynamo.reset()
