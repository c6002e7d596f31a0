"""segdino.data.masks: mask files read as binary or index labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segdino.data.masks import binarize, read_mask
from segdino.errors import DataError
from tests.data.files import S, disc, save


def test_mask_formats(tmp_path):
    m = disc()
    fg = (m > 0).astype(np.uint8)
    cases = {
        "png8.png": (m, None, {}),
        "png01.png": (fg, None, {}),
        "grey.gif": (m, None, {}),
        "grey.bmp": (m, None, {}),
        "grey.tif": (m, None, {}),
        "bilevel.png": (m > 0, "1", {}),
        "rgb.png": (np.repeat(m[..., None], 3, axis=2), None, {}),
        "png16.png": (fg.astype(np.uint16) * 65535, "I;16", {}),
        "png16_255.png": (fg.astype(np.uint16) * 255, "I;16", {}),
        "float.tif": (fg.astype(np.float32), "F", {}),
    }
    for name, (arr, mode, kw) in cases.items():
        p = save(arr, tmp_path / name, mode, **kw)
        np.testing.assert_array_equal(read_mask(p), fg, err_msg=name)
    # colour (non-grey) RGB mask: grey conversion first, white foreground on black
    col = np.zeros((S, S, 3), np.uint8)
    col[m > 0] = (255, 255, 0)  # yellow: luma 226 > 127
    np.testing.assert_array_equal(read_mask(save(col, tmp_path / "yellow.png")), fg)


def test_jpeg_mask_with_noise_is_thresholded(tmp_path):
    m = np.repeat(disc()[..., None], 3, axis=2)
    p = save(m, tmp_path / "m.jpg", quality=60)
    raw = np.asarray(Image.open(p).convert("L"))
    assert len(np.unique(raw)) > 2  # compression noise is really there
    got = read_mask(p)
    assert np.mean(got == (disc() > 0)) > 0.98
    # a JPEG whose values happen to be all 0/1 is still thresholded (noise, not labels)
    p01 = save(disc(value=1), tmp_path / "m01.jpg", quality=95)
    assert read_mask(p01).sum() == 0


def test_16bit_threshold_scales(tmp_path):
    arr = np.zeros((S, S), np.uint16)
    arr[:, :8] = 20000  # below 127/255 of 65535
    arr[:, 8:16] = 60000
    got = read_mask(save(arr, tmp_path / "m.png", "I;16"))
    assert got[:, :8].sum() == 0 and got[:, 8:16].all() and got[:, 16:].sum() == 0


def test_rgba_mask_transparency(tmp_path):
    rgba = np.zeros((S, S, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[..., 3] = disc()  # ... but opaque only inside the disc
    np.testing.assert_array_equal(read_mask(save(rgba, tmp_path / "m.png")), (disc() > 0).astype(np.uint8))


def test_palette_masks(tmp_path):
    idx = np.zeros((S, S), np.uint8)
    idx[4:10] = 1
    idx[20:24] = 2
    pal = Image.fromarray(idx, "P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))  # VOC-like colours
    pal.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png", num_classes=3), idx)
    grey = Image.fromarray((idx > 0).astype(np.uint8), "P")
    grey.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
    grey.save(tmp_path / "grey.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.gif"), (idx > 0).astype(np.uint8))


def test_multiclass_masks(tmp_path):
    idx = np.zeros((S, S), np.uint8)
    idx[:5] = 1
    idx[-5:] = 2
    p = save(idx, tmp_path / "ok.png")
    np.testing.assert_array_equal(read_mask(p, num_classes=3), idx)
    with pytest.raises(DataError, match=r"ok\.png.*values 2 do not fit num_classes=2"):
        read_mask(p, num_classes=2)
    p255 = save(disc(), tmp_path / "bin.png")
    with pytest.raises(DataError, match=r"bin\.png.*use num_classes=1"):
        read_mask(p255, num_classes=2)
    pf = save(idx.astype(np.float32) + 0.5, tmp_path / "frac.tif", "F")
    with pytest.raises(DataError, match="frac.tif.*fractional"):
        read_mask(pf, num_classes=3)
    with pytest.raises(DataError, match=r"ok\.png.*look like an index mask.*num_classes=3"):
        read_mask(p, num_classes=1)


def test_mask_read_errors(tmp_path):
    good = save(disc(), tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="bad.png"):
        read_mask(bad)
    with pytest.raises(DataError, match="missing.png: no such file"):
        read_mask(tmp_path / "missing.png")
    small = save(disc(size=16, r=3), tmp_path / "x_mask_1.png")
    with pytest.raises(DataError, match="x_mask_1.png.*differs"):
        read_mask([good, small])


def test_binarize_rules():
    assert binarize(np.array([[0, 1]], np.uint8)).tolist() == [[False, True]]
    assert binarize(np.array([[0, 1]], np.uint8), lossy=True).tolist() == [[False, False]]
    assert binarize(np.array([[127, 128]], np.uint8)).tolist() == [[False, True]]
    assert binarize(np.array([[100, 200]], np.uint8), threshold=150).tolist() == [[False, True]]
    assert binarize(np.array([[0.3, 0.7]], np.float32)).tolist() == [[False, True]]
