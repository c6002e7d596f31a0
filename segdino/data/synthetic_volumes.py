"""Synthetic CT-like volumes whose lesions differ from their organ by texture, not brightness.

An air-surrounded body of fat and soft tissue, an organ with fine texture, and small lesions inside
it with coarse texture and almost the organ's attenuation (HU), on an anisotropic grid, written in
nnU-Net's raw layout. The folder guard and the nnU-Net bookkeeping here serve every generator of
the package (2D images, these volumes, the whole scans of :mod:`segdino.data.whole_scan`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..fileio import atomic_write_bytes, atomic_write_text

VOLUME_LABELS = {"background": 0, "organ": 1, "lesion": 2}
# A soft-tissue window that shows organ, lesions and fat; a sensible intensity window for the volumes.
VOLUME_WINDOW = (-160.0, 240.0)
ORGAN_TEXTURE_HU = 20.0  # spread of organ and lesion texture; lesions sit a few HU below the organ


def prepare_generated_folder(root: Path, sub: Sequence[str], names: dict[str, set[str]]) -> None:
    """Refuse to mix a new dataset with foreign files already in ``root``'s folders."""
    for folder in sub:
        d = root / folder
        if d.exists():
            if not d.is_dir():
                raise DataError(f"{d}: exists and is not a folder")
            foreign = sorted(p.name for p in d.iterdir() if p.name not in names[folder])
            if foreign:
                raise DataError(
                    f"{d}: expected an empty folder or one written by the same generator, found other files "
                    f"(e.g. {foreign[0]}); choose an empty output folder"
                )
        d.mkdir(parents=True, exist_ok=True)


def start_nnunet_dataset(root, counts: Sequence[int], prefix: str, width: int = 3):
    """Check that a generated nnU-Net raw dataset can be written, and name its cases.

    Args:
        root: the dataset folder.
        counts: ``(n_train, n_val, n_test)``, non-negative integers.
        prefix: case ids are ``<prefix>_<i>``, ``i`` zero-padded to at least ``width`` digits.

    Returns:
        ``(root, cases, held_out)``: ``root`` as a :class:`Path` with ``imagesTr``, ``labelsTr``,
        ``imagesTs`` and ``labelsTs`` ready (:func:`prepare_generated_folder`), every case id, and
        how many of them (the train and val cases) go to the ``Tr`` folders.

    Raises:
        DataError: nibabel missing, bad counts, or foreign files in the folders.
    """
    try:
        import nibabel  # noqa: F401
    except ImportError:
        raise DataError("writing NIfTI volumes needs nibabel: pip install 'segdino[volumes]'") from None
    counts = tuple(counts)
    if any(int(c) != c or c < 0 for c in counts):
        raise DataError(f"dataset sizes must be non-negative integers, got {counts}")
    root = Path(root)
    total = sum(counts)
    digits = max(width, len(str(total - 1)))
    cases = [f"{prefix}_{i:0{digits}d}" for i in range(total)]
    n_tr = counts[0] + counts[1]
    tr, ts = cases[:n_tr], cases[n_tr:]
    names = {"imagesTr": {f"{c}_0000.nii.gz" for c in tr}, "labelsTr": {f"{c}.nii.gz" for c in tr},
             "imagesTs": {f"{c}_0000.nii.gz" for c in ts}, "labelsTs": {f"{c}.nii.gz" for c in ts}}
    prepare_generated_folder(root, tuple(names), names)
    return root, cases, n_tr


def case_files(root: Path, case: str, in_training: bool) -> tuple[Path, Path]:
    """The image and label file of a generated case: ``imagesTr``/``labelsTr`` or the ``Ts`` pair."""
    img_dir, lab_dir = ("imagesTr", "labelsTr") if in_training else ("imagesTs", "labelsTs")
    return root / img_dir / f"{case}_0000.nii.gz", root / lab_dir / f"{case}.nii.gz"


def finish_nnunet_dataset(root: Path, dataset: dict, cases: list[str], n_train: int, n_val: int) -> Path:
    """Write ``dataset.json`` (``dataset`` plus ``numTraining`` and ``file_ending``) and a one-fold
    ``splits_final.json`` of the first ``n_train`` cases and the ``n_val`` after them."""
    meta = dict(dataset, numTraining=n_train + n_val, file_ending=".nii.gz")
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=1) + "\n")
    splits = [{"train": cases[:n_train], "val": cases[n_train: n_train + n_val]}]
    atomic_write_text(root / "splits_final.json", json.dumps(splits, indent=1) + "\n")
    return root


def _parse_shape(shape) -> tuple[int, int, int]:
    try:
        d, h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise DataError(f"shape must be (depth, height, width), got {shape!r}") from None
    if d < 4 or h < 32 or w < 32:
        raise DataError(f"synthetic volumes need at least 4x32x32 voxels, got {d}x{h}x{w}")
    return d, h, w


def _noise3d(rng: np.random.Generator, shape, sigma_mm: float, spacing, remove_mm: float | None = None):
    """Gaussian noise smoothed by ``sigma_mm`` in world units (texture isotropic in mm), unit std.

    With ``remove_mm`` the structure coarser than that scale is taken out (a difference of Gaussians),
    so the texture has one grain size and no large blotches.
    """
    white = rng.standard_normal(shape)
    field = ndimage.gaussian_filter(white, [sigma_mm / s for s in spacing], mode="wrap")
    if remove_mm is not None:
        field = field - ndimage.gaussian_filter(white, [remove_mm / s for s in spacing], mode="wrap")
    return field / max(float(field.std()), 1e-8)


def make_volume(
    rng: np.random.Generator, shape=(32, 96, 96), spacing=(2.5, 0.8, 0.8)
) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like volume: body, fat, a textured organ and 1-3 small lesions inside the organ.

    Lesions differ from the organ by texture (coarse mottling against the organ's fine grain) and are
    only slightly hypodense (8-15 HU, inside the organ's 20 HU spread), so no intensity threshold
    separates them. Lesions are 8-18 mm across, a few slices thick at 2.5 mm slices.

    Args:
        rng: the random generator.
        shape: ``(D, H, W)`` voxels, slices first.
        spacing: ``(z, y, x)`` voxel size in mm.

    Returns:
        ``volume`` (D, H, W) float32 in HU and ``labels`` (D, H, W) uint8: 0 background, 1 organ,
        2 lesion.
    """
    d, h, w = _parse_shape(shape)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise DataError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    sz, sy, sx = spacing
    z = (np.arange(d) - (d - 1) / 2) * sz
    y = (np.arange(h) - (h - 1) / 2) * sy
    x = (np.arange(w) - (w - 1) / 2) * sx
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    half_y, half_x = (h - 1) / 2 * sy, (w - 1) / 2 * sx

    # Body: an elliptical cylinder with a wobbly outline, a subcutaneous fat layer, and fat streaks.
    by, bx = half_y * rng.uniform(0.78, 0.9), half_x * rng.uniform(0.85, 0.95)
    ang = np.arctan2(yy / by, xx / bx)
    wob = 1 + 0.04 * np.cos(2 * ang + rng.uniform(0, 6.3)) + 0.03 * np.cos(3 * ang + rng.uniform(0, 6.3))
    rad = np.hypot(yy / by, xx / bx) / wob
    body = rad <= 1.0
    fat_layer = rad > 1.0 - rng.uniform(0.07, 0.12)
    fatty = _noise3d(rng, (d, h, w), 4.0, spacing) > 0.9  # visceral fat islands
    muscle_hu = rng.uniform(35, 50)
    hu = np.full((d, h, w), -1000.0)
    tissue = muscle_hu + 12 * _noise3d(rng, (d, h, w), 1.0, spacing)
    hu[body] = tissue[body]
    fat = body & (fat_layer | fatty)
    hu[fat] = -100 + 15 * _noise3d(rng, (d, h, w), 1.0, spacing)[fat]

    # Organ: a lobed ellipsoid, off-centre, spanning most but not all slices.
    oc = (rng.uniform(-0.15, 0.15) * d * sz, rng.uniform(-0.2, 0.2) * by, rng.uniform(-0.2, 0.2) * bx)
    oa = (rng.uniform(0.3, 0.42) * d * sz, rng.uniform(0.35, 0.5) * by, rng.uniform(0.35, 0.5) * bx)
    q = ((zz - oc[0]) / oa[0]) ** 2 + ((yy - oc[1]) / oa[1]) ** 2 + ((xx - oc[2]) / oa[2]) ** 2
    lobes = 0.3 * _noise3d(rng, (d, h, w), 10.0, spacing)
    organ = (q <= 1.0 + lobes) & body & ~fat_layer
    organ_hu = rng.uniform(85, 110)  # contrast-enhanced parenchyma, brighter than muscle
    organ_texture = ORGAN_TEXTURE_HU * _noise3d(rng, (d, h, w), 0.6, spacing, remove_mm=2.0)
    hu[organ] = organ_hu + organ_texture[organ]

    labels = np.zeros((d, h, w), dtype=np.uint8)
    labels[organ] = 1
    # Lesion centres at least 3 mm inside the organ, measured in mm because the grid is anisotropic.
    inner = ndimage.distance_transform_edt(organ, sampling=spacing) > 3.0
    candidates = np.argwhere(inner)
    if len(candidates):
        n_lesions = int(rng.integers(1, 4))
        for _ in range(n_lesions):
            cz, cy, cx = candidates[rng.integers(len(candidates))]
            # 8-18 mm, but never more than the organ's smallest semi-axis on a small field of view.
            diam = min(rng.uniform(8.0, 18.0), min(oa))
            rz, ry, rx = diam / 2 * rng.uniform(0.8, 1.2, size=3)
            p = ((zz - z[cz]) / rz) ** 2 + ((yy - y[cy]) / ry) ** 2 + ((xx - x[cx]) / rx) ** 2
            blob = (p <= 1.0 + 0.25 * _noise3d(rng, (d, h, w), 3.0, spacing)) & organ
            if not blob.any():
                continue
            # Coarse mottling with the organ's spread, centred a few HU below the organ.
            mottle = _noise3d(rng, (d, h, w), 2.5, spacing, remove_mm=8.0)
            vals = mottle[blob]
            mottle = (mottle - vals.mean()) / max(float(vals.std()), 1e-8)
            hu[blob] = organ_hu - rng.uniform(8, 15) + ORGAN_TEXTURE_HU * mottle[blob]
            labels[blob] = 2

    hu += rng.normal(0, 5, size=hu.shape)  # scanner noise
    return hu.astype(np.float32), labels


def make_volumes(n: int, shape=(32, 96, 96), spacing=(2.5, 0.8, 0.8), seed: int = 0):
    """``n`` volumes from :func:`make_volume`; volume ``i`` depends only on ``(seed, i)``.

    Returns:
        ``volumes`` (n, D, H, W) float32 and ``labels`` (n, D, H, W) uint8.
    """
    d, h, w = _parse_shape(shape)
    vols = np.zeros((n, d, h, w), dtype=np.float32)
    labs = np.zeros((n, d, h, w), dtype=np.uint8)
    for i in range(n):
        vols[i], labs[i] = make_volume(np.random.default_rng([seed, i]), (d, h, w), spacing)
    return vols, labs


def volume_affine(shape, spacing=(2.5, 0.8, 0.8)) -> np.ndarray:
    """The NIfTI affine of a generated volume stored as (x, y, z) = (W, H, D) voxels.

    Rows and columns run right-to-left and anterior-to-posterior (the usual CT orientation written
    into RAS+ NIfTI: the first two axes flipped), the grid centred on the origin.
    """
    d, h, w = _parse_shape(shape)
    sz, sy, sx = (float(s) for s in spacing)
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [(w - 1) / 2 * sx, (h - 1) / 2 * sy, -(d - 1) / 2 * sz]
    return aff


def _nifti_bytes(data_dhw: np.ndarray, affine: np.ndarray, dtype) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(data_dhw, (2, 1, 0))).astype(dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=4, mtime=0)


def write_volume_dataset(
    root,
    n_train: int,
    n_val: int,
    n_test: int,
    shape=(32, 96, 96),
    seed: int = 0,
    spacing=(2.5, 0.8, 0.8),
) -> Path:
    """Write generated CT-like volumes in nnU-Net's raw layout.

    ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` (train and val cases),
    ``imagesTs/`` and ``labelsTs/`` (test cases), ``dataset.json`` (channel ``CT``, labels background
    0, organ 1, lesion 2) and ``splits_final.json`` with one fold ``{"train": [...], "val": [...]}``.
    Images are int16 HU, labels uint8; the affine (:func:`volume_affine`) carries the anisotropic
    spacing and a flipped direction. Needs nibabel. Returns ``root`` as a :class:`Path`.
    """
    shape = _parse_shape(shape)
    root, cases, n_tr = start_nnunet_dataset(root, (n_train, n_val, n_test), "synth")
    affine = volume_affine(shape, spacing)
    for i, case in enumerate(cases):
        vol, lab = make_volume(np.random.default_rng([seed, i]), shape, spacing)
        image_file, label_file = case_files(root, case, i < n_tr)
        hu = np.clip(np.rint(vol), -1024, 3071)
        atomic_write_bytes(image_file, _nifti_bytes(hu, affine, np.int16))
        atomic_write_bytes(label_file, _nifti_bytes(lab, affine, np.uint8))
    dataset = {
        "name": "SyntheticCT",
        "description": "Generated CT-like volumes: an organ with small lesions that differ by texture",
        "channel_names": {"0": "CT"},
        "labels": dict(VOLUME_LABELS),
    }
    return finish_nnunet_dataset(root, dataset, cases, n_train, n_val)
