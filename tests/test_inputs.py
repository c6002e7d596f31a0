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

from tests.conftest import randomize_


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


# --- sizes checked before allocation: a small file cannot exhaust memory --------------------------

def _tiny_file(tmp_path: Path, name: str = "m.safetensors", **config) -> tuple[Path, dict, dict]:
    from safetensors import safe_open

    model = randomize_(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)))
    path = segdino.save_model(model, tmp_path / name)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if config:
        cfg = json.loads(meta["segdino_config"])
        cfg.update(config)
        meta = dict(meta, segdino_config=json.dumps(cfg))
        save_file(tensors, str(path), metadata=meta)
    return path, tensors, meta


def test_state_dict_with_an_oversized_projection_is_refused_before_the_model_is_built(tmp_path):
    """35 MB of state dict whose projection is 16384 wide implied a 9.6 GB model; now its shapes are
    compared with a storage-less skeleton first. Run under an address-space limit."""
    import subprocess
    import sys
    import textwrap

    _, tensors, _ = _tiny_file(tmp_path)
    tensors = dict(tensors)
    tensors["tpa.projections.0.weight"] = torch.zeros(16384, 192, 1, 1)
    path = tmp_path / "plain_state.safetensors"
    save_file(tensors, str(path))  # no config: the loader infers one from the shapes
    code = textwrap.dedent(f"""
        import resource, sys
        import timm, torch, safetensors.torch
        import segdino, segdino.checkpoint, segdino.weights, segdino.model
        from segdino.errors import CheckpointError
        # 2 GiB of address space beyond what the imports took: far below the 9.6 GB model.
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 1024**3, vm + 2 * 1024**3))
        try:
            segdino.load_model({str(path)!r})
        except CheckpointError as e:
            print("REFUSED", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "REFUSED" in proc.stdout, proc.stderr[-2000:]
    assert "plain_state.safetensors" in proc.stdout and "(16384, 192, 1, 1)" not in proc.stderr


@pytest.mark.parametrize("side", [2048, 8192])
def test_config_asking_for_a_huge_input_is_refused_by_its_memory_estimate(tmp_path, monkeypatch, side):
    monkeypatch.setenv("SEGDINO_MAX_MEMORY_GB", "4")
    path, _, _ = _tiny_file(tmp_path, image_size=[side, side])
    with pytest.raises(CheckpointError) as e:
        segdino.load_model(path)
    msg = str(e.value)
    assert str(path) in msg and f"input {side}x{side}" in msg
    assert "more than the limit of 4.0 GiB (SEGDINO_MAX_MEMORY_GB=4)" in msg and "SEGDINO_MAX_MEMORY_GB" in msg
    if side == 2048:  # the limit is the user's to raise
        monkeypatch.setenv("SEGDINO_MAX_MEMORY_GB", "1000")
        assert segdino.load_model(path).config.image_size == (2048, 2048)


def test_memory_limit_defaults_to_half_the_machine(monkeypatch):
    from segdino import memory

    monkeypatch.delenv("SEGDINO_MAX_MEMORY_GB", raising=False)
    ram = memory.physical_memory()
    assert memory.memory_limit() == (ram // 2 if ram else memory.FALLBACK_LIMIT)
    for bad in ("nan", "-3", "lots"):
        monkeypatch.setenv("SEGDINO_MAX_MEMORY_GB", bad)
        assert memory.memory_limit() == (ram // 2 if ram else memory.FALLBACK_LIMIT)


def test_keep_size_on_a_huge_image_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEGDINO_MAX_MEMORY_GB", "4")
    path, _, _ = _tiny_file(tmp_path)
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((3000, 3000, 3), np.uint8)).save(image)
    code = cli_main(["predict", "--model", str(path), str(image), "--out", str(tmp_path / "out"),
                     "--keep-size", "--device", "cpu"])
    msg = _one_line(capsys, code)
    assert "3000x3000" in msg and "--keep-size" in msg and "SEGDINO_MAX_MEMORY_GB" in msg
    assert not list((tmp_path / "out").rglob("*.png")) if (tmp_path / "out").exists() else True


def test_keep_size_splits_a_batch_to_fit_the_memory_limit(monkeypatch):
    from segdino import inference, memory

    config = segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)).config
    per = memory.forward_bytes(config, (512, 512))
    monkeypatch.setenv("SEGDINO_MAX_MEMORY_GB", str(2.5 * per / memory.GIB))
    assert inference.keep_size_batch(config, (512, 512), (500, 500), 8) == 2


# --- non-finite outputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("std", [1e-300, 1e-300, 1e-300]), ("mean", [1e308, 1e308, 1e308]),
                                         ("std", [1e9, 1.0, 1.0])])
def test_normalisation_that_overflows_is_refused_at_config_validation(tmp_path, field, value):
    from segdino.config import ModelConfig

    with pytest.raises(ConfigError, match="mean and std"):
        ModelConfig(backbone="vitt16", **{field: tuple(value)})
    path, _, _ = _tiny_file(tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=f"field '{field}'"):
        segdino.load_model(path)


def test_non_finite_model_outputs_are_an_error_naming_the_file(tmp_path, capsys):
    path, _, _ = _tiny_file(tmp_path)
    model = segdino.load_model(path)
    with torch.no_grad():
        model.head.conv.bias.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="m.safetensors: the model's outputs hold .* NaN or infinite"):
        segdino.predict(model, np.zeros((20, 20, 3), np.uint8))


def _onnx_file(path: Path, nodes, initializers=()) -> Path:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 32, 32])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers)),
                              opset_imports=[helper.make_opsetid("", 13)])
    config = segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)).config.to_dict()
    model.metadata_props.add(key="format", value="segdino-onnx")
    model.metadata_props.add(key="segdino_config", value=json.dumps(config))
    onnx.save(model, str(path))
    return path


def test_onnx_graph_giving_nan_is_an_error_not_empty_masks(tmp_path, capsys):
    from onnx import helper, numpy_helper

    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    path = _onnx_file(tmp_path / "nan.onnx", [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Abs", ["m"], ["a"]),
        helper.make_node("Add", ["a", "one"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("Sqrt", ["c"], ["logits"]),  # sqrt of a negative number: NaN everywhere
    ], [one])
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    code = cli_main(["predict", "--model", str(path), str(image), "--out", str(tmp_path / "out")])
    msg = _one_line(capsys, code)
    assert "nan.onnx" in msg and "NaN or infinite" in msg
    assert not list((tmp_path / "out").rglob("*.png")) if (tmp_path / "out").exists() else True


def test_onnx_graph_with_a_64_gib_constant_is_refused_before_it_runs(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([16, 1024, 1024, 1024], np.int64), "shape")
    path = _onnx_file(tmp_path / "big.onnx", [
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceMean", ["big"], ["m"], keepdims=0),
        helper.make_node("ReduceMean", ["image"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["r", "m"], ["logits"]),
    ], [shape])
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    code = cli_main(["predict", "--model", str(path), str(image), "--out", str(tmp_path / "out")])
    msg = _one_line(capsys, code)
    assert "big.onnx" in msg and "64.0 GiB" in msg and "SEGDINO_MAX_MEMORY_GB" in msg


# --- messages that say what is wrong -------------------------------------------------------------

@pytest.mark.parametrize("message", [
    "Weights only load failed. In PyTorch 2.6, we changed the default value ...\n\n\nTrying to load unsupported "
    "GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation of torch.load",
    "Weights only load failed. ...\n WeightsUnpickler error: Unsupported global: GLOBAL os.system was not an "
    "allowed global by default. Please use `torch.serialization.add_safe_globals([system])`",
])
def test_refused_pickle_says_it_needs_code_under_every_torch_wording(tmp_path, monkeypatch, message):
    import pickle

    from segdino import weights

    path = tmp_path / "evil.pth"
    torch.save({"a": torch.zeros(1)}, path)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(message)

    monkeypatch.setattr(weights.torch, "load", refuse)
    with pytest.raises(CheckpointError, match=r"evil.pth: refused to load: the pickle needs code \((posix|os)\.system\)"):
        weights.safe_torch_load(path)


def test_refused_pickle_with_the_installed_torch(tmp_path):
    import os

    from segdino.weights import safe_torch_load

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "evil.pth"
    torch.save({"a": Evil()}, path)
    with pytest.raises(CheckpointError, match="the pickle needs code .*getcwd.* so it was not executed"):
        safe_torch_load(path)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_20000_pixel_png_is_called_too_large_not_corrupt(tmp_path):
    from segdino.data.imageio import MAX_PIXELS, image_info, read_image

    path = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    for read in (read_image, image_info, lambda p: image_info(p, decode=True)):
        with pytest.raises(DataError) as e:
            read(path)
        msg = str(e.value)
        assert "20000x20000" in msg and f"{MAX_PIXELS:,}" in msg and "SEGDINO_MAX_IMAGE_PIXELS" in msg
        assert "corrupt" not in msg


# --- EXIF orientation ----------------------------------------------------------------------------

def _rotated_jpeg_pair(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A photo stored sideways with Orientation=6 and the mask drawn on the photo as displayed."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    shown = np.zeros((40, 24, 3), np.uint8)  # displayed: 24 wide, 40 high
    shown[2:12, 3:9] = 255  # a bright patch near the top left, as the viewer shows it
    mask = np.zeros((40, 24), np.uint8)
    mask[2:12, 3:9] = 255
    # Orientation 6: the viewer turns the stored pixels 90 degrees clockwise, so they are stored
    # turned the other way.
    stored = np.rot90(shown, k=1).copy()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "images" / "p.jpg", quality=95, exif=exif)
    Image.fromarray(mask).save(root / "masks" / "p.png")
    return shown, mask


def test_exif_orientation_is_applied_to_images_and_reported_by_data_check(tmp_path, capsys):
    from segdino.data.imageio import image_info, read_image
    from segdino.data.masks import read_mask

    root = tmp_path / "d"
    shown, mask = _rotated_jpeg_pair(root)
    image = read_image(root / "images" / "p.jpg")
    assert image.shape == (40, 24, 3)
    assert image_info(root / "images" / "p.jpg")[0] == (40, 24)
    assert np.abs(image.astype(int) - shown.astype(int)).mean() < 8  # JPEG noise only
    assert read_mask(root / "masks" / "p.png").shape == (40, 24)
    for i in range(1, 4):  # enough pairs for a split
        Image.fromarray(shown).save(root / "images" / f"q{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"q{i}.png")
    code = cli_main(["data", "check", "--data", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 file(s) carry an EXIF orientation" in out and "p.jpg" in out


def test_exif_orientation_is_applied_to_masks_too(tmp_path):
    from segdino.data.masks import read_mask

    mask = np.zeros((40, 24), np.uint8)
    mask[2:12, 3:9] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(mask, k=1).copy()).save(tmp_path / "m.jpg", quality=100, exif=exif)
    assert np.array_equal(read_mask(tmp_path / "m.jpg"), (mask > 127).astype(np.uint8))
