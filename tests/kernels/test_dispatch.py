"""Where the kernels run: the fallbacks engage where a kernel cannot, and the Triton kernels pass
their tests under Triton's CPU interpreter (in a child pytest, see conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segdino.kernels import dispatch
from segdino.kernels.sad import fused_block_covers
from tests.kernels.conftest import INTERPRETED


@pytest.mark.skipif(INTERPRETED, reason="this is the child")
def test_kernels_under_the_triton_interpreter():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SEGDINO_NO_KERNELS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(Path(__file__).parent), "-k", "triton_"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "16 passed" in proc.stdout, proc.stdout[-2000:]


def test_kernels_fall_back_where_they_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 16, 4, 4)
    assert not dispatch.kernels_enabled(x)  # a CPU tensor, no interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.kernels_enabled(x) == dispatch.triton_available()
    monkeypatch.setenv("SEGDINO_NO_KERNELS", "1")
    assert not dispatch.kernels_enabled(x)
    monkeypatch.delenv("SEGDINO_NO_KERNELS")
    monkeypatch.setattr(dispatch, "_TRITON", False)  # a machine without Triton
    assert not dispatch.kernels_enabled(x)
    # Shapes the fused block does not cover.
    cl = torch.channels_last
    assert fused_block_covers(torch.randn(1, 32, 4, 4).contiguous(memory_format=cl), 32, 32)
    assert not fused_block_covers(torch.randn(1, 32, 4, 4), 32, 32)  # not channels-last
    assert not fused_block_covers(torch.randn(1, 24, 4, 4).contiguous(memory_format=cl), 24, 24)  # not 2^k
    assert not fused_block_covers(torch.randn(1, 32, 4, 4).double().contiguous(memory_format=cl), 32, 32)

