"""Shared data and helpers of the training tests: learnable discs, tiny volumes, a tiny config."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from segdino.data import synthetic as syn
from segdino.train_config import resolve_config


def write_discs(root: Path, n: int = 32, size: int = 32, seed: int = 0) -> Path:
    """Bright discs of varied radius on a noisy darker background: a quickly learnable task."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    names = []
    for i in range(n):
        r = rng.uniform(size * 0.15, size * 0.3)
        cy, cx = rng.uniform(r, size - r, 2)
        fg = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.normal(70, 20, (size, size, 3))
        img[fg] += 110
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"c{i:02d}.png")
        Image.fromarray((fg * 255).astype(np.uint8)).save(root / "masks" / f"c{i:02d}.png")
        names.append(f"c{i:02d}")
    splits = {"train": names[: n * 3 // 4], "val": names[n * 3 // 4 :], "test": []}
    (root / "splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    return write_discs(tmp_path_factory.mktemp("discs") / "data")


@pytest.fixture(scope="module")
def tiny_volumes(tmp_path_factory):
    """6 train, 1 val, 2 test volumes of (8, 32, 32) voxels with anisotropic spacing."""
    pytest.importorskip("nibabel")
    root = tmp_path_factory.mktemp("volumes")
    return syn.write_volume_dataset(root / "data", 6, 1, 2, shape=(8, 32, 32), seed=3, spacing=(3.0, 1.2, 1.2))


def config(data, out, **kw):
    opts = dict(data=str(data), out=str(out), backbone="vitt16", decoder_dim=16, image_size=32, epochs=2,
                batch_size=8, num_workers=0, device="cpu", quiet=True, lr=2e-3, warmup_epochs=0.0,
                save_every=0.0)
    opts.update(kw)
    return resolve_config(opts)


def log_rows(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
