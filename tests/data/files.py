"""Small image/mask files for the data tests, written into a test's own folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

S = 32  # side of the test images


def disc(size=S, r=8, cx=None, cy=None, value=255) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cx = size // 2 if cx is None else cx
    cy = size // 2 if cy is None else cy
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).astype(np.uint8) * value


def photo(seed=0, size=S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def save(arr: np.ndarray, path: Path, mode: str | None = None, **kw) -> Path:
    """Write ``arr``; PIL picks the mode from the dtype (uint16 -> I;16, float32 -> F, bool -> 1),
    and ``mode``, when given, is asserted on the file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    if mode is not None:
        with Image.open(path) as img:
            assert img.mode == mode, (path, img.mode)
    return path


def make_images_dataset(root: Path, n=10, mask_name="{}.png", image_ext=".png", mask_dir="masks",
                        names=None, empty=()) -> Path:
    names = names or [f"img{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        save(photo(i), root / "images" / f"{name}{image_ext}")
        save(disc(r=4 + i % 5) * (0 if name in empty else 1), root / mask_dir / mask_name.format(name))
    return root
