"""Reading masks as label images (docs/FORMATS.md, "Masks and labels").

Binary task (``num_classes=1``): a pixel is foreground when its grey value is above the
threshold (127 for 8-bit masks). Masks whose values are all 0 or 1 are read as such; masks of more
than 8 bits compare against the threshold scaled to their bit depth (10, 12, 14 or 16 bits, the
smallest that holds their largest value, as images are scaled); float masks in [0, 1] against
threshold / 255. RGB masks are converted to grey first. JPEG masks are always thresholded:
compression noise makes a 0/1 reading meaningless there. Several masks of one image are united.

Multi-class task (``num_classes=K >= 2``): masks are index images with values 0..K-1; any other
value is a :class:`DataError` naming the file.

Transparency: in a mask with a varying alpha channel, transparent pixels (alpha <= 127) are
background, so that a label drawn on a transparent layer reads as drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from .imageio import bit_depth_scale, load_image

DEFAULT_THRESHOLD = 127


def _paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise DataError("no mask file given")
    return out


def _palette_values(img: Image.Image) -> np.ndarray:
    """A palette ('P') image as grey values when every used colour is grey, else as indices.

    A GIF or PNG saved through a palette usually holds grey levels; a coloured palette is the
    mark of an index image (PASCAL VOC style), where the index is the label and the colour only
    a display aid.
    """
    idx = np.asarray(img)
    pal = img.getpalette() or []
    pal = np.asarray(pal, dtype=np.uint8).reshape(-1, 3) if pal else np.zeros((0, 3), np.uint8)
    used = np.unique(idx)
    if used.size and used.max() < len(pal):
        colours = pal[used]
        if np.all(colours[:, 0] == colours[:, 1]) and np.all(colours[:, 1] == colours[:, 2]):
            lut = np.zeros(256, dtype=np.uint8)
            lut[: len(pal)] = pal[:, 0]
            return lut[idx]
    return idx.astype(np.uint8)


def _apply_alpha(values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if alpha.min() == alpha.max():  # constant alpha carries no information
        return values
    out = values.copy()
    out[alpha <= 127] = 0
    return out


def mask_values(img: Image.Image, path: Path | str = "<image>") -> np.ndarray:
    """A loaded PIL mask -> (H, W) array of its raw values (grey levels or indices).

    The dtype follows the file: uint8 for 1/8-bit and palette images, uint16 or int32 for
    16/32-bit integer images, float32 for float images. Colour masks whose three channels are
    equal give that channel; other colour masks give their grey conversion (ITU-R 601 luma).
    """
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode == "P":
        return _palette_values(img)
    if mode == "PA":
        arr = np.asarray(img)
        return _apply_alpha(_palette_values(_drop_alpha(img)), arr[..., 1])
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
        return arr if arr.dtype in (np.uint16, np.int32) else arr.astype(np.int32)
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode == "LA":
        arr = np.asarray(img)
        return _apply_alpha(arr[..., 0].copy(), arr[..., 1])
    if mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(img)
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            grey = rgb[..., 0].copy()
        else:
            grey = np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)
        if mode == "RGBA":
            grey = _apply_alpha(grey, arr[..., 3])
        return grey
    try:
        return np.asarray(img.convert("L"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read mask of image mode {mode} ({e})") from None


def _drop_alpha(img: Image.Image) -> Image.Image:
    """A 'PA' image as a 'P' image with the same palette."""
    p = Image.fromarray(np.asarray(img)[..., 0], mode="P")
    pal = img.getpalette()
    if pal:
        p.putpalette(pal)
    return p


class MaskFile(NamedTuple):
    """One decoded mask file: raw values (see :func:`mask_values`), format and PIL mode."""

    values: np.ndarray
    format: str
    mode: str


def read_mask_file(path: str | os.PathLike) -> MaskFile:
    """Read one mask file's raw values, with its format ("PNG", "JPEG", ...) and PIL mode.

    Raises:
        DataError: the file is missing, unreadable, truncated, not an image format we read or
            larger than the image size limit (the message names it); see
            :func:`segdino.data.imageio.load_image`.
    """
    path = Path(path)
    img, _ = load_image(path, "mask")
    return MaskFile(mask_values(img, path), img.format or "?", img.mode)


def foreground_rule(vmax: float, floating: bool, threshold: int = DEFAULT_THRESHOLD,
                    lossy: bool = False) -> tuple[str, float]:
    """The binary rule for a mask whose largest value is ``vmax``: ``("==", 1)`` or ``(">", cut)``.

    The one rule that reading (:func:`binarize`) and ``data check`` both apply. Values all in
    {0, 1} are read as such (not for a lossy JPEG). Otherwise ``threshold`` is on the 8-bit scale
    and is scaled like the image reader scales grey levels: float masks in [0, 1] compare against
    threshold / 255, and integer values above 255 against the threshold scaled to the smallest of
    10, 12, 14 and 16 bits that holds ``vmax`` (a 12-bit mask of 0/4095 reads as drawn).
    """
    if floating and vmax <= 1.0:
        return ">", threshold / 255.0
    if vmax <= 1 and not lossy:
        return "==", 1.0
    if vmax <= 255:
        return ">", float(threshold)
    return ">", threshold * bit_depth_scale(vmax) / 255.0


def binarize(values: np.ndarray, threshold: int = DEFAULT_THRESHOLD, lossy: bool = False) -> np.ndarray:
    """Raw mask values (H, W) -> bool foreground (H, W) by :func:`foreground_rule`."""
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    floating = bool(np.issubdtype(values.dtype, np.floating))
    vmax = float(np.nanmax(values)) if floating else float(values.max())
    op, cut = foreground_rule(vmax, floating, threshold, lossy)
    return values == cut if op == "==" else values > cut


def no_foreground_message(threshold: int) -> str:
    """What ``data check``, ``train`` and ``evaluate`` say of a binary dataset whose masks are all empty."""
    return (f"every mask is empty under the binary rule (foreground = value > {threshold}, 0/1 masks as such, "
            "colour masks by their grey level): a wrong --mask-threshold, or masks drawn in a colour "
            "darker than the threshold?")


def require_foreground(mask_sets: Iterable[Sequence[str | os.PathLike]], where: str | os.PathLike,
                       threshold: int = DEFAULT_THRESHOLD) -> None:
    """Refuse a binary dataset in which no mask has a foreground pixel (``data check``'s rule).

    ``mask_sets`` holds the mask file(s) of each image. Masks are read until one has foreground,
    so a usable dataset costs one mask read; an all-empty one (which would score Dice 1 for an
    empty prediction) costs one pass.

    Raises:
        DataError: naming ``where`` and saying why. Unreadable masks are passed over here.
    """
    seen = 0
    for files in mask_sets:
        try:
            found = read_mask(files, 1, threshold).any()
        except DataError:
            continue  # a bad file is the reader's to report (or to skip, under a skip policy)
        if found:
            return
        seen += 1
    if seen:
        raise DataError(f"{where}: {no_foreground_message(threshold)}")


def to_labels(values: np.ndarray, num_classes: int, path: Path | str = "<mask>") -> np.ndarray:
    """Raw index-mask values (H, W) -> uint8 labels (H, W) for a K-class task, K = ``num_classes``.

    Raises:
        DataError: a value is not an integer in 0..K-1 (the message names the file and values).
    """
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"{path}: an index mask needs whole-number values 0..{num_classes - 1}, "
                            "found fractional values")
    found = np.unique(values)
    bad = found[(found < 0) | (found >= num_classes)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        hint = ""
        if set(found.tolist()) <= {0, 255}:
            hint = " (values 0/255 look like a binary mask: use num_classes=1)"
        elif found.size > 2 * num_classes + 8:
            hint = " (many grey levels: a lossy or greyscale mask, not an index image)"
        raise DataError(f"{path}: mask values {shown} do not fit num_classes={num_classes} "
                        f"(expected class ids 0..{num_classes - 1}){hint}")
    return values.astype(np.uint8)


# Largest value of a lossless integer mask that reads as an index image rather than a grey mask.
INDEX_MAX = 63


def index_like(values_max: float, integral: bool, lossy: bool) -> bool:
    """Whether a mask whose largest value is ``values_max`` looks like an index image (2..63).

    Such a mask fits neither binary rule (0/1, or grey above the threshold): reading it as
    binary would turn label 1 into foreground in one file and background in another.
    """
    return integral and not lossy and 2 <= values_max <= INDEX_MAX


def labels_from_values(values: np.ndarray, num_classes: int, threshold: int, path: Path | str,
                       lossy: bool = False) -> np.ndarray:
    """Raw values of one mask file -> (H, W) uint8 labels for the task.

    Raises:
        DataError: values that do not fit the task, e.g. an index mask (values 0..K-1, K >= 3)
            read for a binary task, or values >= K for a K-class task.
    """
    if num_classes == 1:
        if values.size and values.dtype.kind in "iu":
            top = int(values.max())
            if index_like(top, True, lossy):
                raise DataError(f"{path}: mask values 0..{top} look like an index mask, not a binary one "
                                f"(0/1, or grey above {threshold}); use num_classes={top + 1}")
        return binarize(values, threshold, lossy=lossy).astype(np.uint8)
    return to_labels(values, num_classes, path)


def read_mask(paths: str | os.PathLike | Sequence[str | os.PathLike], num_classes: int = 1,
              threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """Read the mask file(s) of one image as (H, W) uint8 labels.

    Args:
        paths: one mask file, or several masks of the same image (binary task: united).
        num_classes: 1 for binary (labels 0/1), K >= 2 for index masks (labels 0..K-1).
        threshold: grey level above which a binary mask pixel is foreground (8-bit scale).

    Raises:
        DataError: unreadable file, values that do not fit the task, masks of one image with
            different sizes, or several masks for a multi-class task; the message names the file.
    """
    files = _paths(paths)
    if num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes > 1 and len(files) > 1:
        raise DataError(f"{files[0]}: {len(files)} masks for one image ({', '.join(p.name for p in files)}); "
                        "several masks are united only for a binary task (num_classes=1)")
    out: np.ndarray | None = None
    for p in files:
        values, fmt, _ = read_mask_file(p)
        labels = labels_from_values(values, num_classes, threshold, p, lossy=fmt == "JPEG")
        if out is None:
            out = labels
        elif out.shape != labels.shape:
            raise DataError(f"{p}: mask size {labels.shape[1]}x{labels.shape[0]} differs from "
                            f"{files[0].name} ({out.shape[1]}x{out.shape[0]}), masks of the same image")
        else:
            np.maximum(out, labels, out=out)
    return out
