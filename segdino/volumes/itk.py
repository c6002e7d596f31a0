"""MetaImage (``.mha``, ``.mhd`` + data file) and NRRD (``.nrrd``, ``.nhdr`` + data file) through
SimpleITK.

ITK's LPS geometry becomes the RAS affine of :mod:`segdino.volumes.volume`. Before SimpleITK
allocates anything, the text header is parsed here and checked against the data file it names,
so a cut or forged header is refused with the file's name instead of costing memory.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import record_written
from .volume import DEFLATE_MAX_RATIO, LPS_TO_RAS, Volume, _channel_of, _simpleitk, _storable, is_itk_path

# Bytes of one voxel component for SimpleITK's pixel types (scalar and vector alike).
_ITK_COMPONENT_BYTES = {
    "8-bit unsigned integer": 1, "8-bit signed integer": 1, "16-bit unsigned integer": 2,
    "16-bit signed integer": 2, "32-bit unsigned integer": 4, "32-bit signed integer": 4,
    "64-bit unsigned integer": 8, "64-bit signed integer": 8, "32-bit float": 4, "64-bit float": 8,
}
_HEADER_LIMIT = 1 << 20  # a text header longer than this is not one


@dataclass
class _Payload:
    """Where a MetaImage/NRRD header says its voxel data lie and how they are encoded."""

    file: Path
    offset: int  # bytes before the data in ``file``; -1: the data are the file's last bytes
    encoding: str  # raw, gzip (zlib or gzip stream) or text
    compressed_size: int | None = None  # MetaImage's CompressedDataSize


def _nrrd_header(path: Path) -> tuple[list[str], int]:
    """The header lines of a NRRD file and the byte offset just after the blank line ending them
    (written with Unix or Windows line ends)."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    ends = [(i, len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := head.find(sep)) >= 0]
    if not ends:
        if len(head) == _HEADER_LIMIT:
            raise DataError(f"{path}: no end of header in the first {_HEADER_LIMIT:,} bytes; the file is corrupt")
        ends = [(len(head), 0)]
    end, n = min(ends)
    return head[:end].decode("latin-1").splitlines(), end + n


def _header_int(path: Path, key: str, value: str) -> int:
    try:
        return int(value or 0)
    except ValueError:
        raise DataError(f"{path}: header field {key} = {value!r} is not a whole number; the file is corrupt") from None


def _meta_payload(path: Path) -> _Payload:
    """MetaImage: ``ElementDataFile`` ends the header; LOCAL means the data follow it."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(head):
        nl = head.find(b"\n", pos)
        line = head[pos: nl if nl >= 0 else len(head)].decode("latin-1").strip()
        pos = nl + 1 if nl >= 0 else len(head)
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    else:
        raise DataError(f"{path}: MetaImage header without ElementDataFile; the file is truncated or corrupt")
    name = fields["elementdatafile"]
    encoding = "gzip" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    if fields.get("binarydata", "true").lower() == "false":
        encoding = "text"
    packed = (_header_int(path, "CompressedDataSize", fields["compresseddatasize"])
              if encoding == "gzip" and "compresseddatasize" in fields else None)
    if name.upper() == "LOCAL":
        return _Payload(path, pos, encoding, packed)
    if name.upper().startswith("LIST") or "%" in name:
        raise DataError(f"{path}: MetaImage data split over several files ({name!r}) is not supported; "
                        "save the volume as one .mha file")
    offset = _header_int(path, "HeaderSize", fields.get("headersize", "0"))
    return _Payload(path.parent / name, offset if offset >= 0 else -1, encoding, packed)


def _nrrd_payload(path: Path) -> _Payload:
    """NRRD: fields until a blank line; ``data file`` names detached data (``.nhdr``)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"NRRD":
        raise DataError(f"{path}: not a NRRD file (it does not start with NRRD)")
    lines, end = _nrrd_header(path)
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    encoding = fields.get("encoding", "raw").lower()
    encoding = {"gz": "gzip", "txt": "text", "ascii": "text"}.get(encoding, encoding)
    if encoding not in ("raw", "gzip", "text"):  # ITK's NRRD reader has no bzip2 or hex
        raise DataError(f"{path}: NRRD encoding {encoding!r} is not supported; expected raw, gzip or text "
                        "(re-save the file with gzip compression)")
    skip = _header_int(path, "byte skip", fields.get("byte skip", "0"))
    name = fields.get("data file", fields.get("datafile"))
    if name is None:
        return _Payload(path, end + max(skip, 0) if skip >= 0 else -1, encoding)
    if name.upper().startswith("LIST") or "%" in name:
        raise DataError(f"{path}: NRRD data split over several files ({name!r}) is not supported; "
                        "save the volume as one .nrrd file")
    return _Payload(path.parent / name, skip if skip >= 0 else -1, encoding)


def _check_payload(path: Path, payload: _Payload, values: int, itemsize: int, what: str) -> None:
    """Refuse a header whose data file is missing or cannot hold ``values`` numbers of
    ``itemsize`` bytes, before anything that size is allocated."""
    needed = values * itemsize
    data = payload.file
    size = data.stat().st_size - max(payload.offset, 0)
    if payload.encoding == "raw" and size < needed:
        raise DataError(f"{data}: truncated: the header {path.name} claims {needed:,} bytes of voxel data "
                        f"({what}), the file holds {max(size, 0):,}")
    if payload.compressed_size is not None and size < payload.compressed_size:
        raise DataError(f"{data}: truncated: the header {path.name} claims {payload.compressed_size:,} bytes of "
                        f"compressed voxel data, the file holds {max(size, 0):,}")
    if payload.encoding == "gzip" and needed > max(size, 0) * DEFLATE_MAX_RATIO:
        raise DataError(f"{data}: the header {path.name} claims {needed:,} bytes of voxel data ({what}), more than "
                        f"{max(size, 0):,} compressed bytes can hold; the file is truncated or corrupt")
    if payload.encoding == "text" and size < values:  # at least one digit per value
        raise DataError(f"{data}: truncated: the header {path.name} claims {what}, the file is too short for them")


def _compressed_damage(payload: _Payload) -> str | None:
    """Why compressed voxel data cannot be decoded, when the stream is cut or corrupt; else None."""
    if payload.encoding != "gzip":
        return None
    dec = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib (MetaImage) or gzip (NRRD) header
    try:
        with open(payload.file, "rb") as f:
            if payload.offset > 0:
                f.seek(payload.offset)
            while chunk := f.read(1 << 20):
                dec.decompress(chunk, 1 << 20)
                while dec.unconsumed_tail:
                    dec.decompress(dec.unconsumed_tail, 1 << 20)
                if dec.eof:
                    return None
    except zlib.error as e:
        return f"corrupt compressed data ({e})"
    except OSError as e:
        return f"unreadable ({e})"
    return "truncated: the compressed stream ends early"


def _itk_information(path: Path):
    """SimpleITK's reader with the header read and checked against the file; nothing decoded."""
    sitk = _simpleitk()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    payload = _nrrd_payload(path) if path.name.lower().endswith((".nrrd", ".nhdr")) else _meta_payload(path)
    if not payload.file.is_file():  # ITK would open it while reading the header
        raise DataError(f"{path}: the header names the data file {payload.file.name}, which is missing "
                        f"({payload.file})")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DataError(f"{path}: cannot read the header ({_itk_message(e)})") from None
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    component = kind.replace("vector of ", "")
    if component not in _ITK_COMPONENT_BYTES:
        raise DataError(f"{path}: voxel type {kind} is not supported; expected grey values (integers or floats)")
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetDimension() not in (2, 3, 4):
        raise DataError(f"{path}: expected a 2D, 3D or 4D image, the header says {reader.GetDimension()} dimensions")
    comps = int(reader.GetNumberOfComponents())
    _check_payload(path, payload, math.prod(size) * comps, _ITK_COMPONENT_BYTES[component],
                   f"{'x'.join(map(str, size))}, {comps} x {component}")
    return reader


def _itk_message(e: Exception) -> str:
    # ITK's messages carry the C++ source location over several lines; the last line says why.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = lines[-1] if lines else type(e).__name__
    return why.split(": ", 1)[-1] if why.startswith(("itk::", "sitk::")) else why


def _itk_affine(spacing, origin, direction, dim: int) -> np.ndarray:
    """RAS affine from ITK (LPS) geometry of a 2D, 3D or 4D image (first three axes)."""
    n = min(dim, 3)
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:n, :n] = d[:n, :n] * np.asarray(spacing, dtype=np.float64)[:n]
    lps[:n, 3] = np.asarray(origin, dtype=np.float64)[:n]
    return LPS_TO_RAS @ lps


def itk_header_info(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (I, J, K) and RAS affine of a MetaImage/NRRD file from its header (nothing decoded)."""
    path = Path(path)
    reader = _itk_information(path)
    size = tuple(int(s) for s in reader.GetSize())
    shape = (size + (1, 1))[:3]
    return shape, _itk_affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), len(size))


def read_itk(path: str | os.PathLike, channel: int | None = None) -> Volume:
    """Read a ``.mha``, ``.mhd`` (+ data file), ``.nrrd`` or ``.nhdr`` (+ data file) volume.

    Voxel (i, j, k) is ITK's index (x, y, z); the LPS geometry of the header (origin, spacing,
    direction) becomes the RAS affine. A vector image (several components per voxel) or a 4D
    image holds channels: pick one with ``channel``. The header is checked against the file
    before any voxel memory is allocated.
    """
    sitk = _simpleitk()
    path = Path(path)
    reader = _itk_information(path)
    dim = reader.GetDimension()
    affine = _itk_affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), dim)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        payload = _nrrd_payload(path) if path.name.lower().endswith((".nrrd", ".nhdr")) else _meta_payload(path)
        why = _compressed_damage(payload) or _itk_message(e)
        raise DataError(f"{payload.file}: cannot read the voxel data ({why})") from None
    data = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) or (t, z, y, x)
    if image.GetNumberOfComponentsPerPixel() > 1:
        data = np.moveaxis(data, -1, 0)  # components first, then reversed below: (x, y[, z], c)
    data = data.transpose(tuple(range(data.ndim))[::-1])
    if dim == 2:  # (x, y[, c]) -> (x, y, 1[, c])
        data = np.expand_dims(data, 2)
    data = _channel_of(np.ascontiguousarray(data), channel, path)
    return Volume(np.ascontiguousarray(data), affine, path, {"format": "itk"})


def write_itk(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array with its RAS affine as ``.mha``, ``.mhd`` (+ ``.zraw``) or ``.nrrd``,
    compressed, atomically.

    The affine becomes ITK's LPS origin, spacing and direction (its columns' lengths and unit
    vectors). Every file appears whole or not at all: they are written into a temporary folder
    beside ``path`` and moved into place, a header after its data file.
    """
    import shutil
    import tempfile

    sitk = _simpleitk()
    path = Path(path)
    if not is_itk_path(path) or path.name.lower().endswith(".nhdr"):
        raise DataError(f"{path}: an ITK volume file name must end in .mha, .mhd or .nrrd")
    array = _storable(array)
    if array.ndim != 3:
        raise DataError(f"{path}: write_itk expects a 3D array, got shape {array.shape}")
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            sitk.WriteImage(image, str(tmp / path.name), True)
        except RuntimeError as e:
            raise DataError(f"cannot write {path} ({_itk_message(e)})") from None
        written = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)  # the header last
        for f in written:
            record_written(path.parent / f.name)  # listed as ours before it appears (segdino.outputs)
            os.replace(f, path.parent / f.name)
    except OSError as e:
        raise DataError(f"cannot write {path} ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
