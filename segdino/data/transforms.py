"""Paired image + mask augmentations, reproducible from a ``torch.Generator``.

Every transform is called as ``t(image, mask, generator=None) -> (image, mask)`` with

- ``image``: (3, H, W) float in [0, 1] (not yet normalised),
- ``mask``: (H, W) int64 labels,

and draws every random number from ``generator`` (the global torch RNG when None). Seeding a
generator per sample, e.g. ``torch.Generator().manual_seed(sample_seed(seed, epoch, index))``
(:func:`segdino.data.dataset.sample_seed`), makes the augmentation of each sample the same
whatever the DataLoader's worker count or order.

The pixel work is done by torchvision's ``transforms.v2.functional`` kernels (bilinear for the
image, nearest for the mask, so labels stay labels); torchvision is a core dependency of
SegDINO, imported on first use so that inference alone never loads it. The random
parameters are drawn here, because torchvision's random transforms read the global RNG.

Two recipes:

- :func:`paper_transforms`: the SegDINO authors' training augmentation: horizontal flip,
  vertical flip, rotation by a whole number of degrees in [-15, 15], colour jitter (brightness
  0.2, contrast 0.2, saturation 0.1, hue 0.05), each applied with probability 0.5.
- :func:`intensity_transforms` (``segdino-intensity``): for volumes:
  the flips and warp, then intensity scale/shift, gamma, Gaussian noise and blur; no colour jitter.
  Training picks it in place of ``segdino`` for volumes, and ``paper`` for greyscale 2D images
  (:func:`recipe_for_modality`, :func:`single_channel_images`), and records it in config.yaml.
  ``segdino-intensity-rigid`` is the same without the warp's zoom and shift.
- :func:`segdino_transforms`: ours: the flips, one affine warp (rotation +-15 deg, zoom
  0.85-1.2, shift up to 5%) with probability 0.8, and colour jitter with a milder hue change
  (0.02 of a turn, by :func:`rotate_hue`) with probability 0.8. One warp interpolates the image
  once, where rotation then crop would twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as TF

from ..errors import ConfigError

PairTransform = Callable[..., tuple[torch.Tensor, torch.Tensor]]

_TV = None


def _tv():
    """torchvision's v2 functional kernels and InterpolationMode, imported on first use."""
    global _TV
    if _TV is None:
        try:
            import torchvision.transforms.v2.functional as F
            from torchvision.transforms import InterpolationMode
        except ImportError as e:
            raise ConfigError(
                f"augmentations need torchvision, a dependency of segdino that is missing or broken here ({e}); "
                "reinstall segdino with its dependencies (or train with --augment none)"
            ) from None
        _TV = (F, InterpolationMode)
    return _TV


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * _rand(generator)


def _check(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a (3, H, W) float tensor, got {tuple(image.shape)} {image.dtype}")
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask must be (H, W) = {tuple(image.shape[1:])}, got {tuple(mask.shape)}")


@dataclass
class RandomFlip:
    """Mirror image and mask left-right (``horizontal``) or top-bottom, with probability ``p``."""

    horizontal: bool = True
    p: float = 0.5

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        dim = -1 if self.horizontal else -2
        return image.flip(dim), mask.flip(dim)


@dataclass
class RandomAffine:
    """Rotate, zoom and shift image and mask together (probability ``p``).

    ``degrees``: rotation drawn from [-degrees, degrees] (whole degrees when ``whole_degrees``);
    ``scale``: zoom factor drawn log-uniformly from the range; ``translate``: shift drawn from
    [-t, t] of the width/height. Pixels brought in from outside are 0 in image and mask.
    """

    degrees: float = 15.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    p: float = 0.5
    whole_degrees: bool = False

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        F, Mode = _tv()
        if self.whole_degrees:
            d = int(self.degrees)
            angle = float(int(torch.randint(-d, d + 1, (), generator=generator)))
        else:
            angle = _uniform(-self.degrees, self.degrees, generator)
        lo, hi = self.scale
        scale = math.exp(_uniform(math.log(lo), math.log(hi), generator)) if hi > lo else float(lo)
        h, w = image.shape[-2:]
        tx = round(_uniform(-self.translate, self.translate, generator) * w) if self.translate else 0
        ty = round(_uniform(-self.translate, self.translate, generator) * h) if self.translate else 0
        if angle == 0.0 and scale == 1.0 and tx == 0 and ty == 0:
            return image, mask
        kw = dict(angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0])
        image = F.affine(image, interpolation=Mode.BILINEAR, fill=0.0, **kw)
        mask = F.affine(mask[None], interpolation=Mode.NEAREST, fill=0, **kw)[0]
        return image, mask


def rotate_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Turn the colours of a (3, H, W) image about the grey axis by ``shift`` of a full turn.

    The rotation matrix (Rodrigues' formula about (1, 1, 1)/sqrt(3)) moves pure hues as an HSV
    hue shift does (red -> green at 1/3) and leaves greys unchanged; it is one 3x3 product,
    about 20 times cheaper than torchvision's RGB -> HSV -> RGB round trip.
    """
    th = 2.0 * math.pi * shift
    c, s = math.cos(th), math.sin(th)
    a, b = (1.0 - c) / 3.0, math.sqrt(1.0 / 3.0) * s
    m = torch.tensor([[c + a, a - b, a + b],
                      [a + b, c + a, a - b],
                      [a - b, a + b, c + a]], dtype=image.dtype, device=image.device)
    return (m @ image.reshape(3, -1)).reshape(image.shape).clamp_(0.0, 1.0)


_HUE_OFFSETS = (5.0, 3.0, 1.0)  # where red, green and blue sit on the hue circle, in sixths of a turn


def shift_hue_hsv(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Shift the HSV hue of a (3, H, W) image in [0, 1] by ``shift`` of a full turn.

    The same numbers as torchvision's ``adjust_hue`` (within float rounding, ~1e-6) at about a third
    of its cost: a hue shift keeps each pixel's largest and smallest channel, so the result is
    computed from those two and the hue in one closed form (channel ``n`` is
    ``max - chroma * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + hue) mod 6``) instead of a full
    RGB -> HSV -> RGB round trip.
    """
    hi, lo = image.amax(0), image.amin(0)
    chroma = hi - lo
    r, g, b = image.unbind(0)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(hi == r, (g - b) / safe,
                      torch.where(hi == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))  # sixths
    hue = torch.remainder(hue + 6.0 * shift, 6.0)
    offsets = torch.tensor(_HUE_OFFSETS, dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = torch.remainder(offsets + hue, 6.0)
    return hi - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


@dataclass
class ColorJitter:
    """Brightness, contrast, saturation and hue changes in random order (probability ``p``).

    Factors are drawn as torchvision's ColorJitter draws them: brightness, contrast and
    saturation from [1 - x, 1 + x], hue shift from [-hue, hue] of a turn. ``hue_mode`` "hsv"
    shifts hue in HSV as torchvision does (:func:`shift_hue_hsv`); "rotate" uses :func:`rotate_hue`.
    Saturation and hue leave a grey image (equal channels) unchanged, so they are skipped there. The mask is
    untouched.
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.05
    p: float = 0.5
    hue_mode: str = "hsv"

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        F, _ = _tv()
        order = torch.randperm(4, generator=generator).tolist()
        b = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness, generator)
        c = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast, generator)
        s = _uniform(max(0.0, 1 - self.saturation), 1 + self.saturation, generator)
        hshift = _uniform(-self.hue, self.hue, generator)
        grey = bool(torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))
        for op in order:
            if op == 0 and self.brightness:
                image = F.adjust_brightness(image, b)
            elif op == 1 and self.contrast:
                image = F.adjust_contrast(image, c)
            elif op == 2 and self.saturation and not grey:
                image = F.adjust_saturation(image, s)
            elif op == 3 and self.hue and not grey:
                image = shift_hue_hsv(image, hshift) if self.hue_mode == "hsv" else rotate_hue(image, hshift)
        return image.clamp_(0.0, 1.0), mask


class Compose:
    """Apply paired transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[PairTransform]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) float image, (H, W) int64 mask -> the same, augmented."""
        _check(image, mask)
        for t in self.transforms:
            image, mask = t(image, mask, generator=generator)
        return image, mask

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def paper_transforms() -> Compose:
    """The authors' augmentation (see the module doc); checks torchvision is installed."""
    _tv()
    return Compose([
        RandomFlip(horizontal=True, p=0.5),
        RandomFlip(horizontal=False, p=0.5),
        RandomAffine(degrees=15, p=0.5, whole_degrees=True),
        ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.05, p=0.5),
    ])


def segdino_transforms() -> Compose:
    """Our augmentation (see the module doc); checks torchvision is installed."""
    _tv()
    return Compose([
        RandomFlip(horizontal=True, p=0.5),
        RandomFlip(horizontal=False, p=0.5),
        RandomAffine(degrees=15, scale=(0.85, 1.2), translate=0.05, p=0.8),
        ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02, p=0.8, hue_mode="rotate"),
    ])


# --- volumes and single-channel images ----------------------------------------------------------
# Their three channels are one grey image or neighbouring slices (2.5D), not colours: hue and
# saturation mean nothing there and every change hits all channels alike. Ranges follow nnU-Net's
# defaults for the same augmentations.


@dataclass
class IntensityScaleShift:
    """``x * a + b`` with a in ``scale`` and b in ``shift`` (same for every channel), probability ``p``."""

    scale: tuple[float, float] = (0.75, 1.25)
    shift: tuple[float, float] = (-0.1, 0.1)
    p: float = 0.3

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        a = _uniform(*self.scale, generator)
        b = _uniform(*self.shift, generator)
        return (image * a + b).clamp_(0.0, 1.0), mask


@dataclass
class RandomGamma:
    """``x ** g`` with log g uniform in log ``gamma`` (probability ``p``)."""

    gamma: tuple[float, float] = (0.7, 1.5)
    p: float = 0.3

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        g = math.exp(_uniform(math.log(self.gamma[0]), math.log(self.gamma[1]), generator))
        return image.clamp(0.0, 1.0).pow_(g), mask


@dataclass
class GaussianNoise:
    """Additive Gaussian noise of a std drawn from [0, ``sigma``] (probability ``p``)."""

    sigma: float = 0.03
    p: float = 0.15

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        s = _uniform(0.0, self.sigma, generator)
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype) * s
        return (image + noise.to(image.device)).clamp_(0.0, 1.0), mask


@dataclass
class GaussianBlur:
    """In-plane Gaussian blur with sigma drawn from ``sigma`` pixels (probability ``p``)."""

    sigma: tuple[float, float] = (0.5, 1.0)
    p: float = 0.2

    def __call__(self, image, mask, generator=None):
        if _rand(generator) >= self.p:
            return image, mask
        s = _uniform(*self.sigma, generator)
        r = max(1, int(math.ceil(3 * s)))
        x = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
        k = torch.exp(-0.5 * (x / s) ** 2)
        k = k / k.sum()
        c = image.shape[0]
        out = TF.conv2d(TF.pad(image[None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                       groups=c)
        out = TF.conv2d(TF.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return out[0].clamp_(0.0, 1.0), mask


def intensity_transforms(zoom_shift: bool = True):
    """Flips, one affine warp, then intensity scale/shift, gamma, noise and blur (no colour changes).
    ``zoom_shift=False`` (``segdino-intensity-rigid``) keeps the warp's rotation and drops its zoom
    and shift, so the anatomy keeps its size in pixels."""
    _tv()
    warp = dict(scale=(0.85, 1.2), translate=0.05) if zoom_shift else {}
    return Compose([
        RandomFlip(horizontal=True, p=0.5),
        RandomFlip(horizontal=False, p=0.5),
        RandomAffine(degrees=15, p=0.5, **warp),
        IntensityScaleShift(),
        RandomGamma(),
        GaussianNoise(),
        GaussianBlur(),
    ])


RECIPES = {"paper": paper_transforms, "segdino": segdino_transforms, "segdino-intensity": intensity_transforms,
           "segdino-intensity-rigid": lambda: intensity_transforms(zoom_shift=False)}


def recipe_for_modality(name: str | None, single_channel: bool, volume: bool = False) -> str | None:
    """The augmentation ``name`` as it applies to the data; only ``segdino`` changes:

    - volumes (their three channels are neighbouring slices): ``segdino-intensity``;
    - greyscale 2D images (ultrasound): ``paper``, flips and rotation without zoom or shift, and
      brightness/contrast jitter (its hue and saturation leave grey unchanged). Chosen on DDTI's
      validation split over three seeds: Dice 0.869 against 0.859 with ``segdino-intensity``,
      whose zoom/shift warp changes the size of the speckle and the nodules;
    - colour images: ``segdino``."""
    if name != "segdino":
        return name
    if volume:
        return "segdino-intensity"
    return "paper" if single_channel else name


def single_channel_images(paths: Sequence, sample: int = 8) -> bool:
    """Whether 2D image files hold one channel: up to ``sample`` of them, spread over ``paths``,
    are decoded; all must be greyscale, or RGB with three equal channels (ultrasound is often
    stored so). False when ``paths`` is empty."""
    import numpy as np

    from .imageio import read_image

    paths = list(paths)
    if not paths:
        return False
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)))})
    for i in picks:
        rgb = read_image(paths[i])  # (H, W, 3) uint8, greyscale files repeated over the channels
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            return False
    return True


def build_transforms(name: str | None) -> Compose | None:
    """``"paper"``, ``"segdino"``, ``"segdino-intensity"`` (volumes and grey images: no colour
    jitter, intensity scale/shift, gamma, noise and blur instead) or ``"none"``/None."""
    if name in (None, "none"):
        return None
    if name not in RECIPES:
        raise ConfigError(f"unknown augmentation {name!r}; choose {', '.join(RECIPES)} or none")
    return RECIPES[name]()
