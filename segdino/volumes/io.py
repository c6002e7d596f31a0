"""Reading and writing volumes with their geometry: NIfTI, MetaImage (``.mha``, ``.mhd`` + raw),
NRRD (``.nrrd``, ``.nhdr`` + data file) and DICOM series.

:func:`read_volume` and :func:`write_volume` choose the format from the path; each format has its
module (:mod:`segdino.volumes.nifti`, :mod:`segdino.volumes.itk`, :mod:`segdino.volumes.dicom`)
and :mod:`segdino.volumes.volume` holds what they share: :class:`Volume`, the RAS+ world frame,
the suffixes. Every name of those modules that callers used from here stays importable here.
:func:`read_array` is the reader of the package-wide protocol (:mod:`segdino.data.readers`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..data.geometry import Geometry
from ..errors import DataError
from .dicom import dicom_series, read_dicom_series
from .itk import itk_header_info, read_itk, write_itk
from .nifti import nifti_header_info, read_nifti, write_nifti
from .volume import (
    ITK_SUFFIXES,
    LPS_TO_RAS,
    NIFTI_SUFFIXES,
    VOLUME_SUFFIXES,
    Volume,
    fill_nonfinite,
    grid_differences,
    is_itk_path,
    is_nifti_path,
    is_volume_path,
    prediction_ending,
    require_same_grid,
    strip_volume_suffix,
    volume_ending,
)

log = logging.getLogger(__name__)


def read_volume(path: str | os.PathLike, channel: int | None = None, label: bool = False) -> Volume:
    """Read a volume: a NIfTI, MetaImage or NRRD file, or a folder holding one DICOM series.

    Non-finite voxels (NaN, infinity) of an image are replaced as :func:`fill_nonfinite` says,
    here at read time for every command; their count is in ``meta["nonfinite"]`` and a warning
    names the file. A label volume (``label=True``) with non-finite values is refused.

    Args:
        path: the file (``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) or folder.
        channel: which channel of a 4D (multi-modal) or vector file to take; required when it
            has more than one.
        label: the file holds labels (class ids) rather than intensities.

    Returns:
        a :class:`Volume` with ``array`` (I, J, K) and its RAS+ affine.

    Raises:
        DataError naming the file when it is missing, truncated, 4D without ``channel``, a
        folder with no or several DICOM series, or a label volume with NaN or infinite values.
    """
    path = Path(path)
    if path.is_dir():
        if channel not in (None, 0):
            raise DataError(f"{path}: --channel {channel} asked for, but a DICOM series has one channel")
        return _finite(read_dicom_series(path), label)
    if is_nifti_path(path):
        return _finite(read_nifti(path, channel), label)
    if is_itk_path(path):
        return _finite(read_itk(path, channel), label)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: not a volume; expected .nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr "
                    "or a folder with one DICOM series")


def volume_header_info(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and RAS affine of a NIfTI, MetaImage or NRRD file from its header alone."""
    if is_itk_path(path):
        return itk_header_info(path)
    return nifti_header_info(path)


def _finite(volume: Volume, label: bool) -> Volume:
    array, n = fill_nonfinite(volume.array)
    if n and label:
        raise DataError(f"{volume.path}: label volume has {n:,} NaN or infinite voxel(s); labels must be class ids")
    if n:
        log.warning("%s: %d NaN or infinite voxel(s) of %d read as the volume's lowest finite value "
                    "(+infinity as its highest)", volume.path, n, array.size)
        volume.array = array
    volume.meta["nonfinite"] = n
    return volume


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array with its RAS affine in the format the name asks for (NIfTI, ``.mha``,
    ``.mhd`` or ``.nrrd``), atomically; see :func:`write_nifti` and :func:`write_itk`."""
    if is_itk_path(path):
        return write_itk(path, array, affine)
    return write_nifti(path, array, affine)


def read_array(path: str | os.PathLike, channel: int | None = None, label: bool = False) -> tuple[np.ndarray, Geometry]:
    """A volume as ``(array, geometry)``: (I, J, K) and its :class:`Geometry` (see :func:`read_volume`)."""
    volume = read_volume(path, channel, label)
    return volume.array, volume.geometry


def read_header(path: str | os.PathLike) -> Geometry:
    """The :class:`Geometry` of a volume from its header where the format has one (a DICOM series
    is read whole)."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path).geometry
    shape, affine = volume_header_info(path)
    return Geometry(shape[:3], affine)


def write_array(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> Path:
    """Write a 3D array on ``geometry`` in the format the name asks for (:func:`write_volume`)."""
    return write_volume(path, array, geometry.affine)


__all__ = [
    "ITK_SUFFIXES", "LPS_TO_RAS", "NIFTI_SUFFIXES", "VOLUME_SUFFIXES", "Volume", "dicom_series",
    "fill_nonfinite", "grid_differences", "is_itk_path", "is_nifti_path", "is_volume_path",
    "itk_header_info", "nifti_header_info", "prediction_ending", "read_array", "read_dicom_series",
    "read_header", "read_itk", "read_nifti", "read_volume", "require_same_grid", "strip_volume_suffix",
    "volume_ending", "volume_header_info", "write_array", "write_itk", "write_nifti", "write_volume",
]
