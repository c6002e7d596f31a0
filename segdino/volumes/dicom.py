"""DICOM series (a folder of single-frame slices) through pydicom, into the RAS frame.

Slices are grouped by SeriesInstanceUID, checked to be stored alike, sorted along the normal of
ImageOrientationPatient and stacked; LPS positions become the RAS affine of
:mod:`segdino.volumes.volume`. Compressed pixel data needs GDCM (``segdino[volumes]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .volume import LPS_TO_RAS, Volume, _pydicom


def _dicom_files(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [p for p in files if p.name.upper() != "DICOMDIR"]


def dicom_series(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """Group the DICOM files under ``folder`` by SeriesInstanceUID (headers only)."""
    pydicom = _pydicom()
    folder = Path(folder)
    series: dict[str, list[Path]] = {}
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # not a DICOM file (README, thumbnails): ignored
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if hasattr(ds, "Rows"):  # an image; structured reports and the like carry no pixels
            series.setdefault(uid, []).append(f)
    return series


def _floats(ds, keyword: str, n: int, f: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None:
        raise DataError(f"{f}: DICOM attribute {keyword} is missing; the slice cannot be placed in space")
    try:
        arr = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{f}: DICOM attribute {keyword} is not numeric: {value!r}") from None
    if arr.shape != (n,):
        raise DataError(f"{f}: DICOM attribute {keyword} needs {n} values, found {len(arr)}")
    return arr


def _transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid is not None else "1.2.840.10008.1.2"  # none stated: implicit VR little endian


def _syntax_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:  # an unknown or malformed UID
        return uid
    return f"{name} ({uid})" if name and name != uid else uid


def _check_series_headers(pydicom, files: list[Path]) -> None:
    """Refuse, from the headers and before any pixel data is decoded, a series whose slices
    differ in transfer syntax or in pixel layout (size, bits, samples per pixel)."""
    first = None
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as e:
            raise DataError(f"{f}: cannot read DICOM ({type(e).__name__}: {e})") from None
        layout = {"transfer syntax": _transfer_syntax(ds),
                  "size (rows x columns)": (getattr(ds, "Rows", None), getattr(ds, "Columns", None)),
                  "BitsAllocated": getattr(ds, "BitsAllocated", None),
                  "SamplesPerPixel": getattr(ds, "SamplesPerPixel", 1)}
        if first is None:
            first = (f, layout)
            continue
        for key, value in layout.items():
            if value != first[1][key]:
                show = _syntax_name if key == "transfer syntax" else str
                raise DataError(f"{f}: DICOM {key} {show(value)} differs from {first[0].name}'s "
                                f"{show(first[1][key])}; a series must be stored alike in every slice")


def _dicom_pixels(ds, f: Path) -> np.ndarray:
    """The stored pixel values of one slice, decoded by pydicom's pixel handlers (GDCM or
    pylibjpeg for compressed transfer syntaxes)."""
    try:
        return ds.pixel_array
    except Exception as e:
        syntax = _transfer_syntax(ds)
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        compressed = syntax not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
        hint = ('; compressed pixel data needs a decoder: pip install "segdino[volumes]" (installs GDCM)'
                if compressed and not _has_gdcm() else "")
        raise DataError(f"{f}: cannot decode pixel data, transfer syntax {_syntax_name(syntax)} ({why}){hint}") from None


def _has_gdcm() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def _read_slice(pydicom, f: Path) -> tuple:
    """One slice file -> ``(file, orientation, position, pixel spacing, pixels, slope, intercept,
    thickness)``, every attribute checked."""
    try:
        ds = pydicom.dcmread(str(f))
    except Exception as e:
        raise DataError(f"{f}: cannot read DICOM ({type(e).__name__}: {e})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{f}: multi-frame DICOM ({frames} frames) is not supported; "
                        "export the series as one file per slice or as NIfTI")
    iop = _floats(ds, "ImageOrientationPatient", 6, f)
    ipp = _floats(ds, "ImagePositionPatient", 3, f)
    ps = _floats(ds, "PixelSpacing", 2, f)
    pixels = _dicom_pixels(ds, f)
    if pixels.ndim != 2:
        raise DataError(f"{f}: expected a greyscale slice, pixel data has shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    thick = getattr(ds, "SpacingBetweenSlices", None) or getattr(ds, "SliceThickness", None)
    return f, iop, ipp, ps, pixels, slope, inter, thick


def _series_affine(folder: Path, slices: list[tuple]) -> np.ndarray:
    """Check that the slices form one evenly spaced stack, sort them along their normal (in
    place) and return the LPS affine of voxel (column, row, slice)."""
    f0, iop0, _, ps0, px0 = slices[0][:5]
    for f, iop, _, ps, px, *_ in slices[1:]:
        if not np.allclose(iop, iop0, atol=1e-4):
            raise DataError(f"{f}: ImageOrientationPatient {iop.tolist()} differs from {f0.name} {iop0.tolist()}")
        if not np.allclose(ps, ps0, rtol=1e-4):
            raise DataError(f"{f}: PixelSpacing {ps.tolist()} differs from {f0.name} {ps0.tolist()}")
        if px.shape != px0.shape:
            raise DataError(f"{f}: slice size {px.shape} differs from {f0.name} {px0.shape}")
    row_dir, col_dir = iop0[:3], iop0[3:]  # row_dir: as the column index grows; col_dir: as the row index grows
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(s[2], normal)))
    pos = np.array([np.dot(s[2], normal) for s in slices])
    n = len(slices)
    if n > 1:
        gaps = np.diff(pos)
        if np.any(gaps < 1e-4):
            dup = [slices[i + 1][0].name for i in np.nonzero(gaps < 1e-4)[0]]
            raise DataError(f"{folder}: several slices share one position (e.g. {', '.join(dup[:3])})")
        if np.max(np.abs(gaps - gaps.mean())) > max(1e-2, 0.01 * gaps.mean()):
            raise DataError(
                f"{folder}: slices are unevenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm); "
                "a slice may be missing"
            )
        step = (slices[-1][2] - slices[0][2]) / (n - 1)  # keeps gantry tilt as a shear
    else:
        thick = slices[0][7]
        step = normal * (float(thick) if thick else 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps0[1]
    lps[:3, 1] = col_dir * ps0[0]
    lps[:3, 2] = step
    lps[:3, 3] = slices[0][2]
    return lps


def _rescaled(slices: list[tuple]) -> np.ndarray:
    """The stored values with RescaleSlope/Intercept applied, as (cols, rows, slices) = (i, j, k):
    int16 (or int32) where every slice's rescale keeps whole numbers, float32 otherwise."""
    integral = all(s[5] == 1.0 and float(s[6]).is_integer() for s in slices)
    stack = np.stack([s[4] for s in slices], axis=-1)  # (rows, cols, n)
    if integral:
        out = stack.astype(np.int32) + np.array([int(s[6]) for s in slices], dtype=np.int32)
        if out.min(initial=0) >= -32768 and out.max(initial=0) <= 32767:
            out = out.astype(np.int16)
    else:
        out = (stack.astype(np.float64) * np.array([s[5] for s in slices])
               + np.array([s[6] for s in slices])).astype(np.float32)
    return np.ascontiguousarray(out.transpose(1, 0, 2))


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read a folder holding exactly one DICOM series (single-frame slices) as a :class:`Volume`.

    Voxel (i, j, k) is column i, row j of the k-th slice, slices sorted along the normal of
    ImageOrientationPatient. Pixel values get RescaleSlope/RescaleIntercept (CT: Hounsfield units).
    """
    pydicom = _pydicom()
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of DICOM files")
    series = dicom_series(folder)
    if not series:
        raise DataError(f"{folder}: no DICOM image files found")
    if len(series) > 1:
        desc = "; ".join(f"{uid or '<no SeriesInstanceUID>'} ({len(fs)} files, e.g. {fs[0].name})"
                         for uid, fs in sorted(series.items()))
        raise DataError(f"{folder}: {len(series)} DICOM series in one folder, expected one: {desc}")
    files = next(iter(series.values()))
    _check_series_headers(pydicom, files)
    slices = [_read_slice(pydicom, f) for f in files]
    lps = _series_affine(folder, slices)
    return Volume(_rescaled(slices), LPS_TO_RAS @ lps, folder, {"format": "dicom", "files": [s[0] for s in slices]})
