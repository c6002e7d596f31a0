"""Fixtures and inputs shared by the prediction tests (the Predictor and the predict command)."""

import numpy as np
import pytest

import segdino
from tests.conftest import tiny


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def multi():
    return tiny(num_classes=3, seed=1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    segdino.save_model(model, path)
    return path


def noise(h, w, c=3, seed=0):
    shape = (h, w, c) if c else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
