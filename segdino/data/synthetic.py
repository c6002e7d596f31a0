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

:func:`best_global_threshold_dice` and :func:`best_volume_threshold_dice` (in
:mod:`segdino.data.baselines`) measure how far brightness alone gets. The volumes are made in
:mod:`segdino.data.synthetic_volumes`; both are importable from here too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..fileio import atomic_write_bytes, atomic_write_text
# The volumes and the threshold baselines have modules of their own; their names stay importable here.
from .baselines import best_global_threshold_dice, best_volume_threshold_dice
from .synthetic_volumes import (
    ORGAN_TEXTURE_HU,
    VOLUME_LABELS,
    VOLUME_WINDOW,
    make_volume,
    make_volumes,
    prepare_generated_folder,
    volume_affine,
    write_volume_dataset,
)

# Lesions per 2D image, 0..3; the empty share stays small because an all-background prediction scores
# Dice 1 on every empty image, which would lift the threshold baseline.
LESION_COUNT_PROBS = (0.1, 0.45, 0.3, 0.15)
SMALL_LESION_PROB = 0.25  # share of lesions 8-15 px across; the rest are >= 18 px
SMALL_DIAMETER = (8.0, 15.0)


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


def write_dataset(root, n_train: int, n_val: int, n_test: int, size=(64, 64), seed: int = 0) -> Path:
    """Write a synthetic 2D dataset: ``images/<stem>.png``, ``masks/<stem>.png`` (0/255), ``splits.json``.

    ``splits.json`` is ``{"train": [...], "val": [...], "test": [...]}`` of image stems (the 2D layout of
    docs/FORMATS.md). The same ``seed`` gives the same files; returns ``root`` as a :class:`Path`.
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
    prepare_generated_folder(root, ("images", "masks"), {"images": files, "masks": files})

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


__all__ = ["ORGAN_TEXTURE_HU", "VOLUME_LABELS", "VOLUME_WINDOW", "best_global_threshold_dice",
           "best_volume_threshold_dice", "make_image", "make_images", "make_volume", "make_volumes",
           "volume_affine", "write_dataset", "write_volume_dataset"]
