"""Reading and writing volumes with their geometry: NIfTI, MetaImage (``.mha``, ``.mhd`` + raw),
NRRD (``.nrrd``, ``.nhdr`` + data file) and DICOM series.

World convention: **RAS+ millimetres**, as NIfTI defines it. ``Volume.affine`` maps a voxel index
``(i, j, k, 1)`` to world ``(x, y, z, 1)``: x grows towards the patient's Right, y towards
Anterior, z towards Superior. DICOM describes positions in LPS+ (x to the Left, y to Posterior,
z to Superior); a DICOM series is converted on reading by negating x and y, so both sources
share one frame and a voxel keeps its physical place whichever file it came from. MetaImage and
NRRD files (ITK's formats) are LPS too and are converted the same way.

nibabel, SimpleITK and pydicom (with GDCM for compressed pixel data) are optional
(``pip install "segdino[volumes]"``) and imported only here, inside the functions that need them.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_path, record_written

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Read and written through SimpleITK; .mhd and .nhdr are headers naming a separate data file.
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# LPS (DICOM) <-> RAS (NIfTI): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in mm along array axes 0, 1, 2 (lengths of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """(3,) RAS world position in mm of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors: column a is the RAS direction in which array axis a grows."""
        return self.affine[:3, :3] / self.spacing

    def world(self, index) -> np.ndarray:
        """RAS world mm of voxel index/indices: (3,) or (N, 3) -> same shape."""
        idx = np.asarray(index, dtype=np.float64)
        pts = np.atleast_2d(idx) @ self.affine[:3, :3].T + self.affine[:3, 3]
        return pts[0] if idx.ndim == 1 else pts


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


# Deflate expands data at most about 1032 times; a gzip file whose header claims more voxel data
# than that could hold is corrupt or forged.
DEFLATE_MAX_RATIO = 1032


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


# --- MetaImage and NRRD (through SimpleITK) -----------------------------------------------

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


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array with its RAS affine in the format the name asks for (NIfTI, ``.mha``,
    ``.mhd`` or ``.nrrd``), atomically; see :func:`write_nifti` and :func:`write_itk`."""
    if is_itk_path(path):
        return write_itk(path, array, affine)
    return write_nifti(path, array, affine)


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
    slices = []
    for f in files:
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
        slices.append((f, iop, ipp, ps, pixels, slope, inter, thick))

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
    integral = all(s[5] == 1.0 and float(s[6]).is_integer() for s in slices)
    stack = np.stack([s[4] for s in slices], axis=-1)  # (rows, cols, n)
    if integral:
        out = stack.astype(np.int32) + np.array([int(s[6]) for s in slices], dtype=np.int32)
        if out.min(initial=0) >= -32768 and out.max(initial=0) <= 32767:
            out = out.astype(np.int16)
    else:
        out = (stack.astype(np.float64) * np.array([s[5] for s in slices])
               + np.array([s[6] for s in slices])).astype(np.float32)
    array = np.ascontiguousarray(out.transpose(1, 0, 2))  # (cols, rows, slices) = (i, j, k)
    return Volume(array, LPS_TO_RAS @ lps, folder, {"format": "dicom", "files": [s[0] for s in slices]})


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
    one rule by which ``data check`` and training decide that a label volume is on its image.
    """
    if label.shape != image.shape:
        return [f"shape {label.shape} vs image {image.shape}"]
    out = []
    if not np.allclose(image.spacing, label.spacing, rtol=1e-3, atol=1e-5):
        out.append(f"spacing {_fmt_vec(label.spacing)} vs image {_fmt_vec(image.spacing)}")
    tol = 0.01 * float(np.min(image.spacing))
    if not np.allclose(image.origin, label.origin, rtol=0, atol=tol):
        out.append(f"origin {_fmt_vec(label.origin)} vs image {_fmt_vec(image.origin)}")
    if not np.allclose(image.direction, label.direction, rtol=0, atol=1e-3):
        out.append(f"direction {np.round(label.direction, 3).tolist()} vs image {np.round(image.direction, 3).tolist()}")
    return out


def require_same_grid(image: Volume, label: Volume) -> None:
    """Raise :class:`DataError` naming both files when :func:`grid_differences` finds any."""
    diffs = grid_differences(image, label)
    if diffs:
        raise DataError(f"{label.path}: label geometry differs from image {image.path}: " + "; ".join(diffs)
                        + " (a misregistered label would train on the wrong voxels; resample it onto the image)")


def _fmt_vec(v) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


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
