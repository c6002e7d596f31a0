"""Planning patch training from the data: target in-plane spacing and patch size.

As nnU-Net plans its 2D configuration: the target spacing is the median in-plane voxel size of
the training cases (``--spacing auto``) unless given; the patch size is the median slice size
after resampling, rounded up to the model's token size (16) and capped (default 256), unless
given. Slices smaller than a patch are padded; a patch that fits no volume at all is refused.

The default plan (no ``--spacing`` or ``--patch-size``) adds one rule for a ViT: the backbone
sees the image in 16 px tokens and the decoder works from those tokens alone, so a slice a few
tokens across starves it. Such slices are crops around the object (LIDC nodule crops of 43-89 px
at 0.46-0.98 mm: 48 px, 3x3 tokens, at the median spacing), not whole scans. When the median
slice at the median spacing is under :data:`MIN_TOKENS` tokens across its shorter side, the
plan trains whole slices resized to the model's input instead of patches
(:func:`crop_plan`). Measured on the LIDC crops (one H200, 30 x 100 steps): whole slices
resized to 256 px reach per-volume test Dice 0.83, patches at the median spacing refined 3x
0.64-0.68 (three seeds), at 0.17 mm (12 tokens) 0.69; the crops are cut around each nodule, so
their size follows the nodule's (r = 0.72) and resizing the whole crop shows every nodule at a
similar scale, which a fixed spacing cannot.

A second default rule is for small objects in whole scans: the same tokens cannot code an object
much smaller than one of them. When the training labels' objects are small, the default plan
refines the median spacing until the median object of the class with the smallest objects is
:data:`OBJECT_TOKENS` tokens across (its largest in-plane cross-section, as an equivalent circle),
by at most :data:`MAX_REFINE` (:func:`object_refinement`; ``--spacing auto`` keeps the plain
median). Measured on generated whole scans of 512x512 at 0.7 mm with 3-20 mm lesions (one H200,
``vits16``, the same budget): patches at the median 0.7 mm (a median lesion about one token
across) reach per-volume test Dice 0.03, at 0.35 mm (two tokens) 0.57; this rule plans 0.35 mm
there.

Volume training uses a plan by default (:func:`wants_patches`); ``--image-size`` alone keeps the
whole slices resized to that size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..resample import check_spacing, resampled_shape
from .io import is_nifti_path, nifti_header_info, read_volume
from .layouts import VolumeCase
from .slicing import resolve_axis, validate_axis

TOKEN = 16
MIN_TOKENS = 8  # a median slice fewer tokens across than this is a crop: trained whole, resized
OBJECT_TOKENS = 2.0  # the default plan's smallest median object, in tokens across
MAX_REFINE = 4.0  # at most this much finer than the median spacing
MAX_OBJECT_CASES = 64  # label volumes read to measure objects (evenly spaced over the cases)


def wants_patches(cfg) -> bool:
    """Whether volume training (a :class:`~segdino.train_config.TrainConfig`) runs on planned patches:
    yes with ``--spacing`` or ``--patch-size``, and by default; ``--image-size`` alone asks for
    whole slices resized to that size instead."""
    if cfg.spacing is not None or cfg.patch_size is not None:
        return True
    return "image_size" not in cfg.extra.get("explicit", ())


@dataclass
class VolumePlan:
    """What patch training uses: target in-plane ``spacing`` (rows, columns mm), ``patch_size``."""

    spacing: tuple[float, float]
    patch_size: tuple[int, int]
    spacing_source: str  # "median of N training cases" or "--spacing"
    patch_source: str
    median_source_spacing: tuple[float, float]
    median_shape: tuple[int, int]  # median slice size after resampling
    largest_shape: tuple[int, int]
    cases: int

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"plan: spacing {self.spacing[0]:.4g} x {self.spacing[1]:.4g} mm ({self.spacing_source}), "
                f"patch {self.patch_size[0]}x{self.patch_size[1]} px ({self.patch_source}); "
                f"median slice {self.median_shape[0]}x{self.median_shape[1]} px at that spacing, "
                f"{self.cases} cases")


def case_geometry(case: VolumeCase, axis: str | int) -> tuple[tuple[float, float], tuple[int, int], int]:
    """(in-plane spacing (rows, columns) mm, slice shape (H, W), slicing array axis) of a case.

    Raises:
        DataError naming the image file when its header's spacing is zero, negative or not finite.
    """
    if case.image.is_file() and is_nifti_path(case.image):
        shape, affine = nifti_header_info(case.image)
        shape = tuple(int(s) for s in (tuple(shape) + (1, 1, 1))[:3])
    else:
        vol = read_volume(case.image, case.channel)
        shape, affine = vol.shape, vol.affine
    sp, a, rest = _in_plane(affine, axis, case.image)
    return sp, (shape[rest[0]], shape[rest[1]]), a


def _in_plane(affine, axis: str | int, name) -> tuple[tuple[float, float], int, list[int]]:
    """(in-plane spacing (rows, columns) mm, slicing array axis, the two in-plane array axes) of a
    volume with ``affine``; a zero, negative or non-finite spacing is a DataError naming ``name``."""
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    check_spacing(spacing, str(name))
    a = resolve_axis(validate_axis(axis), affine)
    rest = [i for i in range(3) if i != a]
    return (float(spacing[rest[0]]), float(spacing[rest[1]])), a, rest


def _round_up(n: float, to: int = TOKEN) -> int:
    return max(to, int(math.ceil(n / to)) * to)


@dataclass
class CropPlan:
    """The default plan for crops (module docstring): whole slices resized to ``image_size``."""

    image_size: tuple[int, int]
    median_source_spacing: tuple[float, float]
    median_shape: tuple[int, int]  # median slice size at the median spacing
    cases: int
    mode: str = "whole slices resized"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        sp = self.median_source_spacing
        return (f"plan: whole slices resized to {self.image_size[0]}x{self.image_size[1]} px, no patches: the median "
                f"slice is {self.median_shape[0]}x{self.median_shape[1]} px at the median spacing "
                f"{sp[0]:.4g} x {sp[1]:.4g} mm, under {MIN_TOKENS} tokens of {TOKEN} px across, so the volumes "
                f"are crops around the object ({self.cases} cases; --spacing or --patch-size trains patches anyway)")


def crop_plan(cases: Sequence[VolumeCase], axis: str | int, image_size: Sequence[int]) -> CropPlan | None:
    """A :class:`CropPlan` when the median slice of ``cases`` at their median spacing is under
    :data:`MIN_TOKENS` tokens across its shorter side, else None (patches are planned).

    Raises:
        DataError: a case's spacing is unusable (naming its file); no cases.
    """
    cases = list(cases)
    if not cases:
        raise DataError("no training cases to plan patches from")
    geo = [case_geometry(c, axis) for c in cases]
    median_sp = tuple(float(v) for v in np.median(np.asarray([g[0] for g in geo]), axis=0))
    shape = tuple(int(v) for v in np.median([resampled_shape(g[1], g[0], median_sp) for g in geo], axis=0))
    if min(shape) >= MIN_TOKENS * TOKEN:
        return None
    return CropPlan(tuple(int(v) for v in image_size), median_sp, shape, len(cases))


def object_diameters(case: VolumeCase, axis: str | int) -> dict[int, list[float]]:
    """Per foreground class of ``case``'s label volume: the in-plane size (mm) of each connected
    object (26-connected in 3D), as the diameter of the circle with the area of its largest
    cross-section in the slicing plane. No label file: {}.

    Raises:
        DataError naming the label file when it cannot be read or its spacing is unusable.
    """
    from scipy import ndimage

    if case.label is None:
        return {}
    vol = read_volume(case.label, label=True)
    (sy, sx), _, rest = _in_plane(vol.affine, axis, case.label)
    pixel_area = sy * sx
    labels = np.asarray(vol.array)
    out: dict[int, list[float]] = {}
    structure = np.ones((3, 3, 3), dtype=bool)
    for c in (int(v) for v in np.unique(labels) if v > 0):
        comp, _ = ndimage.label(labels == c, structure=structure)
        for i, box in enumerate(ndimage.find_objects(comp), start=1):
            if box is None:
                continue
            area = (comp[box] == i).sum(axis=tuple(rest)).max()  # pixels of its largest section
            out.setdefault(c, []).append(2.0 * math.sqrt(area * pixel_area / math.pi))
    return out


def object_refinement(cases: Sequence[VolumeCase], axis: str | int, spacing: Sequence[float],
                      tokens: float = OBJECT_TOKENS, max_cases: int = MAX_OBJECT_CASES) -> tuple[float, str | None]:
    """How much finer than ``spacing`` to train so that small objects are ``tokens`` tokens across.

    Reads up to ``max_cases`` label volumes (evenly spaced over ``cases``), takes each foreground
    class's median object size (:func:`object_diameters`) and refines for the class with the
    smallest: ``factor = tokens * 16 px / (that median in px at spacing)``, between 1 and
    :data:`MAX_REFINE`. Returns ``(factor, description)``; ``(1.0, None)`` without objects or when
    they are large enough.
    """
    cases = [c for c in cases if c.label is not None]
    if not cases:
        return 1.0, None
    step = max(1, math.ceil(len(cases) / max_cases))
    used = cases[::step]
    per_class: dict[int, list[float]] = {}
    for case in used:
        for c, d in object_diameters(case, axis).items():
            per_class.setdefault(c, []).extend(d)
    if not per_class:
        return 1.0, None
    cls, median = min(((c, float(np.median(d))) for c, d in per_class.items()), key=lambda t: t[1])
    px = median / min(float(v) for v in spacing)
    factor = min(MAX_REFINE, tokens * TOKEN / px) if px > 0 else MAX_REFINE
    if factor <= 1.0:
        return 1.0, None
    capped = " (capped)" if factor >= MAX_REFINE else ""
    return factor, (f"median {median:.3g} mm object of class {cls} ({len(per_class[cls])} objects in "
                    f"{len(used)} training cases) {tokens:g} tokens across: {factor:.2f}x finer{capped}")


def plan_volumes(cases: Sequence[VolumeCase], axis: str | int = "axial", spacing=None, patch_size=None,
                 max_patch: int = 256, object_tokens: float | None = None) -> VolumePlan:
    """Plan the target spacing and patch size of patch training on ``cases`` (see the module doc).

    Args:
        spacing: ``"auto"``/None (median) or (rows, columns) mm.
        patch_size: None (planned) or (h, w), multiples of 16.
        max_patch: cap of a planned patch side.
        object_tokens: with ``spacing`` None, refine the median spacing so that the smallest
            class's median object is this many tokens across (:func:`object_refinement`; reads
            the label volumes); None: the median as it is.

    Raises:
        DataError: a case's spacing is unusable (naming its file); no cases.
        ConfigError: the patch is larger than every volume after resampling (naming the largest).
    """
    cases = list(cases)
    if not cases:
        raise DataError("no training cases to plan patches from")
    geo = [case_geometry(c, axis) for c in cases]
    spacings = np.asarray([g[0] for g in geo])
    median_sp = tuple(float(v) for v in np.median(spacings, axis=0))
    if spacing is None or spacing == "auto":
        target, sp_source = median_sp, f"median of {len(cases)} training cases"
        if spacing is None and object_tokens:
            factor, why = object_refinement(cases, axis, median_sp, object_tokens)
            if why is not None:
                target = tuple(float(f"{v / factor:.4g}") for v in median_sp)
                sp_source += f", refined for small objects: {why}"
    else:
        target, sp_source = tuple(float(v) for v in spacing), "--spacing"
        check_spacing(target, "--spacing")
    shapes = np.asarray([resampled_shape(g[1], g[0], target) for g in geo])
    median_shape = tuple(int(v) for v in np.median(shapes, axis=0))
    big = int(np.argmax(shapes[:, 0] * shapes[:, 1]))
    largest = (int(shapes[:, 0].max()), int(shapes[:, 1].max()))
    if patch_size is None:
        patch = tuple(min(_round_up(m), max(TOKEN, max_patch // TOKEN * TOKEN)) for m in median_shape)
        p_source = "median slice size, rounded up to 16" + (f", capped at {max_patch}" if any(
            _round_up(m) > max_patch for m in median_shape) else "")
    else:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 2 or any(p < TOKEN or p % TOKEN for p in patch):
            raise ConfigError(f"--patch-size must be N or HxW in multiples of 16, got {patch_size!r}")
        p_source = "--patch-size"
    # Slices smaller than a patch are padded, but a patch no volume fills is a mistake.
    if patch[0] > largest[0] + TOKEN - 1 or patch[1] > largest[1] + TOKEN - 1:
        raise ConfigError(f"patch {patch[0]}x{patch[1]} px is larger than every volume after resampling to "
                          f"{target[0]:.4g} x {target[1]:.4g} mm; the largest, {cases[big].image}, has slices of "
                          f"{shapes[big][0]}x{shapes[big][1]} px; choose a smaller --patch-size or a finer --spacing")
    return VolumePlan(target, patch, sp_source, p_source, median_sp, median_shape, largest, len(cases))


__all__ = ["CropPlan", "MIN_TOKENS", "OBJECT_TOKENS", "VolumePlan", "case_geometry", "crop_plan", "object_diameters",
           "object_refinement", "plan_volumes", "wants_patches"]
