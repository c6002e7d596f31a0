"""The default plan refines the spacing for small objects: measured from the labels, in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")


def _disc(shape, centre, diameter_px):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (diameter_px / 2) ** 2


def _case(tmp_path, name, objects, shape=(96, 96, 4), spacing=(1.0, 1.0, 2.5)):
    """A case whose label holds ``objects``: (class, centre, diameter px, slices) discs."""
    from segdino.volumes.layouts import VolumeCase

    lab = np.zeros(shape, np.uint8)
    areas = []
    for cls, centre, d, slices in objects:
        disc = _disc(shape[:2], centre, d)
        for z in slices:
            lab[..., z][disc] = cls
        areas.append((cls, int(disc.sum())))
    affine = np.diag([*spacing, 1.0])
    img, seg = tmp_path / f"{name}_0000.nii.gz", tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), affine), str(img))
    nib.save(nib.Nifti1Image(lab, affine), str(seg))
    return VolumeCase(name, img, seg), areas


def _diameter_mm(area_px, pixel_mm2=1.0):
    return 2 * math.sqrt(area_px * pixel_mm2 / math.pi)


def test_small_objects_refine_the_default_spacing_until_two_tokens_across(tmp_path):
    from segdino.volumes.planning import OBJECT_TOKENS, object_diameters, plan_volumes

    # Class 1: three 12 px discs (the small class); class 2: one 60 px disc, which must not count.
    a, areas_a = _case(tmp_path, "a", [(1, (20, 20), 12, (0, 1)), (1, (70, 25), 12, (2,)), (2, (50, 60), 60, (1,))])
    b, areas_b = _case(tmp_path, "b", [(1, (30, 60), 12, (1, 2, 3))])
    diam = object_diameters(a, "axial")
    assert sorted(diam) == [1, 2] and len(diam[1]) == 2 and len(diam[2]) == 1
    assert diam[1][0] == pytest.approx(_diameter_mm(areas_a[0][1]))
    median = float(np.median([_diameter_mm(n) for cls, n in areas_a + areas_b if cls == 1]))
    plan = plan_volumes([a, b], "axial", None, None, object_tokens=OBJECT_TOKENS)
    expected = median / (OBJECT_TOKENS * 16)  # px of 1 mm: 32 px across at the new spacing
    assert plan.spacing == pytest.approx((expected, expected), rel=1e-3)
    assert "refined for small objects" in plan.spacing_source and "class 1" in plan.spacing_source
    # --spacing auto is the plain median, and so is the plan without the rule.
    assert plan_volumes([a, b], "axial", "auto", None, object_tokens=OBJECT_TOKENS).spacing == (1.0, 1.0)
    assert plan_volumes([a, b], "axial", None, None).spacing == (1.0, 1.0)


def test_large_objects_keep_the_median_and_tiny_ones_are_capped(tmp_path):
    from segdino.volumes.planning import MAX_REFINE, plan_volumes

    big, _ = _case(tmp_path, "big", [(1, (48, 48), 70, (1, 2))])
    assert plan_volumes([big], "axial", None, None, object_tokens=2).spacing == (1.0, 1.0)
    tiny, _ = _case(tmp_path, "tiny", [(1, (48, 48), 3, (1,))])
    plan = plan_volumes([tiny], "axial", None, None, object_tokens=2)
    assert plan.spacing == pytest.approx((1.0 / MAX_REFINE,) * 2) and "(capped)" in plan.spacing_source
    empty, _ = _case(tmp_path, "empty", [])
    assert plan_volumes([empty], "axial", None, None, object_tokens=2).spacing == (1.0, 1.0)


def test_object_sizes_are_in_millimetres_on_anisotropic_pixels(tmp_path):
    from segdino.volumes.planning import object_diameters

    case, areas = _case(tmp_path, "aniso", [(1, (40, 40), 20, (1,))], spacing=(0.5, 2.0, 3.0))
    (d,) = object_diameters(case, "axial")[1]
    assert d == pytest.approx(_diameter_mm(areas[0][1], pixel_mm2=1.0))  # 0.5 x 2.0 mm pixels


def test_a_default_volume_run_plans_the_refined_spacing_and_records_it(tmp_path):
    from segdino.data.whole_scan import write_whole_scan_dataset
    from segdino.train_config import resolve_config
    from segdino.training.datasets import build_volume_datasets

    data = write_whole_scan_dataset(tmp_path / "scan", 2, 1, 1, shape=(6, 128, 144), spacing=(2.5, 1.0, 1.0),
                                    seed=0, lesions=(2, 2), diameters=(10.0, 14.0))
    base = dict(data=str(data), out=str(tmp_path / "r"), intensity="ct:-200,250", backbone="vitt16", num_workers=0)
    cfg = resolve_config(base)
    cfg.extra["explicit"] = []  # nothing about spacing or size on the command line
    run = build_volume_datasets(cfg)
    plan = run.extra["plan"]
    assert 0.25 <= plan["spacing"][0] < 0.5 and "refined for small objects" in plan["spacing_source"]
    assert run.settings["spacing"] == ",".join(f"{v:.6g}" for v in plan["spacing"])  # what config.yaml records
    auto = resolve_config(dict(base, spacing="auto"))
    auto.extra["explicit"] = ["spacing"]
    assert build_volume_datasets(auto).extra["plan"]["spacing"] == [1.0, 1.0]
