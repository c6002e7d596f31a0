"""NIfTI (``.nii``, ``.nii.gz``) through nibabel: headers, reading with damage diagnosis, writing.

A header is checked against the file before any voxel memory is allocated; the affine read is
nibabel's (sform, else qform), RAS+ as NIfTI defines it (:mod:`segdino.volumes.volume`).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import atomic_path
from .volume import DEFLATE_MAX_RATIO, Volume, _channel_of, _nibabel, _storable, is_nifti_path


def nifti_header_info(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a NIfTI file from its header alone (no voxel data decoded)."""
    nib = _nibabel()
    path = Path(path)
    try:
        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:  # nibabel raises many types for broken headers
        raise DataError(f"{path}: cannot read NIfTI header ({type(e).__name__}: {e})") from None


def _damage(path: Path) -> str | None:
    """Why a NIfTI file cannot be read, when the cause is a cut or corrupt file; else None."""
    if str(path).lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        except EOFError:
            return "truncated: the compressed stream ends early"
        except (gzip.BadGzipFile, zlib.error) as e:
            return f"corrupt compressed data ({e})"
        except OSError as e:
            return f"unreadable ({e})"
    elif path.stat().st_size < 348:
        return f"truncated: {path.stat().st_size} bytes, shorter than a NIfTI header"
    return None


def _check_claimed_data(path: Path, header) -> None:
    """Refuse, before anything is allocated, voxel data the file cannot hold or we cannot use.

    The header alone decides how much memory reading takes; a damaged or forged header (a few
    bytes changed) could otherwise ask for gigabytes from a file of a few hundred bytes.
    """
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {dtype} is not supported; expected grey values (integers or floats)")
    shape = tuple(int(s) for s in header.get_data_shape())
    if any(s < 0 for s in shape):
        raise DataError(f"{path}: the header's dimensions {shape} are negative; the file is corrupt")
    needed = int(header.get_data_offset()) + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if str(path).lower().endswith(".gz"):
        if needed > size * DEFLATE_MAX_RATIO:
            raise DataError(
                f"{path}: cannot read NIfTI: the header claims {needed:,} bytes of data ({shape}, {dtype}), more than "
                f"a gzip file of {size:,} bytes can hold; the file is truncated or corrupt"
            )
    elif needed > size:
        raise DataError(
            f"{path}: cannot read NIfTI (truncated: the header claims {needed:,} bytes ({shape}, {dtype}), "
            f"the file has {size:,})"
        )


def read_nifti(path: str | os.PathLike, channel: int | None = None) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file (scaling applied; integer data keeps its type)."""
    nib = _nibabel()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        img = nib.load(str(path), mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
        _check_claimed_data(path, img.header)
        # dataobj applies scl_slope/scl_inter; without scaling the stored dtype is kept, so
        # label maps stay integer and round trips are exact.
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except DataError:
        raise
    except Exception as e:  # EOFError, zlib.error, OSError (short read), nibabel's ImageFileError, ...
        why = _damage(path) or f"{type(e).__name__}: {e}".replace("\n", " ")
        raise DataError(f"{path}: cannot read NIfTI ({why})") from None
    data = _channel_of(data, channel, path)
    return Volume(np.asarray(data), affine, path, {"format": "nifti"})


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array with its 4x4 RAS+ affine as NIfTI-1, atomically.

    ``.nii.gz`` is gzip-compressed; the affine is stored as both sform and qform (code 1,
    scanner) so any reader finds the same geometry. The file appears whole or not at all.
    """
    nib = _nibabel()
    path = Path(path)
    if not is_nifti_path(path):
        raise DataError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    array = _storable(array)
    if array.ndim != 3:
        raise DataError(f"{path}: write_nifti expects a 3D array, got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    data = img.to_bytes()
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
