"""MetaImage, NRRD and compressed DICOM: geometry round trips and damaged files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from tests.volumes.files import (  # noqa: E402
    DIRECTION,
    MARKERS,
    ORIGIN,
    SHAPE,
    SPACING,
    expected_world,
    synthetic_affine,
    synthetic_volume,
    write_dicom_series,
)

from segdino import DataError  # noqa: E402
from segdino.summary_file import read_summary  # noqa: E402
from segdino.volumes.io import prediction_ending, read_volume, strip_volume_suffix, write_volume  # noqa: E402


@pytest.mark.parametrize("name", ["label.mha", "label.mhd", "label.nrrd", "label.nii.gz"])
def test_label_sits_at_the_same_world_coordinates(tmp_path, name):
    labels = synthetic_volume()
    back = read_volume(write_volume(tmp_path / name, labels, synthetic_affine()))
    assert back.shape == SHAPE and back.array.dtype == labels.dtype
    for idx, v in MARKERS.items():
        found = np.argwhere(back.array == v)
        assert len(found) == 1
        np.testing.assert_allclose(back.world(found[0]), expected_world(idx), atol=1e-3)
    np.testing.assert_allclose(back.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(back.direction, DIRECTION, atol=1e-5)
    np.testing.assert_allclose(back.origin, ORIGIN, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_itk_geometry_is_lps_as_itk_writes_it(tmp_path):
    """A file written by SimpleITK itself (not by us) lands where ITK says, converted to RAS."""
    arr = np.zeros((5, 4, 3), np.uint8)  # SimpleITK's (z, y, x)
    arr[4, 1, 2] = 7
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 2.0, 3.0))
    img.SetOrigin((10.0, -5.0, 2.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    for name in ("ext.nrrd", "ext.mha"):
        sitk.WriteImage(img, str(tmp_path / name))
        vol = read_volume(tmp_path / name)
        assert vol.shape == (3, 4, 5)
        idx = np.argwhere(vol.array == 7)[0]
        lps = img.TransformIndexToPhysicalPoint([int(i) for i in idx])
        np.testing.assert_allclose(vol.world(idx), np.array(lps) * [-1, -1, 1], atol=1e-6)


def test_crlf_nrrd_header_and_2d_images(tmp_path):
    img = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    sitk.WriteImage(img, str(tmp_path / "unix.nrrd"))
    data = (tmp_path / "unix.nrrd").read_bytes()
    end = data.index(b"\n\n")
    (tmp_path / "dos.nrrd").write_bytes(data[:end].replace(b"\n", b"\r\n") + b"\r\n\r\n" + data[end + 2:])
    np.testing.assert_array_equal(read_volume(tmp_path / "dos.nrrd").array, read_volume(tmp_path / "unix.nrrd").array)
    flat = sitk.GetImageFromArray(np.arange(6, dtype=np.uint8).reshape(2, 3))  # (y, x)
    flat.SetSpacing((0.5, 2.0))
    sitk.WriteImage(flat, str(tmp_path / "flat.mha"))
    vol = read_volume(tmp_path / "flat.mha")
    assert vol.shape == (3, 2, 1) and vol.array[2, 1, 0] == 5
    np.testing.assert_allclose(vol.spacing[:2], [0.5, 2.0])


def test_vector_image_channels(tmp_path):
    arr = np.stack([np.full((3, 4, 5), c, np.float32) for c in range(3)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(DataError, match=r"rgb\.mha: 4D file with 3 channels"):
        read_volume(tmp_path / "rgb.mha")
    vol = read_volume(tmp_path / "rgb.mha", channel=2)
    assert vol.shape == (5, 4, 3) and np.all(vol.array == 2)


def test_names_and_prediction_endings(tmp_path):
    assert strip_volume_suffix("CASE_0000.nrrd") == "CASE_0000"
    assert strip_volume_suffix("x.MHA") == "x"
    assert prediction_ending("a/CASE_0000.mha") == ".mha"
    assert prediction_ending("a/CASE_0000.mhd") == ".mha"
    assert prediction_ending("a/CASE.nhdr") == ".nrrd"
    assert prediction_ending("a/CASE.nii") == ".nii"
    (tmp_path / "series").mkdir()
    assert prediction_ending(tmp_path / "series") == ".nii.gz"


def _one_error(path, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        read_volume(path)
    assert "\n" not in str(info.value)


def test_damaged_itk_files_give_one_error(tmp_path, capfd):
    img = sitk.GetImageFromArray(np.ones((4, 5, 6), np.int16))
    raw = tmp_path / "raw.mha"
    sitk.WriteImage(img, str(raw))
    data = raw.read_bytes()
    (tmp_path / "cut.mha").write_bytes(data[:-10])
    _one_error(tmp_path / "cut.mha", r"cut\.mha: truncated: the header cut\.mha claims 240 bytes.*holds 230")
    # A header claiming 240 GB of voxels in a file of a few hundred bytes: refused before allocation.
    (tmp_path / "bomb.mha").write_bytes(data.replace(b"DimSize = 6 5 4", b"DimSize = 6000 5000 4000"))
    _one_error(tmp_path / "bomb.mha", r"bomb\.mha: truncated: .*240,000,000,000 bytes")
    sitk.WriteImage(img, str(tmp_path / "packed.mha"), True)
    packed = (tmp_path / "packed.mha").read_bytes()
    (tmp_path / "zbomb.mha").write_bytes(packed.replace(b"DimSize = 6 5 4", b"DimSize = 6000 5000 4000"))
    _one_error(tmp_path / "zbomb.mha", r"zbomb\.mha: .*more than \d+ compressed bytes can hold")
    (tmp_path / "zcut.mha").write_bytes(packed[:-5])
    _one_error(tmp_path / "zcut.mha", r"zcut\.mha: truncated")
    # .nrrd with a detached data file (.nhdr): missing, then truncated.
    sitk.WriteImage(img, str(tmp_path / "det.nhdr"))
    data_file = tmp_path / "det.raw"
    assert data_file.is_file()
    body = data_file.read_bytes()
    data_file.unlink()
    _one_error(tmp_path / "det.nhdr", r"det\.nhdr: the header names the data file det\.raw, which is missing")
    data_file.write_bytes(body[:100])
    _one_error(tmp_path / "det.nhdr", r"det\.raw: truncated: the header det\.nhdr claims 240 bytes.*holds 100")
    sitk.WriteImage(img, str(tmp_path / "g.nrrd"), True)
    (tmp_path / "gcut.nrrd").write_bytes((tmp_path / "g.nrrd").read_bytes()[:-12])
    _one_error(tmp_path / "gcut.nrrd", r"gcut\.nrrd: cannot read the voxel data \(truncated")
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 6 5 4\nendian: little\nencoding: bzip2\n\n"
    (tmp_path / "b.nrrd").write_bytes(header + bytes(240))
    _one_error(tmp_path / "b.nrrd", r"b\.nrrd: NRRD encoding 'bzip2' is not supported")
    (tmp_path / "s.nrrd").write_bytes(header.replace(b"bzip2", b"raw\nbyte skip: x") + bytes(240))
    _one_error(tmp_path / "s.nrrd", r"s\.nrrd: header field byte skip = 'x' is not a whole number")
    (tmp_path / "junk.nrrd").write_bytes(b"hello")
    _one_error(tmp_path / "junk.nrrd", r"junk\.nrrd: not a NRRD file")
    sitk.WriteImage(img, str(tmp_path / "m.mhd"))
    (tmp_path / "m.raw").unlink()
    _one_error(tmp_path / "m.mhd", r"m\.mhd: the header names the data file m\.raw, which is missing")
    capfd.readouterr()


def _transcode(src: Path, dst: Path, syntax) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(dst))
    assert writer.Write()


def test_compressed_dicom_series_read_like_uncompressed(tmp_path):
    gdcm = pytest.importorskip("gdcm")
    import pydicom
    from pydicom.uid import RLELossless

    write_dicom_series(tmp_path / "plain")
    ref = read_volume(tmp_path / "plain")
    files = sorted((tmp_path / "plain").iterdir())
    for name, syntax in (("jpeg-lossless", gdcm.TransferSyntax.JPEGLosslessProcess14_1),
                         ("jpeg-ls", gdcm.TransferSyntax.JPEGLSLossless)):
        (tmp_path / name).mkdir()
        for f in files:
            _transcode(f, tmp_path / name / f.name, syntax)
        assert pydicom.dcmread(str(tmp_path / name / files[0].name)).file_meta.TransferSyntaxUID.is_compressed
        vol = read_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.array, ref.array)
        np.testing.assert_allclose(vol.affine, ref.affine)
    (tmp_path / "rle").mkdir()
    for f in files:
        ds = pydicom.dcmread(str(f))
        ds.compress(RLELossless)
        ds.save_as(str(tmp_path / "rle" / f.name))
    np.testing.assert_array_equal(read_volume(tmp_path / "rle").array, ref.array)
    # JPEG 2000 (GDCM's encoder needs slices larger than a few pixels).
    write_dicom_series(tmp_path / "plain32", rows=32, cols=32)
    (tmp_path / "j2k").mkdir()
    for f in sorted((tmp_path / "plain32").iterdir()):
        _transcode(f, tmp_path / "j2k" / f.name, gdcm.TransferSyntax.JPEG2000Lossless)
    assert pydicom.dcmread(str(next((tmp_path / "j2k").iterdir()))).file_meta.TransferSyntaxUID.name.startswith("JPEG 2000")
    np.testing.assert_array_equal(read_volume(tmp_path / "j2k").array, read_volume(tmp_path / "plain32").array)

    # One slice stored otherwise: refused from the headers, naming that file.
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "plain", mixed)
    shutil.copy(tmp_path / "jpeg-lossless" / files[1].name, mixed / files[1].name)
    _one_error(mixed, rf"{files[1].name}: DICOM transfer syntax JPEG Lossless.* differs from .*Explicit VR Little Endian")


def test_dicom_series_mixing_sizes(tmp_path):
    write_dicom_series(tmp_path / "a", n=4)
    write_dicom_series(tmp_path / "b", n=4, rows=7)
    import pydicom

    odd = sorted((tmp_path / "b").iterdir())[0]
    ds = pydicom.dcmread(str(odd))
    ds.SeriesInstanceUID = pydicom.dcmread(str(sorted((tmp_path / "a").iterdir())[0])).SeriesInstanceUID
    ds.save_as(str(tmp_path / "a" / "zz_odd.dcm"))
    _one_error(tmp_path / "a", r"zz_odd\.dcm: DICOM size \(rows x columns\) \(7, 6\) differs from img\d+\.dcm's \(5, 6\)")


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_nnunet_dataset_in_itk_format_is_checked_predicted_and_scored(tmp_path, ending, capsys):
    import json

    from tests.volumes.test_evaluate import ThresholdModel

    from segdino.cli import main
    from segdino.data.synthetic import write_volume_dataset
    from segdino.volumes import check_volume_dataset, ct_window, find_volume_cases
    from segdino.volumes.evaluate import evaluate_volumes
    from segdino.volumes.predict import predict_volume_files

    src = write_volume_dataset(tmp_path / "nii", 2, 1, 2, shape=(6, 32, 32), seed=4)
    root = tmp_path / "itk"
    for p in sorted(src.rglob("*.nii.gz")):
        vol = read_volume(p)
        write_volume(root / p.parent.name / (strip_volume_suffix(p.name) + ending), vol.array, vol.affine)
    meta = json.loads((src / "dataset.json").read_text())
    meta["file_ending"] = ending
    (root / "dataset.json").write_text(json.dumps(meta))
    report = check_volume_dataset(root)
    assert report.ok, report.problems
    found = find_volume_cases(root)
    assert found.layout == "nnunet" and all(c.image.name.endswith(ending) for c in found.cases)

    window = ct_window(hu_range=(-160.0, 240.0))
    model = ThresholdModel(thresholds=((20.5 + 160) / 400, (80.5 + 160) / 400), intensity=window, image_size=(32, 32))
    from_model = evaluate_volumes(root, tmp_path / "from_model", model=model, nsd_tolerance=2.0)
    for case in from_model["cases"]:
        written = read_volume(tmp_path / "from_model" / "predictions" / f"{case}{ending}")
        hu = read_volume(root / "imagesTs" / f"{case}_0000{ending}")
        np.testing.assert_allclose(written.affine, hu.affine, atol=1e-5)
        np.testing.assert_array_equal(written.array, (hu.array > 20).astype(np.uint8) + (hu.array > 80))
    results = predict_volume_files(model, root / "imagesTs", tmp_path / "pred")
    assert [Path(w).name for _, w, _ in results] == [f"{c}{ending}" for c in from_model["cases"]]
    code = main(["evaluate", "--predictions", str(tmp_path / "pred"), "--data", str(root),
                 "--out", str(tmp_path / "from_files"), "--nsd-tolerance", "2"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    from_files = read_summary(tmp_path / "from_files" / "summary.json")
    assert from_files["per_class"] == from_model["per_class"]
    assert from_files["nsd_tolerance"] == 2.0 and "NSD at 2 mm" in cap.out
    assert "| NSD at 2 mm |" in (tmp_path / "from_files" / "report.md").read_text()
    assert all(0.0 <= e["nsd"]["mean"] <= 1.0 for e in from_files["per_class"].values())


def test_region_labels_are_refused_with_the_regions_named(tmp_path, capsys):
    import json

    from segdino.cli import main
    from segdino.data.synthetic import write_volume_dataset
    from segdino.volumes import find_volume_cases

    root = write_volume_dataset(tmp_path / "Dataset030", 2, 1, 1, shape=(4, 32, 32), seed=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": [2]}
    meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: 'labels' defines 2 region\(s\).*whole = \[1, 2\]; "
                                        r"core = \[2\].*one class per label value"):
        find_volume_cases(root)
    for args in (["data", "check", "--data", str(root)],
                 ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
                  "--backbone", "vitt16"]):
        code = main(args)
        cap = capsys.readouterr()
        assert code != 0
        assert "whole = [1, 2]; core = [2]" in cap.out + cap.err and "Traceback" not in cap.err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_nnunet_dataset_of_detached_headers(tmp_path):
    """CASE_0000.mhd + CASE_0000.zraw: the data files are read through their headers, not listed as strays;
    predictions come out as one-file .mha."""
    import json

    from tests.volumes.test_evaluate import ThresholdModel

    from segdino.data.synthetic import write_volume_dataset
    from segdino.volumes import check_volume_dataset, ct_window, find_volume_cases
    from segdino.volumes.predict import predict_volume_files

    src = write_volume_dataset(tmp_path / "nii", 2, 0, 1, shape=(4, 32, 32), seed=5)
    root = tmp_path / "mhd"
    for p in sorted(src.rglob("*.nii.gz")):
        vol = read_volume(p)
        write_volume(root / p.parent.name / (strip_volume_suffix(p.name) + ".mhd"), vol.array, vol.affine)
    assert any(p.suffix == ".zraw" for p in (root / "imagesTr").iterdir())
    meta = json.loads((src / "dataset.json").read_text())
    meta["file_ending"] = ".mhd"
    (root / "dataset.json").write_text(json.dumps(meta))
    found = find_volume_cases(root)
    assert not found.issues and len(found.cases) == 3
    assert check_volume_dataset(root).ok
    model = ThresholdModel(intensity=ct_window(hu_range=(-160.0, 240.0)), image_size=(32, 32))
    results = predict_volume_files(model, root / "imagesTs", tmp_path / "pred")
    (case,) = [c.case_id for c in found.cases if c.subset == "test"]
    assert [(Path(w).name, e) for _, w, e in results] == [(f"{case}.mha", None)]
    np.testing.assert_allclose(read_volume(tmp_path / "pred" / "masks" / f"{case}.mha").affine,
                               read_volume(root / "imagesTs" / f"{case}_0000.mhd").affine, atol=1e-5)


def test_undecodable_dicom_names_the_file_and_the_syntax(tmp_path, monkeypatch):
    gdcm = pytest.importorskip("gdcm")
    import pydicom

    from segdino.volumes import dicom

    write_dicom_series(tmp_path / "plain", n=2)
    (tmp_path / "jpeg").mkdir()
    for f in sorted((tmp_path / "plain").iterdir()):
        _transcode(f, tmp_path / "jpeg" / f.name, gdcm.TransferSyntax.JPEGLosslessProcess14_1)

    def no_decoder(self):
        raise RuntimeError("Unable to decode the pixel data: no plugin is available")

    # As on a machine without GDCM: pydicom cannot decode, and the message says what to install.
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    monkeypatch.setattr(dicom, "_has_gdcm", lambda: False)
    _one_error(tmp_path / "jpeg", r"img\d+\.dcm: cannot decode pixel data, transfer syntax JPEG Lossless.*"
                                  r"1\.2\.840\.10008\.1\.2\.4\.70.*segdino\[volumes\]")
