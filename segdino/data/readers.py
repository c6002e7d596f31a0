"""One reader-writer protocol for images and volumes: a path in, ``(array, Geometry)`` out.

Every file format the package reads is a :class:`Format` in one registry, chosen by the path's
suffix (or, for a folder, by a format that reads folders: a DICOM series). A reader returns the
array and its :class:`~segdino.data.geometry.Geometry`, so code above this layer (evaluation,
prediction, checks) handles an image and a volume the same way:

- 2D images (PNG, JPEG, BMP, TIFF, GIF, WebP): ``(H, W, 3)`` uint8 RGB, or with ``label=True``
  the mask's raw values ``(H, W)``; spacing 1, identity orientation. Written as PNG.
- volumes (NIfTI, MetaImage, NRRD, DICOM series; registered by :mod:`segdino.volumes.plugin`
  when first needed): ``(I, J, K)`` with their RAS+ affine (:mod:`segdino.volumes.io`).
- NumPy ``.npy`` arrays of 2 or 3 dimensions, as stored (no pickled objects); a ``.npy`` file
  carries no geometry, so it reads with spacing 1 and the identity orientation.

docs/FORMATS.md lists the formats and what each one keeps.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write_bytes
from .geometry import Geometry
from .imageio import IMAGE_SUFFIXES, image_info, read_image
from .masks import read_mask_file

# Modules that register more formats (and layouts, split rules and checks) through a
# ``register()`` function, imported when a path matches no format yet.
PLUGINS = ("segdino.volumes.plugin",)

Reader = Callable[[Path, "int | None", bool], "tuple[np.ndarray, Geometry]"]
HeaderReader = Callable[[Path], Geometry]
Writer = Callable[[Path, np.ndarray, Geometry], Path]


@dataclass(frozen=True)
class Format:
    """A file format: the suffixes it claims and how it is read and written.

    Attributes:
        name: short name for messages (``image``, ``volume``).
        suffixes: lower-case file endings (``.png``, ``.nii.gz``); the longest match wins.
        read: ``(path, channel, label) -> (array, geometry)``; ``channel`` picks one channel of
            a multi-channel file, ``label`` asks for class ids rather than intensities.
        header: ``path -> geometry``, from the header where the format has one.
        write: ``(path, array, geometry) -> path``, atomic; None for a read-only format.
        folders: whether the format also reads a folder (a DICOM series).
    """

    name: str
    suffixes: tuple[str, ...]
    read: Reader
    header: HeaderReader
    write: Writer | None = None
    folders: bool = False


FORMATS: list[Format] = []
_plugins_loaded = False


def register_format(fmt: Format) -> None:
    """Add ``fmt`` to the registry, replacing a format of the same name (registering twice is harmless)."""
    FORMATS[:] = [f for f in FORMATS if f.name != fmt.name] + [fmt]


def load_plugins() -> None:
    """Import the modules of :data:`PLUGINS` and call their ``register()`` (once; a plugin that is
    not installed is skipped): their layouts, split rules, checkers and formats join the registries."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # the optional part is not installed: its formats stay unknown
            continue
        module.register()


def _match(path: Path) -> Format | None:
    if path.is_dir():
        return next((f for f in FORMATS if f.folders), None)
    low = path.name.lower()
    best = None
    for f in FORMATS:
        for suf in f.suffixes:
            if low.endswith(suf) and (best is None or len(suf) > best[0]):
                best = (len(suf), f)
    return best[1] if best else None


def format_of(path: str | os.PathLike) -> Format:
    """The :class:`Format` that reads ``path`` (a file by its suffix, a folder by a folder format).

    Raises:
        DataError: no registered format claims it; the message lists the suffixes known.
    """
    path = Path(path)
    fmt = _match(path)
    if fmt is None:
        load_plugins()
        fmt = _match(path)
    if fmt is None:
        known = ", ".join(sorted({s for f in FORMATS for s in f.suffixes}))
        what = "a folder no format reads" if path.is_dir() else "not a file format SegDINO reads"
        raise DataError(f"{path}: {what}; expected one of {known}")
    return fmt


def read_array(path: str | os.PathLike, channel: int | None = None, label: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read an image or a volume as ``(array, geometry)``; see the module docstring for shapes."""
    return format_of(path).read(Path(path), channel, label)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """The :class:`Geometry` of an image or a volume, from its header where the format allows."""
    return format_of(path).header(Path(path))


def write_array(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> Path:
    """Write ``array`` on ``geometry`` in the format ``path``'s suffix names, atomically."""
    fmt = format_of(path)
    if fmt.write is None:
        raise DataError(f"{path}: {fmt.name} files are read, not written")
    return fmt.write(Path(path), array, geometry)


# --- 2D images ------------------------------------------------------------------------------------


def _read_image(path: Path, channel: int | None, label: bool) -> tuple[np.ndarray, Geometry]:
    if channel not in (None, 0):
        raise DataError(f"{path}: --channel {channel} asked for, but an image file is read as one RGB channel")
    array = read_mask_file(path).values if label else read_image(path)
    return array, Geometry.of_image(array.shape)


def _image_header(path: Path) -> Geometry:
    return Geometry.of_image(image_info(path)[0])


def _write_png(path: Path, array: np.ndarray, geometry: Geometry) -> Path:
    from PIL import Image

    if not path.name.lower().endswith(".png"):
        raise DataError(f"{path}: images are written as PNG; name the file .png")
    a = np.asarray(array)
    if a.ndim not in (2, 3) or tuple(a.shape[:2]) != geometry.shape[:2]:
        raise DataError(f"{path}: an image of shape {a.shape} does not fit the grid {geometry.shape}")
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise DataError(f"{path}: values {a.min()}..{a.max()} do not fit an 8-bit PNG")
        a = a.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), DataError)
    return path


def _read_npy(path: Path, channel: int | None, label: bool) -> tuple[np.ndarray, Geometry]:
    array = _load_npy(path, mmap=False)
    if array.ndim == 4:
        if channel is None or not 0 <= channel < array.shape[3]:
            raise DataError(f"{path}: a 4D array of {array.shape[3]} channels; pick one with --channel "
                            f"0..{array.shape[3] - 1}")
        array = array[..., channel]
    elif channel not in (None, 0):
        raise DataError(f"{path}: --channel {channel} asked for, but the array has one channel")
    return array, Geometry(array.shape, np.eye(4))


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:  # not .npy, truncated, or holding pickled objects
        raise DataError(f"{path}: cannot read a NumPy array ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3, 4) or array.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a 2D or 3D array of numbers, found {getattr(array, 'shape', '?')} "
                        f"{getattr(array, 'dtype', type(array).__name__)}")
    return array


def _npy_header(path: Path) -> Geometry:
    shape = _load_npy(path, mmap=True).shape
    return Geometry(shape[:3], np.eye(4))


def _write_npy(path: Path, array: np.ndarray, geometry: Geometry) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue(), DataError)
    return path


register_format(Format("numpy", (".npy",), _read_npy, _npy_header, _write_npy))
register_format(Format("image", tuple(sorted(IMAGE_SUFFIXES)), _read_image, _image_header, _write_png))


__all__ = ["FORMATS", "Format", "PLUGINS", "format_of", "load_plugins", "read_array", "read_geometry", "register_format",
           "write_array"]
