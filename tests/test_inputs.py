"""Readers, model loading and inputs: each test reproduces one way a hostile or unusual input used
to crash, exhaust memory or give a silently wrong result, and asserts what happens now."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import segdino
from segdino.cli import main as cli_main
from segdino.errors import CheckpointError, ConfigError, DataError, SegDINOError

from conftest import randomize_


def _one_line(capsys, code: int) -> str:
    """The CLI's error output: exit code non-zero, one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def write_plain_2d(root: Path, n: int = 6, size: int = 32) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        m = np.zeros((size, size), np.uint8)
        m[4:12 + i, 5:15] = 255
        Image.fromarray(m).save(root / "masks" / f"c{i}.png")
    return root


def write_plain_volumes(root: Path, n: int = 5, shape=(8, 9, 6), label_origin=(0.0, 0.0, 0.0)) -> Path:
    from segdino.volumes.io import write_nifti

    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image = rng.normal(0, 1, shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[2:5, 3:6, 1:4] = 1
        aff = np.diag([1.5, 1.5, 2.0, 1.0])
        write_nifti(root / "images" / f"v{i}.nii.gz", image, aff)
        laff = aff.copy()
        laff[:3, 3] = label_origin
        write_nifti(root / "labels" / f"v{i}.nii.gz", label, laff)
    return root


# --- one split rule for 2D and volumes ----------------------------------------------------------

BAD_SPLITS = {
    "overlap": ({"train": ["{0}", "{1}"], "val": ["{2}"], "test": ["{0}"]}, "in both 'train' and 'test'"),
    "duplicate": ({"train": ["{0}", "{0}", "{1}"], "val": ["{2}"]}, "twice in 'train'"),
    "unknown id": ({"train": ["{0}", "nobody"], "val": ["{2}"]}, "does not have: nobody"),
    "wrong type": ({"train": ["{0}", 7], "val": ["{2}"]}, "must be a list of case names"),
    "not a list": ({"train": "{0}", "val": ["{2}"]}, "must be a list of case names"),
    "unknown split": ({"train": ["{0}"], "validation": ["{2}"]}, "unknown split names validation"),
    "deep": (None, "nested too deeply"),
}


def _write_splits(root: Path, kind: str, ids: list[str]) -> None:
    data, _ = BAD_SPLITS[kind]
    if data is None:
        text = "[" * 100_000 + "]" * 100_000
    else:
        text = json.dumps(data).replace("{0}", ids[0]).replace("{1}", ids[1]).replace("{2}", ids[2])
    (root / "splits.json").write_text(text)


def _dataset(tmp_path: Path, dims: str) -> tuple[Path, list[str]]:
    if dims == "2d":
        return write_plain_2d(tmp_path / "d"), ["c0", "c1", "c2"]
    pytest.importorskip("nibabel")
    return write_plain_volumes(tmp_path / "d"), ["v0", "v1", "v2"]


@pytest.mark.parametrize("kind", sorted(BAD_SPLITS))
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_one_split_validator_refuses_bad_split_files_in_data_check(tmp_path, capsys, kind, dims):
    root, ids = _dataset(tmp_path, dims)
    _write_splits(root, kind, ids)
    code = cli_main(["data", "check", "--data", str(root)])
    out = capsys.readouterr().out
    assert code != 0
    assert "NOT usable" in out
    assert BAD_SPLITS[kind][1] in out
    assert "splits.json" in out


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_train_and_evaluate_refuse_a_case_in_two_splits(tmp_path, capsys, tiny_model, dims):
    root, ids = _dataset(tmp_path, dims)
    _write_splits(root, "overlap", ids)
    code = cli_main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--backbone", "vitt16",
                     "--epochs", "1", "--image-size", "32", "--device", "cpu"])
    assert "in both 'train' and 'test'" in _one_line(capsys, code)
    model = tmp_path / "m.safetensors"
    segdino.save_model(tiny_model, model)
    code = cli_main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(tmp_path / "ev"),
                     "--device", "cpu"])
    assert "in both 'train' and 'test'" in _one_line(capsys, code)


# --- shard index, YAML config: one-line refusals -------------------------------------------------

def _shard_folder(tmp_path: Path, index_bytes: bytes) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"cls_token": torch.zeros(1, 1, 4)}, str(folder / "model-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_bytes(index_bytes)
    return folder


def _index(weight_map) -> bytes:
    return json.dumps({"metadata": {}, "weight_map": weight_map}).encode()


BAD_INDEXES = {
    "not utf-8": (b'{"weight_map": {"a": "\xff\xfe.safetensors"}}', "is not UTF-8"),
    "int shard": (_index({"cls_token": 5}), "expected a file name"),
    "deep": (b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "no map": (b'{"metadata": {}}', '"weight_map"'),
    "absolute": (_index({"cls_token": "/etc/passwd"}), "may name only files beside it"),
    "parent": (_index({"cls_token": "../outside.safetensors"}), "may name only files beside it"),
    "subfolder": (_index({"cls_token": "sub/model.safetensors"}), "may name only files beside it"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INDEXES))
def test_bad_shard_index_is_one_checkpoint_error(tmp_path, kind):
    from segdino.weights import read_state_dict

    data, expected = BAD_INDEXES[kind]
    folder = _shard_folder(tmp_path, data)
    (tmp_path / "outside.safetensors").write_bytes((folder / "model-00001.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="model.safetensors.index.json") as e:
        read_state_dict(folder)
    assert expected in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_good_shard_index_still_reads(tmp_path):
    from segdino.weights import read_state_dict

    folder = _shard_folder(tmp_path, _index({"cls_token": "model-00001.safetensors"}))
    assert set(read_state_dict(folder)) == {"cls_token"}


@pytest.mark.parametrize("text,expected", [
    (b"epochs: " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"epochs: 2\nnote: \xff\xfe\n", "is not UTF-8"),
])
def test_bad_yaml_config_is_one_line(tmp_path, capsys, text, expected):
    root = write_plain_2d(tmp_path / "d")
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text)
    code = cli_main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--config", str(cfg)])
    assert expected in _one_line(capsys, code)


# --- masks: one bit-depth and colour rule; train and evaluate refuse what data check refuses ------

def _masks_as(root: Path, kind: str) -> None:
    for p in sorted((root / "masks").iterdir()):
        fg = np.asarray(Image.open(p)) > 0
        if kind == "16-bit 0/4095":
            Image.fromarray((fg * 4095).astype(np.uint16)).save(p)
        elif kind == "red":
            rgb = np.zeros(fg.shape + (3,), np.uint8)
            rgb[fg] = (255, 0, 0)
            Image.fromarray(rgb).save(p)


def test_12_bit_masks_in_16_bit_files_read_as_drawn(tmp_path, capsys):
    from segdino.data.masks import read_mask

    root = write_plain_2d(tmp_path / "d")
    expected = np.asarray(Image.open(root / "masks" / "c0.png")) > 0
    _masks_as(root, "16-bit 0/4095")
    assert np.array_equal(read_mask(root / "masks" / "c0.png"), expected.astype(np.uint8))
    code = cli_main(["data", "check", "--data", str(root)])
    out = capsys.readouterr().out
    assert code == 0 and "empty masks: 0" in out


def test_all_red_masks_are_refused_by_data_check_train_and_evaluate(tmp_path, capsys, tiny_model):
    root = write_plain_2d(tmp_path / "d")
    _masks_as(root, "red")
    code = cli_main(["data", "check", "--data", str(root)])
    out = capsys.readouterr().out
    assert code != 0 and "every mask is empty" in out
    code = cli_main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--backbone", "vitt16",
                     "--epochs", "1", "--image-size", "32", "--device", "cpu"])
    assert "every mask is empty" in _one_line(capsys, code)
    assert not (tmp_path / "run" / "best.safetensors").exists()
    model = tmp_path / "m.safetensors"
    segdino.save_model(tiny_model, model)
    code = cli_main(["evaluate", "--model", str(model), "--data", str(root), "--out", str(tmp_path / "ev"),
                     "--device", "cpu"])
    assert "every mask is empty" in _one_line(capsys, code)


# --- non-finite voxels are replaced at read time, once, for every command -------------------------

def test_nan_voxels_do_not_spread_through_percentiles_or_ct_windows(tmp_path):
    pytest.importorskip("nibabel")
    from segdino.volumes.intensity import ct_window, normalize_intensity, percentile_window
    from segdino.volumes.io import read_volume, write_nifti

    rng = np.random.default_rng(0)
    array = rng.normal(100, 20, (10, 10, 4)).astype(np.float32)
    array[0, 0, 1] = np.nan
    array[1, 0, 2] = np.inf
    array[2, 0, 3] = -np.inf
    path = write_nifti(tmp_path / "v.nii.gz", array, np.eye(4))
    vol = read_volume(path)
    assert vol.meta["nonfinite"] == 3 and np.isfinite(vol.array).all()
    finite = array[np.isfinite(array)]
    assert vol.array[0, 0, 1] == finite.min() and vol.array[1, 0, 2] == finite.max()
    for spec in (percentile_window(), ct_window(hu_range=(50.0, 150.0))):
        for source in (vol.array, array):  # read from a file, or handed in directly
            out = normalize_intensity(source, spec)
            assert np.isfinite(out).all()
            # The rest of the volume is normalised as if the bad voxels were not there.
            ok = np.isfinite(array)
            ref = normalize_intensity(np.where(ok, array, np.where(np.isposinf(array), finite.max(), finite.min())), spec)
            assert np.allclose(out[ok], ref[ok])


def test_nan_in_a_label_volume_is_refused(tmp_path):
    pytest.importorskip("nibabel")
    from segdino.volumes.io import read_volume, write_nifti

    label = np.zeros((4, 4, 3), np.float32)
    label[0, 0, 0] = np.nan
    path = write_nifti(tmp_path / "l.nii.gz", label, np.eye(4))
    with pytest.raises(DataError, match="l.nii.gz: label volume has 1 NaN or infinite"):
        read_volume(path, label=True)


def test_data_check_says_what_was_done_with_nan_voxels(tmp_path, capsys):
    pytest.importorskip("nibabel")
    from segdino.volumes.io import read_volume, write_nifti

    root = write_plain_volumes(tmp_path / "d")
    vol = read_volume(root / "images" / "v1.nii.gz")
    vol.array[0, 0, 0] = np.nan
    write_nifti(root / "images" / "v1.nii.gz", vol.array, vol.affine)
    code = cli_main(["data", "check", "--data", str(root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 image(s) hold NaN or infinite voxels, read as the volume's lowest finite value" in out and "v1" in out


class _BrightIsForeground(torch.nn.Module):
    """A stand-in model: foreground where the normalised intensity is above the mean."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, :1] * 10.0 + self.dummy


def test_nan_voxel_does_not_erase_a_prediction():
    from segdino.config import ModelConfig
    from segdino.volumes.intensity import percentile_window, volume_settings
    from segdino.volumes.io import Volume
    from segdino.volumes.predict import predict_volume

    config = ModelConfig(backbone="vitt16", decoder_dim=16, image_size=(32, 32),
                         volume=volume_settings(percentile_window(), "axial", 0))
    model = _BrightIsForeground(config).eval()
    array = np.zeros((32, 32, 3), np.float32)
    array[8:20, 8:20, :] = 100.0  # a bright lesion in every slice
    clean = predict_volume(model, Volume(array.copy(), np.eye(4)), device="cpu")
    assert clean.sum() >= 3 * 100
    array[31, 31, 1] = np.nan
    dirty = predict_volume(model, Volume(array, np.eye(4)), device="cpu")
    assert np.array_equal(clean, dirty)


# --- a label off its image's grid is refused by training, as by data check ----------------------

def test_misregistered_label_is_refused_by_training_and_data_check(tmp_path, capsys):
    pytest.importorskip("nibabel")
    root = write_plain_volumes(tmp_path / "d", label_origin=(30.0, 0.0, 0.0))
    code = cli_main(["data", "check", "--data", str(root)])
    assert code != 0 and "label geometry differs" in capsys.readouterr().out
    code = cli_main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--backbone", "vitt16",
                     "--epochs", "1", "--image-size", "32", "--device", "cpu"])
    msg = _one_line(capsys, code)
    assert "label geometry differs from image" in msg and "origin (30" in msg
    assert not (tmp_path / "run" / "best.safetensors").exists()
