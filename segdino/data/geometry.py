"""Where an array's samples lie in the world: one description for 2D images and volumes.

A :class:`Geometry` is an array shape and a 4x4 affine that maps a sample index ``(i, j, k, 1)``
to world millimetres ``(x, y, z, 1)`` in RAS+ (x to the patient's Right, y Anterior, z Superior;
docs/FORMATS.md says how each file format is brought into that frame). A 2D image has spacing 1
and the identity orientation: its pixel (row, column) sits at world (row, column, 0).

Imports numpy only, so readers of every format and every layer above can share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import DataError


@dataclass(frozen=True, eq=False)
class Geometry:
    """The voxel grid of an array: its shape and the affine placing it in RAS+ millimetres.

    Attributes:
        shape: the array's shape, (H, W) for an image, (I, J, K) for a volume.
        affine: (4, 4) float64, sample index (i, j, k, 1) -> world (x, y, z, 1); the first
            ``min(len(shape), 3)`` columns of its upper 3x3 block belong to the array's axes.
    """

    shape: tuple[int, ...]
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise DataError(f"an affine must be 4x4, got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @classmethod
    def of_image(cls, shape: Sequence[int]) -> "Geometry":
        """The geometry of a 2D image of ``shape`` (H, W[, C]): spacing 1, identity orientation."""
        return cls(tuple(shape)[:2], np.eye(4))

    @property
    def ndim(self) -> int:
        """How many spatial axes the grid has (2 for an image, 3 for a volume)."""
        return min(len(self.shape), 3)

    @property
    def spacing(self) -> np.ndarray:
        """(ndim,) sample size in mm along the array's axes (lengths of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, : self.ndim], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """(3,) RAS world position in mm of the centre of sample (0, 0[, 0])."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """(3, ndim) unit columns: column a is the RAS direction in which array axis a grows."""
        return self.affine[:3, : self.ndim] / self.spacing

    def world(self, index) -> np.ndarray:
        """RAS world mm of sample index/indices: (ndim,) or (N, ndim) -> (3,) or (N, 3)."""
        idx = np.asarray(index, dtype=np.float64)
        pts = np.atleast_2d(idx) @ self.affine[:3, : idx.shape[-1]].T + self.affine[:3, 3]
        return pts[0] if idx.ndim == 1 else pts

    def differences(self, reference: "Geometry") -> list[str]:
        """How this grid differs from ``reference``'s: shape, spacing, origin, direction.

        Empty when they match (spacing to 0.1%, origin to 1% of a voxel, direction to 1e-3): the
        one rule by which a label is accepted as lying on its image.
        """
        if self.shape != reference.shape:
            return [f"shape {self.shape} vs image {reference.shape}"]
        out = []
        if not np.allclose(reference.spacing, self.spacing, rtol=1e-3, atol=1e-5):
            out.append(f"spacing {_fmt_vec(self.spacing)} vs image {_fmt_vec(reference.spacing)}")
        tol = 0.01 * float(np.min(reference.spacing))
        if not np.allclose(reference.origin, self.origin, rtol=0, atol=tol):
            out.append(f"origin {_fmt_vec(self.origin)} vs image {_fmt_vec(reference.origin)}")
        if not np.allclose(reference.direction, self.direction, rtol=0, atol=1e-3):
            out.append(f"direction {np.round(self.direction, 3).tolist()} vs image "
                       f"{np.round(reference.direction, 3).tolist()}")
        return out


def _fmt_vec(v) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


__all__ = ["Geometry"]
