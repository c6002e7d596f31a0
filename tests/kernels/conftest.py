"""Shared by the kernel tests: sizes, a relative error, and the switch to Triton's CPU interpreter.

Triton kernels run under Triton's CPU interpreter at tiny sizes. The interpreter must be on before
Triton is first imported (Triton's own helpers are decorated then), so the ``test_triton_*`` tests
run in a child pytest started with ``TRITON_INTERPRET=1`` (see test_dispatch.py).
"""

import os

import pytest

SIZES = [(4, 4, 8, 8), (3, 5, 12, 20), (5, 7, 11, 13), (8, 6, 4, 3), (2, 2, 16, 16)]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.fixture
def interpret(monkeypatch):
    if not INTERPRETED:
        pytest.skip("runs in the child started by test_kernels_under_the_triton_interpreter")
    pytest.importorskip("triton")
    monkeypatch.delenv("SEGDINO_NO_KERNELS", raising=False)

