"""Reading 2D images as RGB uint8 arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

# Decompression-bomb guard: refuse images beyond this many pixels (about 16k x 16k).
MAX_PIXELS = 268_435_456
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
        return np.round(arr * 255).astype(np.uint8)
    hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)


def image_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB (alpha dropped, 16-bit scaled)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = _to_uint8(np.asarray(img))
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image file as (H, W, 3) uint8 RGB; :class:`DataError` names the file on failure."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return image_to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def as_rgb_array(image) -> np.ndarray:
    """Path, PIL image or array -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image_to_rgb(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise DataError(f"an image array must be HxW or HxWxC with C in 1, 3, 4; got shape {arr.shape}")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise DataError(f"an image array must not be empty; got shape {arr.shape}")
        return np.ascontiguousarray(_to_uint8(arr))
    raise DataError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")


# What the dataset layouts treat as image files; everything else in an image folder is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".gif", ".bmp", ".tif", ".tiff", ".webp"})

# Errors PIL raises on files it cannot parse or decode (a truncated file is an OSError).
PIL_READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    """A visible regular file whose suffix is one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def image_info(path: str | os.PathLike, decode: bool = False) -> tuple[tuple[int, int], str, str]:
    """Size ``(H, W)``, PIL mode and format of an image file, from its header.

    With ``decode=True`` the pixel data is decoded too, so that a truncated or corrupt file is
    caught; JPEGs are then decoded at 1/8 scale (the whole bitstream is still read, the
    inverse DCT is cheaper), which is what makes checking thousands of photos quick.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            mode, fmt = img.mode, img.format or "?"
            if decode:
                if fmt == "JPEG":
                    img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
                img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except PIL_READ_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    return (h, w), mode, fmt
