"""segdino.data.geometry: one description of where samples lie, for images and volumes."""

from __future__ import annotations

import numpy as np
import pytest

from segdino.data.geometry import Geometry
from segdino.errors import DataError


def test_an_image_has_unit_spacing_and_identity_orientation():
    g = Geometry.of_image((48, 64, 3))
    assert g.shape == (48, 64) and g.ndim == 2
    np.testing.assert_array_equal(g.spacing, [1.0, 1.0])
    np.testing.assert_array_equal(g.world([2, 5]), [2.0, 5.0, 0.0])
    assert g.differences(Geometry.of_image((48, 64))) == []


def test_volume_geometry_and_its_differences():
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    aff[:3, 3] = [10, 20, -30]
    g = Geometry((4, 5, 6), aff)
    np.testing.assert_allclose(g.spacing, [0.8, 0.8, 2.5])
    np.testing.assert_allclose(g.direction, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(g.world([[0, 0, 0], [1, 1, 1]]), [[10, 20, -30], [9.2, 19.2, -27.5]])
    moved = aff.copy()
    moved[0, 3] += 1.0
    assert [d.split()[0] for d in Geometry((4, 5, 6), moved).differences(g)] == ["origin"]
    assert Geometry((4, 5, 7), aff).differences(g) == ["shape (4, 5, 7) vs image (4, 5, 6)"]
    with pytest.raises(DataError, match="4x4"):
        Geometry((4, 5, 6), np.eye(3))
