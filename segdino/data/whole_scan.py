"""Generated whole CT scans with a few small lesions: the task of finding them in the whole field.

Unlike :func:`segdino.data.synthetic.make_volume` (an organ filling the view), these volumes are
whole axial sections at clinical spacing (512 x 512-like slices of about 0.7 mm, 2.5 mm apart
by default): a body with fat, textured soft tissue and a slowly varying enhancement, and 2-5
lesions of 3-20 mm. Most slices hold no lesion. A lesion is darker than the tissue around it
(by 45-70 HU), but the enhancement varies across the body by more than that and fat is darker
still, so no global HU threshold separates lesions (see :func:`best_volume_threshold_dice`); a
model must compare a spot with its surroundings.

Labels: 0 background, 1 lesion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..fileio import atomic_write_bytes
from .synthetic_volumes import _nifti_bytes, case_files, finish_nnunet_dataset, start_nnunet_dataset, volume_affine

WHOLE_SCAN_LABELS = {"background": 0, "lesion": 1}
WHOLE_SCAN_SHAPE = (40, 512, 512)
WHOLE_SCAN_SPACING = (2.5, 0.7, 0.7)


def _smooth_noise(rng: np.random.Generator, shape, sigma_mm: float, spacing) -> np.ndarray:
    white = rng.standard_normal(shape).astype(np.float32)
    field = ndimage.gaussian_filter(white, [sigma_mm / s for s in spacing], mode="wrap")
    return field / max(float(field.std()), 1e-8)


def make_whole_scan(rng: np.random.Generator, shape=WHOLE_SCAN_SHAPE, spacing=WHOLE_SCAN_SPACING,
                    lesions: tuple[int, int] = (2, 5), diameters: tuple[float, float] = (3.0, 20.0)):
    """One whole-section CT-like volume with small lesions.

    Args:
        rng: the random generator (the volume depends on it alone).
        shape: ``(D, H, W)`` voxels, slices first.
        spacing: ``(z, y, x)`` voxel size in mm.
        lesions: the range of the number of lesions (inclusive).
        diameters: lesion diameters in mm, drawn log-uniformly.

    Returns:
        ``volume`` (D, H, W) float32 HU, ``labels`` (D, H, W) uint8 (1 = lesion).
    """
    d, h, w = (int(s) for s in shape)
    if d < 4 or h < 32 or w < 32:
        raise DataError(f"whole scans need at least 4x32x32 voxels, got {d}x{h}x{w}")
    sz, sy, sx = (float(s) for s in spacing)
    if min(sz, sy, sx) <= 0:
        raise DataError(f"spacing must be positive (z, y, x) mm, got {spacing}")
    y = (np.arange(h, dtype=np.float32) - (h - 1) / 2) * sy
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2) * sx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    hy, hx = (h - 1) / 2 * sy, (w - 1) / 2 * sx
    by, bx = hy * rng.uniform(0.7, 0.85), hx * rng.uniform(0.85, 0.95)
    ang = np.arctan2(yy / by, xx / bx)
    wob = 1 + 0.05 * np.cos(2 * ang + rng.uniform(0, 6.3)) + 0.03 * np.cos(3 * ang + rng.uniform(0, 6.3))
    rad = (np.hypot(yy / by, xx / bx) / wob).astype(np.float32)
    body2d = rad <= 1.0
    sub_fat2d = body2d & (rad > 1.0 - rng.uniform(0.06, 0.1))
    vol_spacing = (sz, sy, sx)
    body = np.broadcast_to(body2d, (d, h, w))
    # Soft tissue: fine grain, plus an enhancement that drifts by +-60 HU across the body.
    enhance = 60.0 + 35.0 * _smooth_noise(rng, (d, h, w), 25.0, vol_spacing)
    grain = 18.0 * _smooth_noise(rng, (d, h, w), 0.8, vol_spacing)
    tissue = enhance + grain
    fat = (_smooth_noise(rng, (d, h, w), 6.0, vol_spacing) > 1.1) | np.broadcast_to(sub_fat2d, (d, h, w))
    hu = np.full((d, h, w), -1000.0, dtype=np.float32)
    hu[body] = tissue[body]
    fat &= body
    hu[fat] = -100.0 + 15.0 * grain[fat] / 18.0

    labels = np.zeros((d, h, w), dtype=np.uint8)
    inner = ndimage.distance_transform_edt(body2d & ~sub_fat2d, sampling=(sy, sx)) > 12.0
    candidates = np.argwhere(inner)
    n = int(rng.integers(lesions[0], lesions[1] + 1))
    z = (np.arange(d, dtype=np.float32) - (d - 1) / 2) * sz
    lo, hi = np.log(diameters[0]), np.log(diameters[1])
    for _ in range(n if len(candidates) else 0):
        cy, cx = candidates[rng.integers(len(candidates))]
        cz = int(rng.integers(1, d - 1))
        diam = float(np.exp(rng.uniform(lo, hi)))
        r = diam / 2 * rng.uniform(0.85, 1.15, size=3)
        # Only the voxels within reach of the lesion are computed: the volume is large.
        reach = [int(np.ceil(1.3 * r[0] / sz)) + 1, int(np.ceil(1.3 * r[1] / sy)) + 1, int(np.ceil(1.3 * r[2] / sx)) + 1]
        z0, z1 = max(0, cz - reach[0]), min(d, cz + reach[0] + 1)
        y0, y1 = max(0, cy - reach[1]), min(h, cy + reach[1] + 1)
        x0, x1 = max(0, cx - reach[2]), min(w, cx + reach[2] + 1)
        zz, yv, xv = np.meshgrid(z[z0:z1] - z[cz], y[y0:y1] - y[cy], x[x0:x1] - x[cx], indexing="ij")
        p = (zz / r[0]) ** 2 + (yv / r[1]) ** 2 + (xv / r[2]) ** 2
        blob = p <= 1.0
        if not blob.any():  # thinner than a slice: keep its central voxel
            blob[tuple(np.array(blob.shape) // 2)] = True
        region = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        sub = hu[region]
        darker = rng.uniform(45.0, 70.0)
        # Against its own surroundings: the local enhancement minus a margin, with a softer grain.
        sub[blob] = enhance[region][blob] - darker + 0.6 * grain[region][blob]
        labels[region][blob] = 1
    hu += rng.normal(0.0, 6.0, size=hu.shape).astype(np.float32)  # scanner noise
    return hu, labels


def _write_case(job) -> None:
    path_img, path_lab, seed, i, shape, spacing, lesions, diameters = job
    vol, lab = make_whole_scan(np.random.default_rng([seed, i]), shape, spacing, lesions, diameters)
    affine = volume_affine(shape, spacing)
    atomic_write_bytes(path_img, _nifti_bytes(np.clip(np.rint(vol), -1024, 3071), affine, np.int16))
    atomic_write_bytes(path_lab, _nifti_bytes(lab, affine, np.uint8))


def write_whole_scan_dataset(root, n_train: int, n_val: int, n_test: int, shape=WHOLE_SCAN_SHAPE,
                             spacing=WHOLE_SCAN_SPACING, seed: int = 0, lesions=(2, 5),
                             diameters=(3.0, 20.0), workers: int = 1) -> Path:
    """Write whole scans from :func:`make_whole_scan` in nnU-Net's raw layout (needs nibabel).

    ``imagesTr``/``labelsTr`` hold the train and val cases, ``imagesTs``/``labelsTs`` the test
    cases; ``dataset.json`` (channel CT, labels background 0, lesion 1) and ``splits_final.json``
    with one fold. Case ``i`` depends only on ``(seed, i)``; ``workers`` processes write cases
    side by side. Returns ``root``.
    """
    root, cases, n_tr = start_nnunet_dataset(root, (n_train, n_val, n_test), "scan")
    jobs = [(*case_files(root, case, i < n_tr), seed, i, tuple(shape), tuple(spacing), tuple(lesions),
             tuple(diameters)) for i, case in enumerate(cases)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            list(pool.map(_write_case, jobs))
    else:
        for job in jobs:
            _write_case(job)
    dataset = {"name": "SyntheticWholeScan",
               "description": "Generated whole CT sections with a few small lesions darker than their surroundings",
               "channel_names": {"0": "CT"}, "labels": dict(WHOLE_SCAN_LABELS)}
    return finish_nnunet_dataset(root, dataset, cases, n_train, n_val)


__all__ = ["WHOLE_SCAN_LABELS", "WHOLE_SCAN_SHAPE", "WHOLE_SCAN_SPACING", "make_whole_scan",
           "write_whole_scan_dataset"]
