"""Messages about volume datasets and inputs in volume terms: data check, and inputs of the wrong kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from segdino.data.check import check_dataset  # noqa: E402


def _nnunet(root: Path, n: int = 2, num_training: int | None = None) -> Path:
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    for i in range(n):
        label = np.zeros((20, 16, 6), np.uint8)
        label[5:9, 5:9, 2:4] = 1
        for sub, name, arr in (("imagesTr", f"c{i}_0000", (label * 900.0 - 800).astype(np.int16)),
                               ("labelsTr", f"c{i}", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, affine), str(root / sub / f"{name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1},
        "numTraining": n if num_training is None else num_training, "file_ending": ".nii.gz"}))
    return root


def test_data_check_speaks_of_labels_axes_and_spacing(tmp_path):
    text = check_dataset(_nnunet(tmp_path / "ds")).format()
    assert "value > 127" not in text and "masks" not in text
    assert "task:        binary: label 1 nodule against 0 background (dataset.json)" in text
    assert "label values: 0 in 2 labels, 1 in 2 labels" in text
    assert "empty labels: 0" in text
    assert "20 x 16 x 6 (x, y, z) at 0.7 x 0.7 x 2.5 mm" in text
    assert "numTraining" not in text


def test_data_check_flags_num_training_and_missing_dataset_json(tmp_path):
    root = _nnunet(tmp_path / "ds", num_training=5)
    report = check_dataset(root)
    assert report.ok  # the files that are there are usable
    assert any("numTraining is 5 but imagesTr/ holds 2 training case(s)" in n for n in report.notes)
    (root / "dataset.json").unlink()
    report = check_dataset(root)
    assert not report.ok
    assert report.problems == [f"{root / 'dataset.json'}: missing; an nnU-Net raw folder (imagesTr/, labelsTr/) "
                               "needs a dataset.json naming channel_names, labels, numTraining and file_ending"]
    assert "no known dataset layout" not in report.format()


def test_models_refuse_inputs_of_the_other_kind(tmp_path, capsys):
    from PIL import Image

    import segdino
    from segdino.cli import main
    from segdino.volumes import ct_window, volume_settings

    ct = segdino.build_model("vitt16", num_classes=1, decoder_dim=16, image_size=(32, 32))
    ct.config.volume = volume_settings(ct_window("lung"), axis="axial", context=1)
    ct_file = segdino.save_model(ct, tmp_path / "ct.safetensors")
    rgb = segdino.save_model(segdino.build_model("vitt16", num_classes=1, decoder_dim=16, image_size=(32, 32)),
                             tmp_path / "rgb.safetensors")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(photo)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.int16), np.eye(4)), str(scan))

    for model, item, said in ((ct_file, photo, "trained on volumes (CT window lung (-1350..150 HU), axial slices, "
                                                "2.5D context 1); it cannot segment 2D images such as"),
                              (rgb, scan, "trained on 2D images (no intensity window or slice axis); it cannot "
                                          "segment volumes such as")):
        out = tmp_path / f"out_{model.stem}"
        code = main(["predict", "--model", str(model), str(item), "--out", str(out), "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code != 0 and said in err and str(item) in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    with pytest.raises(segdino.ConfigError, match="trained on volumes"):
        segdino.predict(ct, [np.zeros((40, 40, 3), np.uint8)])
