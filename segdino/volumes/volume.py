"""Volumes in memory and what every volume format shares: the world frame, suffixes, channels.

World convention: **RAS+ millimetres**, as NIfTI defines it. ``Volume.affine`` maps a voxel index
``(i, j, k, 1)`` to world ``(x, y, z, 1)``: x grows towards the patient's Right, y towards
Anterior, z towards Superior. DICOM describes positions in LPS+ (x to the Left, y to Posterior,
z to Superior); a DICOM series is converted on reading by negating x and y, so both sources
share one frame and a voxel keeps its physical place whichever file it came from. MetaImage and
NRRD files (ITK's formats) are LPS too and are converted the same way. docs/FORMATS.md has the
formats; :mod:`segdino.volumes.nifti`, :mod:`~segdino.volumes.itk` and
:mod:`~segdino.volumes.dicom` read them, :mod:`segdino.volumes.io` picks the one a path needs.

nibabel, SimpleITK and pydicom (with GDCM for compressed pixel data) are optional
(``pip install "segdino[volumes]"``) and imported only inside the functions that need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.geometry import Geometry
from ..errors import ConfigError, DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Read and written through SimpleITK; .mhd and .nhdr are headers naming a separate data file.
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# LPS (DICOM) <-> RAS (NIfTI): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Deflate expands data at most about 1032 times; a gzip file whose header claims more voxel data
# than that could hold is corrupt or forged.
DEFLATE_MAX_RATIO = 1032


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ConfigError(
            'reading or writing NIfTI volumes needs nibabel: pip install "segdino[volumes]"'
        ) from None
    return nibabel


def _simpleitk():
    try:
        import SimpleITK
    except ImportError:
        raise ConfigError(
            'reading or writing .mha, .mhd and .nrrd volumes needs SimpleITK: pip install "segdino[volumes]"'
        ) from None
    return SimpleITK


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ConfigError(
            'reading DICOM series needs pydicom: pip install "segdino[volumes]"'
        ) from None
    return pydicom


@dataclass
class Volume:
    """A 3D array and the affine that places it in the world.

    ``array`` has shape (I, J, K) in the file's own storage order (no reorientation).
    ``affine`` is a 4x4 float64 matrix mapping a voxel index (i, j, k, 1) to RAS+ world
    millimetres (see the module docstring). ``path`` names the source, for messages.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise DataError(f"{self._name()}: an affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim != 3:
            raise DataError(f"{self._name()}: a volume must be 3D, got shape {self.array.shape}")
        if not np.all(np.isfinite(self.affine)) or abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise DataError(f"{self._name()}: the affine is singular or not finite:\n{self.affine}")

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "volume"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def geometry(self) -> Geometry:
        """The voxel grid: shape and affine (:class:`segdino.data.geometry.Geometry`)."""
        return Geometry(self.shape, self.affine)

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in mm along array axes 0, 1, 2 (lengths of the affine's columns)."""
        return self.geometry.spacing

    @property
    def origin(self) -> np.ndarray:
        """(3,) RAS world position in mm of the centre of voxel (0, 0, 0)."""
        return self.geometry.origin

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors: column a is the RAS direction in which array axis a grows."""
        return self.geometry.direction

    def world(self, index) -> np.ndarray:
        """RAS world mm of voxel index/indices: (3,) or (N, 3) -> same shape."""
        return self.geometry.world(index)


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_itk_path(path: str | os.PathLike) -> bool:
    """A MetaImage or NRRD file name (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``)."""
    return str(path).lower().endswith(ITK_SUFFIXES)


def is_volume_path(path: str | os.PathLike) -> bool:
    """A file name :func:`read_volume` reads as one volume file (NIfTI, MetaImage or NRRD)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_ending(name: str | os.PathLike) -> str:
    """The volume suffix of a file name, lower case (``.nii.gz``, ``.mha``, ...); ``""`` if none."""
    low = str(name).lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf):
            return suf
    return ""


def prediction_ending(source: str | os.PathLike) -> str:
    """The suffix a prediction of ``source`` is written with: the source's own format, so the
    dataset's own tools read it; a detached header (``.mhd``, ``.nhdr``) gives the one-file form
    of its format (``.mha``, ``.nrrd``), a DICOM series (a folder) gives ``.nii.gz``."""
    ending = volume_ending(Path(source).name) if not Path(source).is_dir() else ""
    return {".mhd": ".mha", ".nhdr": ".nrrd", "": ".nii.gz"}.get(ending, ending)


def strip_volume_suffix(name: str) -> str:
    """File name -> stem without its volume suffix (``.nii.gz``, ``.mha``, ...; or the last
    suffix for other files)."""
    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def _channel_of(data: np.ndarray, channel: int | None, path: Path) -> np.ndarray:
    """Reduce a loaded array to 3D, choosing ``channel`` of a 4D (multi-modal) file."""
    if data.ndim == 5 and data.shape[3] == 1:  # ITK writes vector images as X x Y x Z x 1 x C
        data = data[:, :, :, 0, :]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        if channel not in (None, 0):
            raise DataError(f"{path}: --channel {channel} asked for, but the file is 3D (one channel)")
        return data
    if data.ndim == 4:
        n = data.shape[3]
        if channel is None:
            if n == 1:
                return data[..., 0]
            raise DataError(
                f"{path}: 4D file with {n} channels (modalities), shape {data.shape}; "
                f"pick one with --channel 0..{n - 1}"
            )
        if not 0 <= channel < n:
            raise DataError(f"{path}: --channel {channel} is out of range; the file has {n} channels")
        return data[..., channel]
    raise DataError(f"{path}: expected a 3D or 4D volume, found {data.ndim} dimensions {data.shape}")


def _storable(array: np.ndarray) -> np.ndarray:
    """Pick a NIfTI-friendly dtype: bool -> uint8, int64 -> the smallest integer type that fits."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        for t in (np.uint8, np.int16, np.int32):
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
                return a.astype(t)
        raise DataError(f"label values {lo}..{hi} do not fit a 32-bit NIfTI integer")
    if a.dtype == np.float16:
        return a.astype(np.float32)
    return a


def fill_nonfinite(array: np.ndarray) -> tuple[np.ndarray, int]:
    """A float volume with its NaN and infinite voxels replaced: (I, J, K) -> same, and their count.

    NaN and -inf become the volume's lowest finite value, +inf its highest (0 when no voxel is
    finite): a voxel without a measurement reads as background (air in CT, 0 in MRI) instead of
    turning every percentile, window and prediction that touches it into NaN. Integer arrays
    and finite float arrays are returned as they are (no copy).
    """
    a = np.asarray(array)
    if a.dtype.kind != "f":
        return a, 0
    finite = np.isfinite(a)
    n = int(a.size - np.count_nonzero(finite))
    if n == 0:
        return a, 0
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if n < a.size else (0.0, 0.0)
    out = np.where(finite, a, np.where(np.isposinf(a), hi, lo)).astype(a.dtype, copy=False)
    return out, n


def grid_differences(image: Volume, label: Volume) -> list[str]:
    """How ``label``'s voxel grid differs from ``image``'s: shape, spacing, origin, direction.

    Empty when they match (spacing to 0.1%, origin to 1% of a voxel, direction to 1e-3): the
    one rule by which ``data check`` and training decide that a label volume is on its image
    (:meth:`segdino.data.geometry.Geometry.differences`).
    """
    return label.geometry.differences(image.geometry)


def require_same_grid(image: Volume, label: Volume) -> None:
    """Raise :class:`DataError` naming both files when :func:`grid_differences` finds any."""
    diffs = grid_differences(image, label)
    if diffs:
        raise DataError(f"{label.path}: label geometry differs from image {image.path}: " + "; ".join(diffs)
                        + " (a misregistered label would train on the wrong voxels; resample it onto the image)")
