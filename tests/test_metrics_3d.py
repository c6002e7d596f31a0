"""3D metrics in millimetres: known distances under anisotropic spacing, empty masks, lesion matching."""

import math
import warnings

import numpy as np
import pytest

from segdino.metrics import case_metrics, hd95_asd, lesion_metrics, summarize, summarize_lesions, surface_distances

SPACING = (0.7, 0.7, 2.5)  # (x, y, z) mm, as a typical CT is stored


def box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def ball(shape, centre_mm, radius_mm, spacing=SPACING):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


def monai_hd95_asd(pred, gt, spacing):
    pytest.importorskip("monai")
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p, g = (torch.from_numpy(np.ascontiguousarray(a))[None, None].float() for a in (pred, gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=list(spacing)).item()
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True,
                                               spacing=list(spacing)).item()
    return hd, asd


# ---------------------------------------------------------------------------------------------
# Distances with known values


@pytest.mark.parametrize("axis, expected_hd95, expected_asd", [(2, 5.0, 3.75), (0, 1.4, 1.05)])
def test_two_voxel_slab_offset_by_two_voxels(axis, expected_hd95, expected_asd):
    # A slab two voxels thick is all boundary. Shifted by two voxels along its normal, half of each
    # side's voxels are one voxel from the other slab and half two voxels: with 2.5 mm slices,
    # 2.5 and 5.0 mm, so ASD = 3.75 mm and HD95 = 5.0 mm (0.7 mm voxels: 0.7, 1.4 -> 1.05, 1.4).
    shape = (24, 24, 12)
    lo, hi = [2, 2, 2], [22, 22, 10]
    lo[axis], hi[axis] = 4, 6
    gt = box(shape, lo, hi)
    pred = np.roll(gt, 2, axis=axis)
    hd95, asd = hd95_asd(pred, gt, SPACING)
    assert hd95 == pytest.approx(expected_hd95)
    assert asd == pytest.approx(expected_asd)
    d_pg, d_gp = surface_distances(pred, gt, SPACING)
    assert sorted(set(np.round(d_pg, 6))) == sorted({expected_hd95 / 2, expected_hd95})


@pytest.mark.parametrize("shift", [(3, 0, 0), (0, 2, 0), (0, 0, 1), (0, 0, 2)])
def test_box_offset_by_known_voxels_in_each_axis(shift):
    # A wide flat box moved by a whole number of voxels along one axis: the farthest boundary
    # voxels (the leading face, well over 5% of the boundary) lie exactly |shift| mm from the
    # other box, and none farther; so HD95 is exactly the shift in mm.
    shape = (40, 40, 12)
    gt = box(shape, (6, 6, 3), (30, 30, 8))
    pred = np.roll(gt, shift, axis=(0, 1, 2))
    shift_mm = float(np.linalg.norm(np.asarray(shift) * SPACING))
    hd95, asd = hd95_asd(pred, gt, SPACING)
    assert hd95 == pytest.approx(shift_mm)
    d_pg, d_gp = surface_distances(pred, gt, SPACING)
    assert max(d_pg.max(), d_gp.max()) == pytest.approx(shift_mm)
    assert 0 < asd < shift_mm
    ref_hd, ref_asd = monai_hd95_asd(pred, gt, SPACING)
    assert hd95 == pytest.approx(ref_hd, rel=1e-5) and asd == pytest.approx(ref_asd, rel=1e-5)


def test_the_same_voxel_shift_costs_more_mm_across_slices():
    shape = (40, 40, 12)
    gt = box(shape, (6, 6, 3), (30, 30, 8))
    in_plane = case_metrics(np.roll(gt, 1, axis=0), gt, 1, SPACING)[1]
    across = case_metrics(np.roll(gt, 1, axis=2), gt, 1, SPACING)[1]
    assert in_plane["hd95"] == pytest.approx(0.7) and across["hd95"] == pytest.approx(2.5)
    # Voxel counts are equal, so Dice does not see the difference that millimetres do.
    assert in_plane["dice"] == pytest.approx(2 * 23 * 24 * 5 / (2 * 24 * 24 * 5))
    assert across["dice"] == pytest.approx(2 * 24 * 24 * 4 / (2 * 24 * 24 * 5))


def test_ball_offset_by_known_voxels_and_concentric_balls():
    shape = (36, 36, 14)
    gt = ball(shape, (12.6, 12.6, 16.25), 7.0)
    shift = (2, 0, 1)  # 1.4 mm in x and 2.5 mm in z
    pred = np.roll(gt, shift, axis=(0, 1, 2))
    shift_mm = math.hypot(1.4, 2.5)
    hd95, asd = hd95_asd(pred, gt, SPACING)
    # Every boundary voxel of one ball has its shifted partner on the other: no distance exceeds
    # the shift; on a ball most boundary voxels find a closer one.
    d_pg, d_gp = surface_distances(pred, gt, SPACING)
    assert max(d_pg.max(), d_gp.max()) <= shift_mm + 1e-9
    assert 0.8 * shift_mm < hd95 <= shift_mm + 1e-9 and 0 < asd < hd95
    ref_hd, ref_asd = monai_hd95_asd(pred, gt, SPACING)
    assert hd95 == pytest.approx(ref_hd, rel=1e-5) and asd == pytest.approx(ref_asd, rel=1e-5)
    # Balls of 5 and 8 mm about one centre: the surfaces are 3 mm apart, up to the voxel grid
    # (whose coarsest step, between slices, is 2.5 mm).
    inner, outer = ball(shape, (12.6, 12.6, 16.25), 5.0), ball(shape, (12.6, 12.6, 16.25), 8.0)
    hd95, asd = hd95_asd(inner, outer, SPACING)
    assert abs(asd - 3.0) < 0.5 and 2.5 < hd95 < 3.0 + 2.5 / 2
    m = case_metrics(inner, outer, 1, SPACING)[1]
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(inner.sum() / outer.sum())


# ---------------------------------------------------------------------------------------------
# Empty masks


def test_both_empty_and_one_empty_in_a_multiclass_volume():
    shape = (16, 20, 8)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[2:8, 2:8, 2:5] = 2  # class 2 only in the ground truth
    pred = np.zeros(shape, dtype=np.uint8)
    pred[10:14, 10:14, 1:3] = 3  # class 3 only in the prediction
    out = case_metrics(pred, gt, num_classes=4, spacing=SPACING)
    diag = math.sqrt((16 * 0.7) ** 2 + (20 * 0.7) ** 2 + (8 * 2.5) ** 2)
    c1, c2, c3 = out[1], out[2], out[3]
    # Class 1 is absent from both: perfect, distances 0, not a failure.
    assert (c1["dice"], c1["iou"], c1["hd95"], c1["asd"], c1["precision"], c1["recall"]) == (1, 1, 0, 0, 1, 1)
    assert not c1["hd95_failed"]
    # Class 2 missed: Dice 0, recall 0, precision 0 (nothing predicted, something to find), HD95 undefined.
    assert c2["dice"] == 0 and c2["recall"] == 0 and c2["precision"] == 0
    assert math.isnan(c2["hd95"]) and math.isnan(c2["asd"]) and c2["hd95_failed"] and c2["asd_failed"]
    # Class 3 predicted where nothing is: precision 0, recall 0, HD95 undefined too.
    assert c3["precision"] == 0 and c3["recall"] == 0 and c3["hd95_failed"]
    assert c2["diagonal"] == pytest.approx(diag)
    rows = [{"case": "v", "class": c, **m} for c, m in out.items()]
    s = summarize(rows)
    assert s["per_class"]["2"]["hd95"]["failures"] == 1 and s["per_class"]["2"]["hd95"]["count"] == 0
    assert s["per_class"]["2"]["hd95"]["with_failures_as_diagonal"]["mean"] == pytest.approx(diag)
    assert s["per_class"]["1"]["hd95"]["failures"] == 0 and s["per_class"]["1"]["hd95"]["mean"] == 0.0


# ---------------------------------------------------------------------------------------------
# Lesions


VOXEL_MM3 = 0.7 * 0.7 * 2.5


def lesion_case():
    """Four lesions: A split in two by the prediction, B and C merged by a bridge, D missed; and
    one false-positive component."""
    shape = (40, 40, 12)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[2:10, 2:6, 2:6] = 1  # A: 128 voxels
    gt[20:24, 2:6, 2:4] = 1  # B: 32 voxels
    gt[20:24, 10:14, 2:4] = 1  # C: 32 voxels
    gt[32:34, 32:34, 8:10] = 1  # D: 8 voxels, missed
    pred = np.zeros_like(gt)
    pred[2:5, 2:6, 2:6] = 1  # A, first half (48 voxels)
    pred[7:10, 2:6, 2:6] = 1  # A, second half (48 voxels)
    pred[20:24, 2:6, 2:4] = 1
    pred[20:24, 10:14, 2:4] = 1
    pred[21:23, 6:10, 2:4] = 1  # bridge of 16 voxels joining B and C
    pred[30:33, 5:8, 4:6] = 1  # false positive: 18 voxels
    return pred, gt


def test_lesions_split_merged_missed_and_false_positive_in_mm():
    pred, gt = lesion_case()
    r = lesion_metrics(pred, gt, spacing=SPACING)
    assert (r["num_lesions"], r["num_pred_components"]) == (4, 4)
    assert (r["found"], r["missed"], r["false_positives"]) == (3, 1, 1)
    by_start = {tuple(les["bbox"][0]): les for les in r["lesions"]}
    a, d = by_start[(2, 10)], by_start[(32, 34)]
    b, c = sorted((les for les in r["lesions"] if les["bbox"][0] == [20, 24]), key=lambda les: les["bbox"][1])
    # A: found, both halves matched to it, Dice of the two halves together.
    assert a["found"] and a["pred_components"] == 2 and a["dice"] == pytest.approx(2 * 96 / (128 + 96))
    assert a["size"] == pytest.approx(128 * VOXEL_MM3)
    # B and C: one component found both; each is credited the bridge but not the other lesion.
    for les in (b, c):
        assert les["found"] and les["pred_components"] == 1
        assert les["dice"] == pytest.approx(2 * 32 / (32 + 48))
    # D: missed, Dice 0, 8 voxels = 9.8 mm^3.
    assert not d["found"] and d["dice"] == 0.0 and d["size"] == pytest.approx(8 * VOXEL_MM3)
    fp = r["false_positive_components"][0]
    assert fp["voxels"] == 18 and fp["size"] == pytest.approx(18 * VOXEL_MM3)
    assert fp["bbox"] == [[30, 33], [5, 8], [4, 6]]


def test_lesions_touching_across_slices_by_a_corner():
    gt = np.zeros((10, 10, 6), dtype=np.uint8)
    gt[2:4, 2:4, 1] = 1
    gt[4:6, 4:6, 2] = 1  # shares only a corner (i, j and k all differ by one) with the first part
    assert lesion_metrics(gt, gt)["num_lesions"] == 1  # 26-connected by default
    six = lesion_metrics(gt, gt, connectivity=1)
    assert six["num_lesions"] == 2 and six["found"] == 2


def test_lesion_summary_over_volumes():
    pred, gt = lesion_case()
    r = lesion_metrics(pred, gt, spacing=SPACING)
    perfect = lesion_metrics(gt, gt, spacing=SPACING)
    s = summarize_lesions([r, perfect])
    assert (s["num_lesions"], s["found"], s["missed"], s["false_positives"]) == (8, 7, 1, 1)
    assert s["detection_recall"] == pytest.approx(7 / 8)
    assert s["detection_precision"] == pytest.approx(7 / 8)  # 7 of 8 predicted components match a lesion
    assert s["missed_lesion_size"]["mean"] == pytest.approx(8 * VOXEL_MM3)
    assert s["lesion_dice"]["count"] == 7
    dice = [les["dice"] for les in r["lesions"] + perfect["lesions"] if les["found"]]
    assert s["lesion_dice"]["mean"] == pytest.approx(np.mean(dice))
    empty = summarize_lesions([lesion_metrics(np.zeros_like(gt), np.zeros_like(gt))])
    assert (empty["num_lesions"], empty["detection_recall"], empty["detection_precision"]) == (0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Normalised surface Dice


def monai_nsd(pred, gt, spacing, tolerance):
    pytest.importorskip("monai")
    import torch
    from monai.metrics import compute_surface_dice

    p, g = (torch.from_numpy(np.ascontiguousarray(a))[None, None].float() for a in (pred, gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_surface_dice(p, g, [tolerance], include_background=True, spacing=list(spacing)).item()


NSD_CASES = {
    "slab shifted one slice": (lambda: np.roll(box((16, 16, 10), (3, 3, 3), (13, 13, 6)), 1, axis=2)),
    "ball shifted in-plane": (lambda: ball((20, 20, 10), (7.7, 7.0, 12.5), 4.0)),
    "ball shifted across slices": (lambda: ball((20, 20, 10), (7.0, 7.0, 15.0), 4.0)),
    "shrunk box": (lambda: box((16, 16, 10), (5, 5, 3), (11, 11, 7))),
}


@pytest.mark.parametrize("name", sorted(NSD_CASES))
@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.6])
def test_nsd_equals_monai_on_shifted_shapes(name, tolerance):
    gt = box((16, 16, 10), (3, 3, 3), (13, 13, 7)) if "box" in name or "slab" in name else \
        ball((20, 20, 10), (7.0, 7.0, 12.5), 4.0)
    pred = NSD_CASES[name]()
    ours = case_metrics(pred, gt, 1, SPACING, nsd_tolerance=tolerance)[1]["nsd"]
    theirs = monai_nsd(pred, gt, SPACING, tolerance)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert 0.0 <= ours <= 1.0
    # A wider tolerance never lowers NSD; these shapes differ, so at 0.5 mm it is below 1.
    assert case_metrics(pred, gt, 1, SPACING, nsd_tolerance=tolerance + 1.0)[1]["nsd"] >= ours
    if tolerance == 0.5:
        assert ours < 1.0


def test_nsd_of_empty_masks():
    empty, gt = np.zeros((8, 8, 4), bool), box((8, 8, 4), (2, 2, 1), (5, 5, 3))
    # One empty: no boundary point lies within any distance of a missing surface; MONAI agrees.
    for pred, target in ((empty, gt), (gt, empty)):
        m = case_metrics(pred, target, 1, SPACING, nsd_tolerance=1.0)[1]
        assert m["nsd"] == 0.0 == monai_nsd(pred, target, SPACING, 1.0)
    # Both empty: MONAI returns NaN; like Dice, ours is a perfect 1 (nothing to find, nothing found).
    assert math.isnan(monai_nsd(empty, empty, SPACING, 1.0))
    assert case_metrics(empty, empty, 1, SPACING, nsd_tolerance=1.0)[1]["nsd"] == 1.0
    # Exact overlap at tolerance 0, and a tolerance that is no distance.
    assert case_metrics(gt, gt, 1, SPACING, nsd_tolerance=0.0)[1]["nsd"] == 1.0
    with pytest.raises(Exception, match="tolerance must be a distance"):
        case_metrics(gt, gt, 1, SPACING, nsd_tolerance=-1.0)
    assert "nsd" not in case_metrics(gt, gt, 1, SPACING)[1]
    rows = [{"case": "a", "class": 1, "dice": 1.0}]
    assert summarize(rows)["metrics"] == ["dice"]  # a metric no row holds is not summarised
