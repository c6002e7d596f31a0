"""Synthetic images and CT-like volumes whose lesions cannot be found by brightness.

The demo and the tests need data that a segmentation model can learn in minutes on a CPU, yet that a
single grey-level threshold cannot solve, so that a good score means the model has learnt something
about texture and shape:

* 2D: the background is fine isotropic texture (period about 3 px); each lesion is coarser oriented
  texture (period about 7-11 px) with exactly the background's mean and standard deviation, inside an
  irregular blob. Both textures are linearly filtered Gaussian noise, so their grey-level histograms
  are the same; only the spatial structure differs. A mild illumination gradient, a global tint and
  sensor noise are added on top. Texture scales are in pixels: generate at the resolution the model
  works at (resizing afterwards blurs the fine background texture away).
* 3D: an air-surrounded body of fat and soft tissue, an organ with fine texture, and small lesions
  inside it with coarse texture and almost the organ's attenuation (HU), on an anisotropic grid.

:func:`best_global_threshold_dice` and :func:`best_volume_threshold_dice` measure how far brightness
alone gets: the best single global threshold (either polarity), chosen on the evaluated data itself.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..fileio import atomic_write_bytes, atomic_write_text

# Lesions per 2D image, 0..3; the empty share stays small because an all-background prediction scores
# Dice 1 on every empty image, which would lift the threshold baseline.
LESION_COUNT_PROBS = (0.1, 0.45, 0.3, 0.15)
SMALL_LESION_PROB = 0.25  # share of lesions 8-15 px across; the rest are >= 18 px
SMALL_DIAMETER = (8.0, 15.0)

VOLUME_LABELS = {"background": 0, "organ": 1, "lesion": 2}
# A soft-tissue window that shows organ, lesions and fat; a sensible intensity window for the volumes.
VOLUME_WINDOW = (-160.0, 240.0)
ORGAN_TEXTURE_HU = 20.0  # spread of organ and lesion texture; lesions sit a few HU below the organ


# --------------------------------------------------------------------------------------------
# Textures


def _spectral_noise(rng: np.random.Generator, shape: tuple[int, int], amplitude) -> np.ndarray:
    """Gaussian noise shaped by ``amplitude(fy, fx)`` (cycles/px), scaled to unit std."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    field = np.fft.irfft2(np.fft.rfft2(white) * amplitude(fy, fx), s=shape)
    return field / max(float(field.std()), 1e-8)


def _fine_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Isotropic band-pass noise, period about 2.8-3.6 px, no low frequencies."""
    f0 = rng.uniform(0.28, 0.36)
    return _spectral_noise(rng, shape, lambda fy, fx: np.exp(-((np.hypot(fy, fx) - f0) ** 2) / (2 * 0.07**2)))


def _coarse_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Oriented band-pass noise: wavy stripes of period 7-11 px, from clean stripes to mottled blobs."""
    f0 = 1.0 / rng.uniform(7.0, 11.0)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    radial_w = rng.uniform(0.015, 0.03)
    tangential_w = f0 * rng.uniform(0.15, 0.6)  # small: straight stripes; large: blobs

    def amplitude(fy, fx):
        along = fx * c + fy * s
        across = -fx * s + fy * c
        bump = np.exp(-(across**2) / (2 * tangential_w**2))
        return bump * (np.exp(-((along - f0) ** 2) / (2 * radial_w**2)) + np.exp(-((along + f0) ** 2) / (2 * radial_w**2)))

    return _spectral_noise(rng, shape, amplitude)


def _standardise(field: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Zero mean and unit std over ``region`` (so a lesion matches the background's statistics)."""
    vals = field[region]
    if vals.size < 2:
        return field - (vals.mean() if vals.size else 0.0)
    return (field - vals.mean()) / max(float(vals.std()), 1e-8)


# --------------------------------------------------------------------------------------------
# Shapes


def _blob(rng: np.random.Generator, shape: tuple[int, int], centre, diameter: float) -> np.ndarray:
    """An irregular blob: an ellipse whose radius varies with angle by a few random harmonics."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    rot = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.65, 1.0)
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    angle = np.arctan2(v, u)
    radius = np.full_like(angle, diameter / 2.0)
    wobble = np.ones_like(angle)
    for k in range(2, 6):
        wobble += rng.uniform(0.0, 0.5 / k) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) <= radius * wobble


def _lesion_diameter(rng: np.random.Generator, size: tuple[int, int]) -> float:
    if rng.random() < SMALL_LESION_PROB:
        return rng.uniform(*SMALL_DIAMETER)
    hi = max(20.0, 0.4 * min(size))
    return rng.uniform(18.0, hi)


# --------------------------------------------------------------------------------------------
# 2D images


def _parse_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise DataError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 16 or w < 16:
        raise DataError(f"synthetic images need at least 16x16 pixels, got {h}x{w}")
    return h, w


def make_image(rng: np.random.Generator, size=(64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image with 0-3 lesions that differ from the background by texture and shape only.

    Args:
        rng: the random generator (the image is a pure function of its state).
        size: ``(H, W)`` or one int, at least 16.

    Returns:
        ``image`` (H, W, 3) uint8 RGB and ``mask`` (H, W) uint8 with 1 = lesion, 0 = background.
    """
    h, w = _parse_size(size)
    n_lesions = int(rng.choice(len(LESION_COUNT_PROBS), p=LESION_COUNT_PROBS))
    mask = np.zeros((h, w), dtype=bool)
    lesions: list[np.ndarray] = []
    for _ in range(n_lesions):
        diameter = _lesion_diameter(rng, (h, w))
        # Keep most of the blob inside the image; retry a few times to avoid piling onto earlier ones.
        for _attempt in range(6):
            margin = min(diameter * 0.35, min(h, w) / 2 - 1)
            centre = (rng.uniform(margin, h - 1 - margin), rng.uniform(margin, w - 1 - margin))
            blob = _blob(rng, (h, w), centre, diameter)
            if not (blob & mask).any():
                break
        blob &= ~mask
        if blob.sum() < 12:  # too small to mean anything at this size
            continue
        lesions.append(blob)
        mask |= blob

    background = _fine_texture(rng, (h, w))
    field = _standardise(background, ~mask) if (~mask).any() else background
    if lesions:
        lesion_field = np.zeros((h, w))
        for blob in lesions:
            # Each lesion gets its own coarse texture with exactly the background's mean and std.
            lesion_field[blob] = _standardise(_coarse_texture(rng, (h, w)), blob)[blob]
        if (~mask).any():
            # Continue each lesion's texture just past its edge, so the soft edge blends two textures.
            idx = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
            lesion_field = lesion_field[idx[0], idx[1]]
        # A soft edge about a pixel wide rather than a cut-out look; the mask itself stays hard.
        soft = np.clip(ndimage.gaussian_filter(mask.astype(np.float64), 0.6), 0, 1)
        soft[mask] = np.maximum(soft[mask], 0.8)
        field = (1 - soft) * field + soft * lesion_field

    mean = rng.uniform(90, 165)
    contrast = rng.uniform(18, 30)
    grey = mean + contrast * field
    # Illumination: a linear ramp in a random direction and a broad vignette.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = yy / max(h - 1, 1) - 0.5, xx / max(w - 1, 1) - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    grey += rng.uniform(0, 30) * (xx * np.cos(phi) + yy * np.sin(phi))
    grey -= rng.uniform(0, 25) * (xx**2 + yy**2) * 2
    grey += rng.normal(0, rng.uniform(2, 5), size=(h, w))
    tint = rng.uniform(0.92, 1.06, size=3)
    tint /= tint @ np.array([0.299, 0.587, 0.114])  # keep the luma equal to ``grey``
    rgb = np.clip(np.rint(grey[..., None] * tint[None, None, :]), 0, 255).astype(np.uint8)
    return rgb, mask.astype(np.uint8)


def make_images(n: int, size=(64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images from :func:`make_image`; image ``i`` depends only on ``(seed, i)``.

    Returns:
        ``images`` (n, H, W, 3) uint8 and ``masks`` (n, H, W) uint8 in {0, 1}.
    """
    h, w = _parse_size(size)
    images = np.zeros((n, h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        images[i], masks[i] = make_image(np.random.default_rng([seed, i]), (h, w))
    return images, masks


def _prepare_root(root: Path, sub: Sequence[str], names: dict[str, set[str]]) -> None:
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


def write_dataset(root, n_train: int, n_val: int, n_test: int, size=(64, 64), seed: int = 0) -> Path:
    """Write a synthetic 2D dataset: ``images/<stem>.png``, ``masks/<stem>.png`` (0/255), ``splits.json``.

    ``splits.json`` is ``{"train": [...], "val": [...], "test": [...]}`` of image stems (CONTRACTS,
    "Datasets"). The same ``seed`` gives the same files; returns ``root`` as a :class:`Path`.
    """
    from PIL import Image

    counts = (n_train, n_val, n_test)
    if any(int(c) != c or c < 0 for c in counts):
        raise DataError(f"dataset sizes must be non-negative integers, got {counts}")
    h, w = _parse_size(size)
    root = Path(root)
    total = sum(counts)
    width = max(4, len(str(total - 1)))
    stems = [f"synth_{i:0{width}d}" for i in range(total)]
    files = {f"{s}.png" for s in stems}
    _prepare_root(root, ("images", "masks"), {"images": files, "masks": files})

    def png(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    for i, stem in enumerate(stems):
        image, mask = make_image(np.random.default_rng([seed, i]), (h, w))
        atomic_write_bytes(root / "images" / f"{stem}.png", png(image))
        atomic_write_bytes(root / "masks" / f"{stem}.png", png(mask * np.uint8(255)))
    splits = {
        "train": stems[:n_train],
        "val": stems[n_train : n_train + n_val],
        "test": stems[n_train + n_val :],
    }
    atomic_write_text(root / "splits.json", json.dumps(splits, indent=1) + "\n")
    return root


# --------------------------------------------------------------------------------------------
# Threshold baseline


def _per_case_threshold_dice(values: list[np.ndarray], fg: list[np.ndarray], nbins: int) -> np.ndarray:
    """Dice of every threshold, both polarities, for every case.

    ``values`` are integer bins in [0, nbins). Threshold j (0..nbins) sits just below bin j:
    "above" predicts bins >= j, "below" predicts bins < j. Returns (n_cases, 2, nbins + 1).
    """
    n = len(values)
    out = np.empty((n, 2, nbins + 1))
    for i, (v, g) in enumerate(zip(values, fg)):
        all_hist = np.bincount(v, minlength=nbins).astype(np.float64)
        fg_hist = np.bincount(v[g], minlength=nbins).astype(np.float64)
        # Counts of pixels in bins >= j, for j = 0..nbins (last = none).
        p_above = np.concatenate([np.cumsum(all_hist[::-1])[::-1], [0.0]])
        tp_above = np.concatenate([np.cumsum(fg_hist[::-1])[::-1], [0.0]])
        total_p, total_g = p_above[0], tp_above[0]
        for k, (p, tp) in enumerate(((p_above, tp_above), (total_p - p_above, total_g - tp_above))):
            denom = p + total_g
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 1.0)
            out[i, k] = d
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"expected an HxW or HxWx3 image, got shape {np.asarray(image).shape}")
    return np.clip(np.rint(arr), 0, 255).astype(np.int64)


def _binary(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., :3].mean(axis=2)
    if m.dtype == bool:
        return m
    # CONTRACTS: {0, 1} masks are read as such, 8-bit masks are foreground above 127.
    return m > (0 if m.max(initial=0) <= 1 else 127)


def best_global_threshold_dice(images, masks) -> tuple[float, float, str]:
    """The best mean per-image Dice that one global grey-level threshold reaches on these images.

    The grey level is the luma ``0.299 R + 0.587 G + 0.114 B`` rounded to 0..255. Every threshold
    ``t`` in -0.5, 0.5, ..., 255.5 is tried with both polarities ("above": lesion = grey > t,
    "below": lesion = grey < t), Dice is computed per image (1 when prediction and mask are both
    empty, as in CONTRACTS "Metrics") and averaged, and the best is kept: an optimistic baseline,
    since the threshold is chosen on the very images it is scored on.

    Args:
        images: a sequence of (H, W, 3) or (H, W) uint8 arrays, or one (N, H, W[, 3]) array.
        masks: matching (H, W) masks ({0, 1}, {0, 255} or bool).

    Returns:
        ``(dice, threshold, polarity)``, polarity ``"above"`` or ``"below"``.
    """
    images = list(images)
    masks = list(masks)
    if len(images) != len(masks) or not images:
        raise DataError(f"need matching, non-empty lists of images and masks, got {len(images)} and {len(masks)}")
    values, fg = [], []
    for img, m in zip(images, masks):
        g = _grey(img)
        b = _binary(m)
        if g.shape != b.shape:
            raise DataError(f"image of size {g.shape} has a mask of size {b.shape}")
        values.append(g.ravel())
        fg.append(b.ravel())
    curves = _per_case_threshold_dice(values, fg, 256).mean(axis=0)
    k, j = np.unravel_index(int(np.argmax(curves)), curves.shape)
    return float(curves[k, j]), float(j) - 0.5, ("above", "below")[k]


def best_volume_threshold_dice(volumes, labels, label: int = 2) -> tuple[float, float, str]:
    """The best mean per-volume Dice of class ``label`` that one global intensity threshold reaches.

    Intensities are binned to whole units (HU for CT); thresholds lie between bins, both polarities
    are tried and the threshold is chosen on these volumes themselves, as in
    :func:`best_global_threshold_dice`.

    Args:
        volumes: a sequence of (D, H, W) arrays.
        labels: matching (D, H, W) label arrays.
        label: the class scored.

    Returns:
        ``(dice, threshold, polarity)``, polarity ``"above"`` (class = value > threshold) or ``"below"``.
    """
    volumes = [np.asarray(v, dtype=np.float64) for v in volumes]
    labels = [np.asarray(lab) for lab in labels]
    if len(volumes) != len(labels) or not volumes:
        raise DataError(f"need matching, non-empty lists of volumes and labels, got {len(volumes)} and {len(labels)}")
    for v, lab in zip(volumes, labels):
        if v.shape != lab.shape:
            raise DataError(f"volume of shape {v.shape} has labels of shape {lab.shape}")
    lo = int(np.floor(min(float(v.min()) for v in volumes)))
    hi = int(np.floor(max(float(v.max()) for v in volumes)))
    nbins = hi - lo + 1
    values = [(np.floor(v).astype(np.int64) - lo).ravel() for v in volumes]
    fg = [(lab == label).ravel() for lab in labels]
    curves = _per_case_threshold_dice(values, fg, nbins).mean(axis=0)
    k, j = np.unravel_index(int(np.argmax(curves)), curves.shape)
    # Bin j starts at value lo + j, so the cut between bins j-1 and j is at lo + j.
    return float(curves[k, j]), float(lo + j), ("above", "below")[k]


# --------------------------------------------------------------------------------------------
# 3D volumes


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
    try:
        import nibabel  # noqa: F401
    except ImportError:
        raise DataError("writing NIfTI volumes needs nibabel: pip install 'segdino[volumes]'") from None
    counts = (n_train, n_val, n_test)
    if any(int(c) != c or c < 0 for c in counts):
        raise DataError(f"dataset sizes must be non-negative integers, got {counts}")
    shape = _parse_shape(shape)
    root = Path(root)
    total = sum(counts)
    width = max(3, len(str(total - 1)))
    cases = [f"synth_{i:0{width}d}" for i in range(total)]
    tr, ts = cases[: n_train + n_val], cases[n_train + n_val :]
    names = {
        "imagesTr": {f"{c}_0000.nii.gz" for c in tr},
        "labelsTr": {f"{c}.nii.gz" for c in tr},
        "imagesTs": {f"{c}_0000.nii.gz" for c in ts},
        "labelsTs": {f"{c}.nii.gz" for c in ts},
    }
    _prepare_root(root, tuple(names), names)
    affine = volume_affine(shape, spacing)
    for i, case in enumerate(cases):
        vol, lab = make_volume(np.random.default_rng([seed, i]), shape, spacing)
        img_dir, lab_dir = ("imagesTr", "labelsTr") if i < len(tr) else ("imagesTs", "labelsTs")
        hu = np.clip(np.rint(vol), -1024, 3071)
        atomic_write_bytes(root / img_dir / f"{case}_0000.nii.gz", _nifti_bytes(hu, affine, np.int16))
        atomic_write_bytes(root / lab_dir / f"{case}.nii.gz", _nifti_bytes(lab, affine, np.uint8))
    dataset = {
        "name": "SyntheticCT",
        "description": "Generated CT-like volumes: an organ with small lesions that differ by texture",
        "channel_names": {"0": "CT"},
        "labels": dict(VOLUME_LABELS),
        "numTraining": len(tr),
        "file_ending": ".nii.gz",
    }
    atomic_write_text(root / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    splits = [{"train": cases[:n_train], "val": cases[n_train : n_train + n_val]}]
    atomic_write_text(root / "splits_final.json", json.dumps(splits, indent=1) + "\n")
    return root
