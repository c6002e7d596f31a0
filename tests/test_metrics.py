"""Metrics against hand-computed cases, an independent brute-force oracle, and MONAI when installed."""

import math
import warnings

import numpy as np
import pytest

from segdino import DataError
from segdino.metrics import (
    case_metrics,
    case_rows,
    diagonal,
    hd95_asd,
    lesion_metrics,
    summarize,
    summarize_lesions,
    surface_distances,
)

# ---------------------------------------------------------------------------------------------
# Independent oracle: boundary by explicit neighbour checks, distances by all pairs.


def oracle_boundary(mask):
    """Foreground voxels with a face neighbour (or the outside of the array) in the background."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones(mask.shape, dtype=bool)
    centre = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for step in (-1, 1):
            sl = list(centre)
            sl[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            inner &= padded[tuple(sl)]
    return mask & ~inner


def oracle_hd95_asd(pred, gt, spacing):
    bp = np.argwhere(oracle_boundary(pred)) * np.asarray(spacing, dtype=float)
    bg = np.argwhere(oracle_boundary(gt)) * np.asarray(spacing, dtype=float)
    d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1))
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    return hd95, np.concatenate([d_pg, d_gp]).mean()


def square(shape, top, left, size):
    m = np.zeros(shape, dtype=np.uint8)
    m[top : top + size, left : left + size] = 1
    return m


def sphere(shape, centre_mm, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


# ---------------------------------------------------------------------------------------------
# Overlap metrics and empty masks


def test_both_empty_is_perfect():
    z = np.zeros((12, 15), dtype=np.uint8)
    m = case_metrics(z, z, num_classes=1)[1]
    assert (m["dice"], m["iou"], m["precision"], m["recall"]) == (1.0, 1.0, 1.0, 1.0)
    assert (m["hd95"], m["asd"]) == (0.0, 0.0)
    assert not m["hd95_failed"] and not m["asd_failed"]
    assert (m["pred_voxels"], m["gt_voxels"]) == (0, 0)


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_is_a_failure(empty_side):
    z = np.zeros((12, 15), dtype=np.uint8)
    s = square((12, 15), 2, 3, 4)
    pred, gt = (z, s) if empty_side == "pred" else (s, z)
    m = case_metrics(pred, gt, num_classes=1)[1]
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    assert math.isnan(m["hd95"]) and math.isnan(m["asd"])
    assert m["hd95_failed"] and m["asd_failed"]
    assert m["diagonal"] == pytest.approx(math.hypot(12, 15))


def test_precision_recall_dice_iou_by_hand():
    gt = np.zeros((8, 8), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[1, 1:7] = 1  # 6 pixels
    pred[1, 4:8] = 1  # 4 pixels, 3 shared
    m = case_metrics(pred, gt, num_classes=1)[1]
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 6)
    assert m["dice"] == pytest.approx(2 * 3 / 10)
    assert m["iou"] == pytest.approx(3 / 7)
    assert m["intersection"] == 3


def test_one_pixel_lesion():
    gt = np.zeros((16, 16), dtype=np.uint8)
    gt[5, 5] = 1
    hit = case_metrics(gt.copy(), gt, 1)[1]
    assert hit["dice"] == 1.0 and hit["hd95"] == 0.0 and hit["asd"] == 0.0
    pred = np.zeros_like(gt)
    pred[5, 8] = 1
    miss = case_metrics(pred, gt, 1)[1]
    assert miss["dice"] == 0.0 and miss["hd95"] == pytest.approx(3.0) and miss["asd"] == pytest.approx(3.0)
    # Along the second axis of a (0.5, 2.0) grid, 3 pixels are 6 units.
    mm = case_metrics(pred, gt, 1, spacing=(0.5, 2.0))[1]
    assert mm["hd95"] == pytest.approx(6.0) and mm["asd"] == pytest.approx(6.0)


def test_square_offset_by_three_pixels():
    # 10x10 squares, the prediction 3 columns to the right. Each boundary ring has 36 pixels; the
    # distances from one ring to the other are 14 x 0, 4 x 1, 4 x 2 and 14 x 3 (both ways, by
    # symmetry), so HD95 = 3 and ASD = (4 + 8 + 42) / 36 = 1.5.
    gt = square((32, 32), 10, 10, 10)
    pred = square((32, 32), 10, 13, 10)
    d_pg, d_gp = surface_distances(pred.astype(bool), gt.astype(bool))
    assert sorted(d_pg.tolist()) == [0.0] * 14 + [1.0] * 4 + [2.0] * 4 + [3.0] * 14
    assert sorted(d_gp.tolist()) == sorted(d_pg.tolist())
    m = case_metrics(pred, gt, 1)[1]
    assert m["hd95"] == pytest.approx(3.0)
    assert m["asd"] == pytest.approx(1.5)
    assert m["dice"] == pytest.approx(140 / 200)


def test_hd95_ignores_a_five_percent_outlier_and_asd_pools_both_sides():
    gt = square((40, 40), 5, 5, 10)
    pred = gt.copy()
    pred[35, 35] = 1  # one far pixel: 1 of 37 prediction boundary pixels
    far = math.hypot(35 - 14, 35 - 14)
    hd95, asd = hd95_asd(pred, gt)
    assert hd95 == 0.0  # the 95th percentile of 36 zeros and one outlier is 0 (a max would not be)
    # Pooled mean over 37 + 36 boundary pixels, not the mean of the two directed means.
    assert asd == pytest.approx(far / (37 + 36))


def test_square_touching_the_image_border():
    # Outside the image counts as background, so the border column is boundary too.
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[2:6, 0:4] = 1
    pred = np.zeros_like(gt)
    pred[2:6, 1:5] = 1
    assert hd95_asd(pred, gt) == pytest.approx(oracle_hd95_asd(pred.astype(bool), gt.astype(bool), (1, 1)))


def test_random_2d_shapes_match_the_oracle():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for _ in range(4):
        a = ndimage.gaussian_filter(rng.random((30, 36)), 2) > 0.5
        b = ndimage.gaussian_filter(rng.random((30, 36)), 2) > 0.5
        got = hd95_asd(a, b, spacing=(0.8, 1.3))
        assert got == pytest.approx(oracle_hd95_asd(a, b, (0.8, 1.3)), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# 3D, anisotropic spacing


SPACING = (0.7, 0.7, 2.5)  # (x, y, z) as nibabel reads a typical CT


def test_planes_offset_along_each_axis():
    # Thin planes: every voxel is boundary and lies exactly k voxels from the other plane.
    shape = (12, 14, 10)
    for axis, k in ((2, 2), (0, 3)):
        gt = np.zeros(shape, dtype=np.uint8)
        pred = np.zeros(shape, dtype=np.uint8)
        idx = [slice(None)] * 3
        idx[axis] = 3
        gt[tuple(idx)] = 1
        idx[axis] = 3 + k
        pred[tuple(idx)] = 1
        m = case_metrics(pred, gt, 1, spacing=SPACING)[1]
        assert m["hd95"] == pytest.approx(k * SPACING[axis])
        assert m["asd"] == pytest.approx(k * SPACING[axis])


def test_box_offset_along_z_by_two_slices():
    # Every prediction boundary voxel is 5 mm (2 x 2.5) from its shifted partner, so no distance
    # exceeds 5 mm; the far face's centre (more than 5% of the boundary) is exactly 5 mm away.
    shape = (40, 40, 14)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[5:35, 5:35, 3:9] = 1
    pred = np.roll(gt, 2, axis=2)
    m = case_metrics(pred, gt, 1, spacing=SPACING)[1]
    assert m["hd95"] == pytest.approx(5.0)
    hd95, asd = oracle_hd95_asd(pred.astype(bool), gt.astype(bool), SPACING)
    assert m["hd95"] == pytest.approx(hd95) and m["asd"] == pytest.approx(asd)
    assert 0 < m["asd"] < 5.0
    # The same voxel shift in x is only 2.1 mm.
    m_x = case_metrics(np.roll(gt, 3, axis=0), gt, 1, spacing=SPACING)[1]
    assert m_x["hd95"] == pytest.approx(2.1)


def test_spheres_offset_by_known_voxels():
    shape, sp = (28, 28, 12), SPACING
    gt = sphere(shape, (9.8, 9.8, 14.0), 6.0, sp)
    pred = np.roll(gt, 2, axis=2)  # 5 mm along z
    m = case_metrics(pred, gt, 1, spacing=sp)[1]
    hd95, asd = oracle_hd95_asd(pred, gt, sp)
    assert m["hd95"] == pytest.approx(hd95) and m["asd"] == pytest.approx(asd)
    # A pure shift moves every boundary voxel by 5 mm, a bound on every distance.
    assert 0 < m["hd95"] <= 5.0 + 1e-9
    assert m["dice"] == pytest.approx(2 * np.count_nonzero(pred & gt) / (2 * np.count_nonzero(gt)))
    assert m["diagonal"] == pytest.approx(diagonal(shape, sp))
    assert m["diagonal"] == pytest.approx(math.sqrt((28 * 0.7) ** 2 * 2 + (12 * 2.5) ** 2))


def test_multiclass_volume_and_label_checks():
    gt = np.zeros((10, 12, 8), dtype=np.uint8)
    gt[2:6, 2:6, 2:5] = 1
    gt[7:9, 8:11, 1:3] = 2
    pred = gt.copy()
    pred[7:9, 8:11, 1:3] = 0  # class 2 missed entirely
    out = case_metrics(pred, gt, num_classes=3, spacing=SPACING)
    assert sorted(out) == [1, 2]
    assert out[1]["dice"] == 1.0 and out[1]["hd95"] == 0.0
    assert out[2]["dice"] == 0.0 and out[2]["hd95_failed"]
    with pytest.raises(DataError, match="outside 0..2"):
        case_metrics(np.full_like(gt, 3), gt, num_classes=3)
    with pytest.raises(DataError, match="shape"):
        case_metrics(pred[:, :, :4], gt, num_classes=3)
    with pytest.raises(DataError, match="spacing"):
        case_metrics(pred, gt, num_classes=3, spacing=(1.0, 1.0))


def test_case_rows_are_flat_and_named():
    gt = square((10, 10), 2, 2, 3)
    rows = case_rows("a", gt, gt, 3, class_names=["background", "polyp", "tumour"])
    assert [(r["case"], r["class"], r["class_name"]) for r in rows] == [("a", 1, "polyp"), ("a", 2, "tumour")]
    assert rows[1]["hd95"] == 0.0 and rows[1]["gt_voxels"] == 0


def test_large_inputs_crop_to_the_masks():
    # Small structures in a big image give the same values as the same structures in a small one.
    gt_small = square((30, 30), 10, 10, 8)
    pred_small = square((30, 30), 12, 11, 8)
    big_gt = np.zeros((1080, 1920), dtype=np.uint8)
    big_pred = np.zeros_like(big_gt)
    big_gt[500:530, 900:930] = gt_small
    big_pred[500:530, 900:930] = pred_small
    small = case_metrics(pred_small, gt_small, 1)[1]
    big = case_metrics(big_pred, big_gt, 1)[1]
    for k in ("hd95", "asd", "dice"):
        assert big[k] == pytest.approx(small[k])


def test_matches_monai_on_random_shapes():
    pytest.importorskip("monai")
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for shape, sp in (((40, 50), (0.8, 1.3)), ((16, 24, 20), (0.7, 0.7, 2.5)), ((18, 20, 14), (2.5, 0.9, 0.6))):
        for _ in range(3):
            a = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
            b = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
            ta, tb = (torch.from_numpy(x)[None, None].float() for x in (a, b))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref_hd = compute_hausdorff_distance(ta, tb, include_background=True, percentile=95, spacing=sp).item()
                ref_asd = compute_average_surface_distance(
                    ta, tb, include_background=True, symmetric=True, spacing=sp
                ).item()
            hd95, asd = hd95_asd(a, b, sp)
            assert hd95 == pytest.approx(ref_hd, rel=1e-5)
            assert asd == pytest.approx(ref_asd, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Lesion-wise detection


def test_lesion_split_in_two_is_one_found_lesion():
    gt = np.zeros((20, 20, 10), dtype=np.uint8)
    gt[4:12, 4:8, 2:6] = 1  # 128 voxels
    pred = np.zeros_like(gt)
    pred[4:7, 4:8, 2:6] = 1  # 48 voxels
    pred[9:12, 4:8, 2:6] = 1  # 48 voxels, separated by two empty rows
    r = lesion_metrics(pred, gt, spacing=SPACING)
    assert (r["num_lesions"], r["num_pred_components"]) == (1, 2)
    assert (r["found"], r["missed"], r["false_positives"]) == (1, 0, 0)
    les = r["lesions"][0]
    assert les["pred_components"] == 2
    assert les["dice"] == pytest.approx(2 * 96 / (128 + 96))
    assert les["voxels"] == 128 and les["size"] == pytest.approx(128 * 0.7 * 0.7 * 2.5)


def test_two_lesions_merged_are_both_found():
    gt = np.zeros((20, 20, 10), dtype=np.uint8)
    gt[2:6, 2:6, 2:4] = 1  # lesion A, 32 voxels
    gt[2:6, 10:14, 2:4] = 1  # lesion B, 32 voxels
    pred = gt.copy()
    pred[3:5, 6:10, 2:4] = 1  # a 16-voxel bridge joining them
    r = lesion_metrics(pred, gt)
    assert (r["num_lesions"], r["num_pred_components"]) == (2, 1)
    assert (r["found"], r["missed"], r["false_positives"]) == (2, 0, 0)
    # Each lesion's prediction: the component minus the other lesion = 32 + 16 voxels.
    for les in r["lesions"]:
        assert les["dice"] == pytest.approx(2 * 32 / (32 + 48))


def test_missed_lesion_and_false_positive():
    gt = np.zeros((24, 24), dtype=np.uint8)
    gt[2:6, 2:6] = 1
    gt[15:17, 15:17] = 1  # small lesion, missed
    pred = np.zeros_like(gt)
    pred[2:6, 3:7] = 1
    pred[10:13, 20:23] = 1  # overlaps nothing
    r = lesion_metrics(pred, gt, spacing=(0.5, 0.5))
    assert (r["found"], r["missed"], r["false_positives"]) == (1, 1, 1)
    found, missed = sorted(r["lesions"], key=lambda les: not les["found"])
    assert found["dice"] == pytest.approx(2 * 12 / 32)
    assert missed["dice"] == 0.0 and missed["voxels"] == 4 and missed["size"] == pytest.approx(1.0)
    assert missed["bbox"] == [[15, 17], [15, 17]]
    fp = r["false_positive_components"][0]
    assert fp["voxels"] == 9 and fp["bbox"] == [[10, 13], [20, 23]]
    s = summarize_lesions([r, r])
    assert (s["num_lesions"], s["found"], s["missed"], s["false_positives"]) == (4, 2, 2, 2)
    assert s["detection_recall"] == pytest.approx(0.5) and s["detection_precision"] == pytest.approx(0.5)
    assert s["lesion_dice"]["count"] == 2


def test_lesion_connectivity_and_empty():
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[2, 2] = gt[3, 3] = 1  # diagonal neighbours
    assert lesion_metrics(gt, gt)["num_lesions"] == 1
    assert lesion_metrics(gt, gt, connectivity=1)["num_lesions"] == 2
    empty = lesion_metrics(np.zeros_like(gt), np.zeros_like(gt))
    assert (empty["num_lesions"], empty["found"], empty["false_positives"]) == (0, 0, 0)
    with pytest.raises(DataError, match="connectivity"):
        lesion_metrics(gt, gt, connectivity=3)


# ---------------------------------------------------------------------------------------------
# Summary


def test_summary_counts_failures_and_scores_them_as_the_diagonal():
    shape = (20, 20)
    cases = {
        "a": (square(shape, 2, 2, 5), square(shape, 2, 2, 5)),  # perfect
        "b": (square(shape, 2, 5, 5), square(shape, 2, 2, 5)),  # shifted 3 px
        "c": (np.zeros(shape, np.uint8), square(shape, 2, 2, 5)),  # missed: failure
    }
    rows = [row for name, (p, g) in cases.items() for row in case_rows(name, p, g, 1)]
    s = summarize(rows)
    assert s["num_cases"] == 3
    hd = s["per_class"]["1"]["hd95"]
    b_hd = rows[1]["hd95"]
    assert hd["count"] == 2 and hd["failures"] == 1
    assert hd["mean"] == pytest.approx(b_hd / 2)
    diag = math.hypot(20, 20)
    wf = hd["with_failures_as_diagonal"]
    assert wf["count"] == 3 and wf["mean"] == pytest.approx((0 + b_hd + diag) / 3) and wf["median"] == pytest.approx(b_hd)
    dice = s["per_class"]["1"]["dice"]
    values = [r["dice"] for r in rows]
    assert dice["count"] == 3 and dice["mean"] == pytest.approx(np.mean(values))
    assert dice["std"] == pytest.approx(np.std(values, ddof=1))
    assert s["mean_over_classes"]["hd95"]["mean_with_failures_as_diagonal"] == pytest.approx(wf["mean"])


def test_summary_per_class_and_missing_diagonal():
    g = np.zeros((10, 10), dtype=np.uint8)
    g[1:4, 1:4] = 1
    g[6:9, 6:9] = 2
    p = g.copy()
    p[6:9, 6:9] = 0
    rows = case_rows("x", p, g, 3, class_names=["bg", "liver", "tumour"])
    s = summarize(rows, ["dice", "hd95"])
    assert set(s["per_class"]) == {"1", "2"}
    assert s["per_class"]["2"]["class_name"] == "tumour" and s["per_class"]["2"]["hd95"]["failures"] == 1
    assert s["per_class"]["2"]["hd95"]["count"] == 0 and math.isnan(s["per_class"]["2"]["hd95"]["mean"])
    assert s["mean_over_classes"]["dice"]["mean"] == pytest.approx(0.5)
    broken = [dict(r) for r in rows]
    del broken[1]["diagonal"]
    with pytest.raises(DataError, match="diagonal"):
        summarize(broken, ["hd95"])
