"""Shared pictures of the report tests: a 2D image with four predictions of one square."""

import numpy as np
import pytest


def square(shape, top, left, size, value=1):
    m = np.zeros(shape, dtype=np.uint8)
    m[top : top + size, left : left + size] = value
    return m


@pytest.fixture
def cases_2d():
    shape = (32, 40)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    gt = square(shape, 8, 8, 12)
    return {
        "perfect": (image, gt, gt.copy()),
        "shifted": (image, gt, square(shape, 8, 11, 12)),
        "half": (image, gt, square(shape, 8, 8, 6)),
        "missed": (image, gt, np.zeros(shape, np.uint8)),
    }
