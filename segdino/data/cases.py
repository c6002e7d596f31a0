"""One case type for 2D pairs and volume cases: an id, image file(s), label file(s), a geometry.

:class:`Case` is the part every dataset sample shares, whatever its layout:
:class:`segdino.data.layouts.Pair` (a 2D image and its mask files) and
:class:`segdino.volumes.layouts.VolumeCase` (a volume, its channel files and label) are thin
subclasses, so code that scores, predicts or checks cases reads them through one interface
(:mod:`segdino.data.readers`) without asking which kind it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .geometry import Geometry
from .readers import read_array, read_geometry


class Case:
    """What every dataset sample offers (subclasses hold the fields).

    Subclasses define ``case_id`` (str), ``image`` (the file or folder to read) and the two
    properties below; ``channel`` (which channel of a multi-channel file; None for one) is
    optional.
    """

    case_id: str
    image: Path
    channel: int | None = None

    @property
    def image_files(self) -> tuple[Path, ...]:
        """The files holding the case's image, one per channel where they are separate."""
        return (self.image,)

    @property
    def label_files(self) -> tuple[Path, ...]:
        """The case's label file(s); empty for an unlabelled case."""
        raise NotImplementedError

    @property
    def is_labelled(self) -> bool:
        return bool(self.label_files)

    def geometry(self) -> Geometry:
        """The image's grid, read from its header on demand (nothing is cached)."""
        return read_geometry(self.image)

    def read_image(self) -> tuple[np.ndarray, Geometry]:
        """The image as ``(array, geometry)`` (see :func:`segdino.data.readers.read_array`)."""
        return read_array(self.image, self.channel)

    def read_label(self) -> tuple[np.ndarray, Geometry]:
        """The first label file's raw values as ``(array, geometry)``.

        Raises:
            DataError: the case has no label.
        """
        if not self.label_files:
            raise DataError(f"{self.image}: case {self.case_id!r} has no label")
        return read_array(self.label_files[0], None, label=True)


__all__ = ["Case"]
