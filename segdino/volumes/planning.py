"""Planning patch training from the data: target in-plane spacing and patch size.

As nnU-Net plans its 2D configuration: the target spacing is the median in-plane voxel size of
the training cases (``--spacing auto``) unless given; the patch size is the median slice size
after resampling, rounded up to the model's token size (16) and capped (default 256), unless
given. Slices smaller than a patch are padded; a patch that fits no volume at all is refused.

The default plan (no ``--spacing``) adds one rule for a ViT: the backbone sees the image in
16 px tokens and the decoder works from those tokens alone, so a slice a few tokens across
starves it (LIDC nodule crops of 43-89 px at 0.46-0.98 mm give 48 px, 3x3 tokens, at the
median spacing). The median spacing is refined until the median slice is at least
:data:`MIN_TOKENS` tokens across its shorter side, by at most :data:`MAX_REFINE` times, as a
planner picks a resolution the network can use. See docs/ARCHITECTURE.md for where planning sits.

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
MIN_TOKENS = 8  # the shorter side of the median slice, in tokens, that the default plan asks for
MAX_REFINE = 4.0  # the most the default plan refines the median spacing


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
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    check_spacing(spacing, str(case.image))
    a = resolve_axis(validate_axis(axis), affine)
    rest = [i for i in range(3) if i != a]
    return (float(spacing[rest[0]]), float(spacing[rest[1]])), (shape[rest[0]], shape[rest[1]]), a


def _round_up(n: float, to: int = TOKEN) -> int:
    return max(to, int(math.ceil(n / to)) * to)


def refine_for_tokens(spacing: tuple[float, float], median_shape: Sequence[int], min_tokens: int = MIN_TOKENS,
                      max_refine: float = MAX_REFINE) -> tuple[tuple[float, float], float]:
    """(spacing, factor): ``spacing`` divided by the factor (1 to ``max_refine``) that makes a slice of
    ``median_shape`` px at ``spacing`` at least ``min_tokens`` tokens of 16 px across its shorter side."""
    want = min_tokens * TOKEN
    factor = min(float(max_refine), max(1.0, want / max(1, min(int(v) for v in median_shape))))
    return (spacing[0] / factor, spacing[1] / factor), factor


def plan_volumes(cases: Sequence[VolumeCase], axis: str | int = "axial", spacing=None, patch_size=None,
                 max_patch: int = 256, min_tokens: int | None = None) -> VolumePlan:
    """Plan the target spacing and patch size of patch training on ``cases`` (see the module doc).

    Args:
        spacing: ``"auto"``/None (median) or (rows, columns) mm.
        patch_size: None (planned) or (h, w), multiples of 16.
        max_patch: cap of a planned patch side.
        min_tokens: with a median spacing, refine it so that the median slice is at least this
            many tokens across (:func:`refine_for_tokens`); None keeps the median.

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
        if min_tokens:
            shape0 = np.median([resampled_shape(g[1], g[0], target) for g in geo], axis=0)
            target, factor = refine_for_tokens(target, shape0, min_tokens)
            if factor > 1.0:
                sp_source += f", refined {factor:.3g}x so the median slice is {min_tokens} tokens across"
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


__all__ = ["MAX_REFINE", "MIN_TOKENS", "VolumePlan", "case_geometry", "plan_volumes", "refine_for_tokens",
           "wants_patches"]
