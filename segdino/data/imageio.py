"""Reading 2D images as RGB uint8 arrays.

Image files are untrusted input. Only the formats a dataset holds are decoded (PNG, JPEG, GIF,
BMP, TIFF, WebP; recognised from the content, not the name), and an image whose header claims
more than :data:`MAX_PIXELS` pixels is refused before its pixels are decoded, so that a small file
that inflates to gigabytes (a decompression bomb) costs no memory. Any file that cannot be read
raises :class:`~segdino.errors.DataError` naming it.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

# Decompression-bomb guard: images with more pixels than this are refused from their header
# (64 Mpx, e.g. 8192 x 8192; decoded as RGB that is 192 MiB). The environment variable
# SEGDINO_MAX_IMAGE_PIXELS raises or lowers it; the attribute can be set from Python too.
DEFAULT_MAX_PIXELS = 8192 * 8192


def _max_pixels_from_env() -> int:
    text = os.environ.get("SEGDINO_MAX_IMAGE_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        return DEFAULT_MAX_PIXELS
    return value if value > 0 else DEFAULT_MAX_PIXELS


MAX_PIXELS = _max_pixels_from_env()
# Pillow's own guard is left at twice ours (it only warns between one and two times its limit) so
# that our check, which names the file and the limit, is the one that speaks.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS

# Formats decoded (Pillow's names). MPO is how Pillow names many camera JPEGs. Everything else
# Pillow can open (EPS through Ghostscript, exotic formats) is refused as "not an image".
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "DIB", "TIFF", "WEBP")

# Errors Pillow raises on files it cannot parse or decode (a truncated file is an OSError); its
# plugins also let struct, index and arithmetic errors through on malformed headers.
PIL_READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError,
                   struct.error, ZeroDivisionError, Image.DecompressionBombError)


def _formats() -> tuple[str, ...]:
    """:data:`IMAGE_FORMATS` whose Pillow plugins are available (all plugins registered first)."""
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _too_large(path, w: int, h: int) -> DataError:
    return DataError(
        f"{path}: image of {w}x{h} = {w * h:,} pixels is larger than the limit of {MAX_PIXELS:,} pixels, "
        "refused before decoding (a guard against decompression bombs); to read it, raise the limit with "
        "the environment variable SEGDINO_MAX_IMAGE_PIXELS"
    )


def _header_size(path: Path, formats: tuple[str, ...]) -> tuple[int, int] | None:
    """(W, H) from an image's header through the format plugin itself, which (unlike
    ``Image.open``) applies no decompression-bomb check, or None when no plugin reads it."""
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in formats:
                factory, accept = Image.OPEN[fmt]
                if accept and not accept(prefix):
                    continue
                fp.seek(0)
                try:
                    img = factory(fp, str(path))
                except PIL_READ_ERRORS:
                    continue
                return img.size
    except OSError:
        return None
    return None


def _bomb(path: Path, formats: tuple[str, ...]) -> DataError:
    """The too-large error for an image whose header Pillow's own guard refused before ours saw it."""
    size = _header_size(path, formats)
    if size is not None:
        return _too_large(path, *size)
    return DataError(f"{path}: the image is larger than the limit of {MAX_PIXELS:,} pixels, refused before decoding; "
                     "to read it, raise the limit with the environment variable SEGDINO_MAX_IMAGE_PIXELS")


def load_image(path: str | os.PathLike, what: str = "image", reduce: int = 1) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image file, refusing unknown formats and oversized images from the header.

    Args:
        path: the file.
        what: "image" or "mask", for messages.
        reduce: decode JPEGs at 1/``reduce`` scale where the codec can (a quick integrity check:
            the whole bitstream is still read); other formats ignore it.

    An EXIF orientation (cameras store photos sideways and say so) is applied, to images and
    masks alike, so that a mask drawn on the photo as displayed pairs with it pixel for pixel.

    Returns:
        the decoded PIL image (file closed) and its size ``(H, W)`` as read (after orientation).

    Raises:
        DataError: missing, not one of :data:`IMAGE_FORMATS`, larger than :data:`MAX_PIXELS`,
            empty, truncated or corrupt; the message names the file.
    """
    path = Path(path)
    formats = _formats()
    try:
        with warnings.catch_warnings():
            # Pillow warns from half our limit's worth of its own; our check below reports sizes.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=formats) as img:
                w, h = img.size
                if w < 1 or h < 1:
                    raise DataError(f"{path}: the {what} is empty ({w}x{h} pixels)")
                if w * h > MAX_PIXELS:
                    raise _too_large(path, w, h)
                if reduce > 1 and img.format == "JPEG":
                    img.draft(img.mode, (max(1, w // reduce), max(1, h // reduce)))
                img.load()
                turn = _orientation_of(img, loaded=True)
                if turn:
                    fmt = img.format
                    img = ImageOps.exif_transpose(img)
                    img.format = fmt
                    if turn >= 5:
                        h, w = w, h
                return img, (h, w)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not an {what} file") from None
    except UnidentifiedImageError:
        raise _unidentified(path, what) from None
    except Image.DecompressionBombError:
        raise _bomb(path, formats) from None
    except PIL_READ_ERRORS as e:
        raise DataError(f"{path}: cannot read {what}: the file is truncated or corrupt ({_reason(e)})") from None


# EXIF orientations 2..8 say how a camera's stored pixels must be turned or mirrored to show the
# picture as taken; masks are drawn on the picture as shown, so images and masks are both read as
# shown. 5..8 swap width and height.
def _orientation_of(img: Image.Image, loaded: bool = False) -> int:
    """The EXIF orientation (2..8) of an open image that must be applied, else 0.

    Header only: Pillow looks for a PNG's EXIF after its pixel data by decoding them, so a PNG
    whose header holds no EXIF chunk counts as unturned rather than being decoded here.
    """
    if img.format == "PNG" and "exif" not in img.info and not loaded:
        return 0
    try:
        value = img.getexif().get(0x0112)
    except PIL_READ_ERRORS:
        return 0
    return int(value) if isinstance(value, int) and 2 <= value <= 8 else 0


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation (2..8) a file's pixels are turned by on reading, 0 when none; header only."""
    try:
        with Image.open(path, formats=_formats()) as img:
            return _orientation_of(img)
    except (FileNotFoundError, IsADirectoryError) + PIL_READ_ERRORS:
        return 0


def _unidentified(path, what: str) -> DataError:
    return DataError(f"{path}: cannot read {what}: not a PNG, JPEG, GIF, BMP, TIFF or WebP file "
                     "(the file may be corrupt, or another format under an image's name)")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def bit_depth_scale(vmax: float) -> float:
    """The full-scale value of the smallest common bit depth (8, 10, 12, 14, 16, 32) holding ``vmax``."""
    for bits in (8, 10, 12, 14, 16):
        if vmax <= 2**bits - 1:
            return float(2**bits - 1)
    return float(vmax)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any numeric (H, W[, C]) array -> uint8 of the same shape.

    uint8 is kept; bool becomes 0/255; values in [0, 1] are scaled by 255; other non-negative
    values are scaled by the full range of the smallest bit depth that holds their maximum
    (8, 10, 12, 14 or 16 bits), so 12-bit data stored in a 16-bit file is not dark; data with
    negative values is stretched from its minimum to its maximum. NaN becomes 0.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"an image array must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not arr.size:
        return arr.astype(np.uint8)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(arr * 255.0).astype(np.uint8)
    if lo < 0.0:
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    else:
        scaled = arr / bit_depth_scale(hi) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def image_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB.

    Alpha is dropped (colours kept as stored); CMYK, YCbCr, palette and 1-bit images are converted;
    16-bit, 32-bit and float greyscale are scaled to 8 bits as :func:`_to_uint8` says.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        arr = _to_uint8(np.asarray(img))
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise DataError(f"cannot convert an image of mode {img.mode} to RGB ({e})") from None
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image file as (H, W, 3) uint8 RGB; :class:`DataError` names the file on failure.

    See :func:`load_image` for the formats and the size limit, :func:`image_to_rgb` for modes.
    """
    img, _ = load_image(path, "image")
    try:
        return image_to_rgb(img)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def as_rgb_array(image) -> np.ndarray:
    """Path, PIL image or array -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image_to_rgb(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise DataError(f"an image array must be HxW or HxWxC with C in 1, 3, 4; got shape {image.shape}")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise DataError(f"an image array must not be empty; got shape {image.shape}")
        if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
            raise DataError(f"an image array of {arr.shape[1]}x{arr.shape[0]} pixels is larger than the limit of "
                            f"{MAX_PIXELS:,} pixels (SEGDINO_MAX_IMAGE_PIXELS raises it)")
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        arr = _to_uint8(arr)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return np.ascontiguousarray(arr)
    raise DataError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")


# What the dataset layouts treat as image files; everything else in an image folder is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_file(path: Path) -> bool:
    """A visible regular file whose suffix is one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def image_info(path: str | os.PathLike, decode: bool = False) -> tuple[tuple[int, int], str, str]:
    """Size ``(H, W)``, PIL mode and format of an image file, from its header.

    With ``decode=True`` the pixel data is decoded too, so that a truncated or corrupt file is
    caught; JPEGs are then decoded at 1/8 scale (the whole bitstream is still read, the
    inverse DCT is cheaper), which is what makes checking thousands of photos quick.
    The size is the one reading gives, after the EXIF orientation (see :func:`load_image`;
    without ``decode``, a PNG's EXIF is seen only where it precedes the pixel data).
    Oversized images and unknown formats raise :class:`DataError` as :func:`load_image` says.
    """
    path = Path(path)
    if decode:
        img, size = load_image(path, "image", reduce=8)
        return size, img.mode, img.format or "?"
    try:
        with Image.open(path, formats=_formats()) as img:
            w, h = img.size
            mode, fmt = img.mode, img.format or "?"
            if _orientation_of(img) >= 5:
                w, h = h, w  # the size as read: turned by the EXIF orientation
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not an image file") from None
    except UnidentifiedImageError:
        raise _unidentified(path, "image") from None
    except Image.DecompressionBombError:
        raise _bomb(path, _formats()) from None
    except PIL_READ_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({_reason(e)})") from None
    if w * h > MAX_PIXELS:
        raise _too_large(path, w, h)
    return (h, w), mode, fmt
