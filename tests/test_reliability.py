"""Reliability: hostile files run no code, forged checkpoints are named, odd and huge inputs are
handled or refused clearly, a failed write keeps the previous file, and training survives kills.

Every test here fails without the behaviour it names: pickles carry a payload that would create a
marker file, writes fail for real (a file-size limit) or through an injected error, kills are
SIGKILL sent to a real ``segdino train`` process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import resource
import shlex
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import segdino
from segdino import checkpoint as ckpt
from segdino import inference, training
from segdino.cli import main as cli_main
from segdino.data import imageio
from segdino.data.imageio import image_info, read_image
from segdino.data.masks import read_mask
from segdino.errors import CheckpointError, DataError, SegDINOError
from segdino.fileio import atomic_write_text
from segdino.checkpoint import load_foreign_model
from segdino.weights import load_backbone_weights, read_state_dict, safe_torch_load

TINY = dict(backbone="vitt16", decoder_dim=16, image_size=(32, 32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small saved model: (model, path, tensors, metadata)."""
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = segdino.build_model(**TINY).eval()
    path = segdino.save_model(model, d / "model.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return model, path, load_file(str(path)), meta


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from segdino.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "d", 4, 2, 2, size=(32, 32), seed=0)


# --- pickles that would run code -----------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``how`` to create ``marker``: what a hostile checkpoint does."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.marker, "w"))
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _backbone_tensors() -> dict[str, torch.Tensor]:
    return {"cls_token": torch.zeros(1, 1, 192), "blocks.0.norm1.weight": torch.ones(192)}


def _hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload in every container a .pth can be: torch zip, torch legacy, plain pickle, nested."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    state = dict(_backbone_tensors(), payload=_Payload("open", marker))
    torch.save(state, folder / "zip.pth")
    files["zip"] = folder / "zip.pth"
    state = dict(_backbone_tensors(), payload=_Payload("exec", marker))
    torch.save(state, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    files["legacy"] = folder / "legacy.pth"
    with open(folder / "plain.pth", "wb") as f:
        pickle.dump(dict(_backbone_tensors(), payload=_Payload("system", marker)), f, protocol=2)
    files["plain"] = folder / "plain.pth"
    torch.save({"state_dict": _backbone_tensors(), "hook": _Payload("exec", marker)}, folder / "nested.pt")
    files["nested"] = folder / "nested.pt"
    return files


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "payload_ran.txt"
    return _hostile_files(tmp_path / "evil", marker), marker


def _refused(fn, path: Path, marker: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        fn(path)
    assert str(path) in str(e.value)
    assert "not executed" in str(e.value) or "refused" in str(e.value), str(e.value)
    assert not marker.exists(), f"{fn} ran the payload of {path}"


def test_hostile_pickles_are_refused_by_every_python_entry_point(hostile):
    files, marker = hostile
    backbone = segdino.build_model(**TINY).backbone
    entry_points = [
        segdino.load_model,
        ckpt.load_model,
        load_foreign_model,
        read_state_dict,
        safe_torch_load,
        lambda p: load_backbone_weights(backbone, p),
        lambda p: segdino.build_model(**TINY, backbone_weights=p),
        lambda p: inference.load_inference_model(p, device="cpu"),
    ]
    for name, path in files.items():
        for fn in entry_points:
            _refused(fn, path, marker)
    # The payloads are live: an unrestricted unpickler runs each of them.
    for name, path in files.items():
        torch.load(path, weights_only=False) if name != "plain" else pickle.loads(path.read_bytes())
        assert marker.exists(), name
        marker.unlink()


def _cli_commands(evil: Path, data: Path, out: Path) -> dict[str, list[str]]:
    """Every command that takes a model, with ``evil`` as that model."""
    image = sorted((data / "images").iterdir())[0]
    small = ["--image-size", "32", "--device", "cpu"]
    commands = {
        "train --init": ["train", "--data", str(data), "--out", str(out / "run_init"), "--init", str(evil),
                         "--epochs", "1", "--num-workers", "0", "--quiet", *small],
        "train --backbone-weights": ["train", "--data", str(data), "--out", str(out / "run_bw"), "--backbone",
                                     "vitt16", "--decoder-dim", "16", "--backbone-weights", str(evil), "--epochs",
                                     "1", "--num-workers", "0", "--quiet", *small],
        "evaluate": ["evaluate", "--model", str(evil), "--data", str(data), "--out", str(out / "eval"),
                     "--device", "cpu"],
        "predict": ["predict", "--model", str(evil), str(image), "--out", str(out / "pred"), "--device", "cpu"],
        "export": ["export", "--model", str(evil), "--format", "onnx", "--out", str(out / "m.onnx")],
        "benchmark": ["benchmark", "--model", str(evil), "--backbone", "vitt16", "--image-size", "32",
                      "--decoder-dim", "16", "--batch", "1", "--repeats", "1", "--warmup", "0", "--device", "cpu"],
    }
    return commands


def test_hostile_pickle_is_refused_by_every_command_that_takes_a_model(tmp_path, dataset, capsys):
    marker = tmp_path / "payload_ran.txt"
    evil = _hostile_files(tmp_path / "evil", marker)["zip"]
    commands = _cli_commands(evil, dataset, tmp_path / "out")
    assert {"train --init", "train --backbone-weights"} <= set(commands)
    for name, argv in commands.items():
        code = cli_main(argv)
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert str(evil) in err and "not executed" in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)  # one clear line, no traceback
        assert not marker.exists(), name
    assert not (tmp_path / "out" / "m.onnx").exists()


# --- forged safetensors -------------------------------------------------------------------------


def _forge_config(meta: dict, **changes) -> dict:
    config = json.loads(meta["segdino_config"])
    config.update(changes)
    return dict(meta, segdino_config=json.dumps(config))


def _with_nan(t: torch.Tensor, value=float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


# name -> (change to (tensors, metadata), fragments the message must hold)
FORGERIES = {
    "float64 weight": (lambda s, m: ({**s, "head.conv.weight": s["head.conv.weight"].double()}, m),
                       ["head.conv.weight", "dtype", "F64"]),
    "integer weight": (lambda s, m: ({**s, "tpa.projections.0.weight": s["tpa.projections.0.weight"].int()}, m),
                       ["tpa.projections.0.weight", "dtype"]),
    "wrong shape": (lambda s, m: ({**s, "head.conv.weight": torch.zeros(2, 16, 1, 1)}, m),
                    ["head.conv.weight", "shape", "(2, 16, 1, 1)"]),
    "NaN weight": (lambda s, m: ({**s, "sad.intra.1.pointwise.weight": _with_nan(s["sad.intra.1.pointwise.weight"])},
                                 m), ["sad.intra.1.pointwise.weight", "non-finite"]),
    "infinite weight": (lambda s, m: ({**s, "backbone.vit.cls_token": _with_nan(s["backbone.vit.cls_token"],
                                                                                  float("inf"))}, m),
                        ["backbone.vit.cls_token", "non-finite"]),
    "missing key": (lambda s, m: ({k: v for k, v in s.items() if k != "head.conv.bias"}, m),
                    ["missing", "head.conv.bias"]),
    "extra key": (lambda s, m: ({**s, "decoder.aux.weight": torch.zeros(3)}, m), ["unexpected", "decoder.aux.weight"]),
    "unknown backbone": (lambda s, m: (s, _forge_config(m, backbone="vitq99")), ["backbone", "vitq99"]),
    "negative classes": (lambda s, m: (s, _forge_config(m, num_classes=-3)), ["num_classes", "-3"]),
    "classes as text": (lambda s, m: (s, _forge_config(m, num_classes="2")), ["num_classes"]),
    "classes not matching the head": (lambda s, m: (s, _forge_config(m, num_classes=3)),
                                      ["head.conv.weight", "num_classes 3"]),
    "width not matching the tensors": (lambda s, m: (s, _forge_config(m, decoder_dim=32)),
                                       ["tpa.projections.0.weight", "decoder_dim 32"]),
    "another backbone's config": (lambda s, m: (s, _forge_config(m, backbone="vits16")),
                                  ["backbone.vit.cls_token", "(1, 1, 192)", "backbone vits16"]),
    "taps outside the backbone": (lambda s, m: (s, _forge_config(m, taps=[2, 5, 8, 40])), ["taps", "40"]),
    "huge input size": (lambda s, m: (s, _forge_config(m, image_size=[10**9, 10**9])), ["image_size"]),
    "input just over 8192": (lambda s, m: (s, _forge_config(m, image_size=[8208, 32])), ["image_size", "8192"]),
    "NaN mean": (lambda s, m: (s, dict(m, segdino_config=m["segdino_config"].replace(
        '"mean": [0.485', '"mean": [NaN'))), ["mean"]),
    "threshold as text": (lambda s, m: (s, _forge_config(m, mask_threshold="high")), ["mask_threshold"]),
    "switch as text": (lambda s, m: (s, _forge_config(m, no_sad="yes")), ["no_sad"]),
    "volume settings garbage": (lambda s, m: (s, _forge_config(m, volume={"intensity": 5})), ["volume"]),
    "unknown field": (lambda s, m: (s, _forge_config(m, run_this="rm -rf /")), ["unknown", "run_this"]),
    "JSON garbage": (lambda s, m: (s, dict(m, segdino_config='{"backbone": "vitt16", ')), ["not valid JSON"]),
    "JSON not an object": (lambda s, m: (s, dict(m, segdino_config="[1, 2, 3]")), ["JSON object"]),
    "config missing": (lambda s, m: (s, {k: v for k, v in m.items() if k != "segdino_config"}), ["segdino_config"]),
    "newer format": (lambda s, m: (s, dict(m, format_version="7")), ["format_version", "newer"]),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_safetensors_is_refused_naming_the_key_or_field(tiny, tmp_path, name):
    _, _, tensors, meta = tiny
    forge, fragments = FORGERIES[name]
    state, metadata = forge(dict(tensors), dict(meta))
    path = tmp_path / "forged.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError) as e:
        segdino.load_model(path)
    msg = str(e.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_forged_config_is_refused_before_a_model_is_allocated(tiny, tmp_path, monkeypatch):
    """A header asking for a ViT-7B over tiny tensors costs nothing: only a storage-less skeleton is built."""
    _, _, tensors, meta = tiny
    path = tmp_path / "forged.safetensors"
    save_file(tensors, str(path), metadata=_forge_config(meta, backbone="vit7b16", decoder_dim=1024))
    devices = []
    real = ckpt.SegDINO

    def recording(config):
        model = real(config)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(ckpt, "SegDINO", recording)
    with pytest.raises(CheckpointError, match="backbone vit7b16"):
        segdino.load_model(path)
    assert devices == ["meta"]


def test_input_size_limit_is_8192_per_side():
    """A config may ask for up to 8192 px per side; one step (16 px) more is refused by name."""
    from segdino.config import ModelConfig

    assert ModelConfig(backbone="vitt16", image_size=(8192, 8192)).image_size == (8192, 8192)
    for size in [(8208, 32), (32, 8208)]:
        with pytest.raises(segdino.ConfigError, match=r"image_size .*8192"):
            ModelConfig(backbone="vitt16", image_size=size)
        with pytest.raises(segdino.ConfigError, match="8192"):
            segdino.build_model(**dict(TINY, image_size=size))


def test_untouched_file_still_loads_bit_identically(tiny):
    model, path, _, _ = tiny
    loaded = segdino.load_model(path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


# --- ONNX files -----------------------------------------------------------------------------------


def _tiny_onnx(path: Path, metadata: dict[str, str] | None) -> Path:
    """A valid one-node ONNX graph with SegDINO's input and output shapes (32 x 32, one class)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 32, 32])
    node = helper.make_node("ReduceMean", ["image"], ["logits"], axes=[1], keepdims=1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _onnx_meta(**changes) -> dict[str, str]:
    config = segdino.build_model(**TINY).config.to_dict()
    config.update(changes)
    return {"format": "segdino-onnx", "segdino_config": json.dumps(config)}


@pytest.mark.parametrize("case", ["garbage", "truncated", "not ours", "negative classes", "mean as text"])
def test_hostile_onnx_files_are_refused_by_onnx_runtime_loading(tmp_path, case):
    pytest.importorskip("onnxruntime")
    from segdino.export import load_onnx_model

    path = tmp_path / "model.onnx"
    if case == "garbage":
        path.write_bytes(b"\x08\x07" + np.random.default_rng(0).bytes(200))
    elif case == "truncated":
        data = _tiny_onnx(path, _onnx_meta()).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not ours":
        _tiny_onnx(path, None)
    elif case == "negative classes":
        _tiny_onnx(path, _onnx_meta(num_classes=-1))
    else:
        _tiny_onnx(path, _onnx_meta(mean="abc"))
    with pytest.raises(CheckpointError, match=str(path)):
        load_onnx_model(path)
    assert load_onnx_model(_tiny_onnx(tmp_path / "fine.onnx", _onnx_meta())).num_classes == 1


# --- write failures -----------------------------------------------------------------------------


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX file-size limits")
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny, tmp_path):
    """A real write failure: the kernel refuses to grow files past a limit (EFBIG), as a full disk would."""
    model, _, _, _ = tiny
    path = segdino.save_model(model, tmp_path / "last.safetensors")
    before = path.read_bytes()
    changed = segdino.build_model(**TINY)
    with torch.no_grad():
        changed.head.conv.weight.add_(1.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(CheckpointError) as e:
            segdino.save_model(changed, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    msg = str(e.value)
    assert str(path) in msg and "the previous last.safetensors is intact" in msg, msg
    assert path.read_bytes() == before
    assert _temporaries(tmp_path) == []
    assert torch.equal(segdino.load_model(path).head.conv.weight, model.head.conv.weight)


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_injected_write_errors_keep_the_previous_file(tiny, tmp_path, monkeypatch, failing):
    model, _, _, _ = tiny
    path = segdino.save_model(model, tmp_path / "best.safetensors")
    before = path.read_bytes()
    import segdino.fileio as fileio

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "write":
        monkeypatch.setattr(ckpt, "write_safetensors", lambda name, tensors, metadata=None: (
            Path(name).write_bytes(b"partial"), no_space()))
    else:
        monkeypatch.setattr(fileio.os, failing, no_space)
    with pytest.raises(CheckpointError, match=r"No space left on device.*the previous best\.safetensors is intact"):
        segdino.save_model(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _temporaries(tmp_path) == []


def test_failed_first_save_says_nothing_was_written(tiny, tmp_path, monkeypatch):
    import segdino.fileio as fileio

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fileio.os, "replace", io_error)
    with pytest.raises(CheckpointError, match="nothing was written"):
        segdino.save_model(tiny[0], tmp_path / "new.safetensors")
    with pytest.raises(SegDINOError, match=r"log\.csv.*nothing was written"):
        atomic_write_text(tmp_path / "log.csv", "epoch\n1\n")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == []


def test_non_finite_weights_are_never_written(tiny, tmp_path):
    model, _, _, _ = tiny
    path = segdino.save_model(model, tmp_path / "last.safetensors")
    before = path.read_bytes()
    broken = segdino.build_model(**TINY)
    with torch.no_grad():
        broken.sad.inter[0].pointwise.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite.*sad\.inter\.0\.pointwise\.weight.*intact"):
        segdino.save_model(broken, path)
    assert path.read_bytes() == before


@contextlib.contextmanager
def _read_only_folder(previous: dict[str, bytes]):
    """A folder (holding ``previous`` files) that this process cannot write into, even as root.

    Root ignores permissions, so as root the test runs with the effective user id of ``nobody``
    (the real id stays 0, which lets it switch back); the folder sits in /tmp, which anyone can
    traverse.
    """
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="segdino-ro-", dir="/tmp"))
    for name, data in previous.items():
        (folder / name).write_bytes(data)
    folder.chmod(0o555)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(65534)
        yield folder
    finally:
        if as_root:
            os.seteuid(0)
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_read_only_folder_is_refused_clearly(tiny, tmp_path):
    model, path, _, _ = tiny
    before = path.read_bytes()
    with _read_only_folder({"last.safetensors": before}) as folder:
        assert not os.access(folder, os.W_OK, effective_ids=os.access in os.supports_effective_ids)
        with pytest.raises(CheckpointError, match="nothing was written"):
            segdino.save_model(tiny[0], folder / "m.safetensors")
        with pytest.raises(CheckpointError, match=r"cannot write .*last\.safetensors.*previous last\.safetensors is intact"):
            segdino.save_model(model, folder / "last.safetensors")
        with pytest.raises(SegDINOError, match=r"log\.csv.*nothing was written"):
            atomic_write_text(folder / "log.csv", "epoch\n1\n")
        assert sorted(os.listdir(folder)) == ["last.safetensors"]
        assert (folder / "last.safetensors").read_bytes() == before


def test_written_files_get_ordinary_permissions(tiny, tmp_path):
    """Files appear with the permissions of any new file (umask), not the owner-only mode of temporaries."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = segdino.save_model(tiny[0], tmp_path / "m.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# --- huge and odd images ----------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid greyscale PNG of width x height zeros: about 100 kB on disk for 10000 x 10000."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return write_png_bomb(tmp_path_factory.mktemp("bomb") / "scan.png", 10000, 10000)


def test_decompression_bomb_is_refused_from_its_header(bomb, tiny, monkeypatch):
    assert bomb.stat().st_size < 200_000
    # Nothing is decoded: the refusal comes from the header, before any pixel memory exists.
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels were decoded"))
    readers = [read_image, read_mask, image_info, lambda p: image_info(p, decode=True),
               lambda p: segdino.predict(tiny[0], [p])]
    for read in readers:
        with pytest.raises(DataError) as e:
            read(bomb)
        msg = str(e.value)
        assert str(bomb) in msg and "10000x10000" in msg and "SEGDINO_MAX_IMAGE_PIXELS" in msg, msg


def test_image_size_limit_is_adjustable(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("L", (300, 200), 10).save(path)
    assert read_image(path).shape == (200, 300, 3)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 50_000)
    with pytest.raises(DataError, match="300x200 = 60,000 pixels is larger than the limit of 50,000"):
        read_image(path)
    with pytest.raises(DataError, match="larger than the limit"):
        imageio.as_rgb_array(np.zeros((200, 300, 3), np.uint8))


def test_max_pixels_from_the_environment(monkeypatch):
    monkeypatch.setenv("SEGDINO_MAX_IMAGE_PIXELS", "1000000")
    assert imageio._max_pixels_from_env() == 1_000_000
    for bad in ("", "lots", "-5"):
        monkeypatch.setenv("SEGDINO_MAX_IMAGE_PIXELS", bad)
        assert imageio._max_pixels_from_env() == imageio.DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_high_bit_depth_png_uses_the_full_8_bit_range(tmp_path, bits):
    top = 2**bits - 1
    ramp = np.linspace(0, top, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    path = tmp_path / f"scan{bits}.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert rgb.max() == 255 and rgb.min() == 0
    # Mid-grey stays mid-grey: the scale is the bit depth, not 16 bits for every file.
    mid = rgb[..., 0].reshape(-1)[ramp.reshape(-1) >= top // 2][0]
    assert 126 <= mid <= 129, mid


def test_8_bit_values_in_a_16_bit_file_are_kept(tmp_path):
    values = np.arange(0, 200, dtype=np.uint16).reshape(10, 20)
    path = tmp_path / "eight_in_sixteen.png"
    Image.fromarray(values).save(path)
    assert np.array_equal(read_image(path)[..., 1], values.astype(np.uint8))


def test_cmyk_jpeg_alpha_and_tiny_images(tmp_path, tiny):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    red = read_image(tmp_path / "cmyk.jpg")
    assert red.shape == (8, 16, 3)
    assert red[..., 0].min() > 230 and red[..., 1:].max() < 25

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:4, :, 3] = 255  # top half opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    rgb = read_image(tmp_path / "alpha.png")
    assert rgb.shape == (8, 8, 3) and (rgb == (10, 200, 30)).all()  # alpha dropped, colours kept
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[..., :3] = 255
    mask[:4, :, 3] = 255
    Image.fromarray(mask, "RGBA").save(tmp_path / "alpha_mask.png")
    assert read_mask(tmp_path / "alpha_mask.png").tolist() == [[1] * 8] * 4 + [[0] * 8] * 4

    palette = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    palette.putpalette([255, 255, 255, 0, 0, 0, 200, 30, 40] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    assert read_image(tmp_path / "palette.png").tolist() == [[[255, 255, 255], [0, 0, 0]],
                                                             [[0, 0, 0], [200, 30, 40]]]  # colours, not indices

    Image.new("L", (1, 1), 200).save(tmp_path / "one.png")
    Image.new("L", (1, 1), 255).save(tmp_path / "one_mask.png")
    assert read_image(tmp_path / "one.png").shape == (1, 1, 3)
    assert read_mask(tmp_path / "one_mask.png").tolist() == [[1]]
    masks = segdino.predict(tiny[0], [tmp_path / "one.png", np.zeros((1, 40, 3), np.uint8),
                                      tmp_path / "alpha.png", tmp_path / "cmyk.jpg"])
    assert [m.shape for m in masks] == [(1, 1), (1, 40), (8, 8), (8, 16)]
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)


def test_other_formats_under_an_image_name_are_not_decoded(tmp_path):
    """Pillow could open EPS through Ghostscript, or dozens of exotic formats; we decode only ours."""
    eps = tmp_path / "scan.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    ppm = tmp_path / "other.png"
    Image.new("RGB", (4, 4)).save(ppm, format="PPM")
    for path in (eps, ppm):
        for read in (read_image, read_mask, image_info):
            with pytest.raises(DataError, match=r"not a PNG, JPEG, GIF, BMP, TIFF or WebP file"):
                read(path)


def test_float_and_odd_arrays(tmp_path):
    nan = np.full((4, 4), np.nan, np.float32)
    nan[0, 0] = 1.0
    out = imageio.as_rgb_array(nan)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255 and out[1, 1, 0] == 0
    signed = np.array([[-1000, 0], [500, 1000]], np.int16)
    assert imageio.as_rgb_array(signed)[..., 0].tolist() == [[0, 128], [191, 255]]
    with pytest.raises(DataError, match="numeric"):
        imageio.as_rgb_array(np.array([["a", "b"]]))
    with pytest.raises(DataError, match="empty"):
        imageio.as_rgb_array(np.zeros((0, 5, 3), np.uint8))


# --- volumes -----------------------------------------------------------------------------------


def test_one_slice_volume_reads_and_predicts(tmp_path, tiny):
    pytest.importorskip("nibabel")
    from segdino.volumes.intensity import ct_window, volume_settings
    from segdino.volumes.io import read_volume, write_nifti
    from segdino.volumes.predict import predict_volume

    model = segdino.build_model(**TINY).eval()
    model.config.volume = volume_settings(ct_window("abdomen"), "axial", 1)
    for shape in [(12, 10, 1), (1, 1, 1)]:
        path = write_nifti(tmp_path / "one.nii.gz", np.full(shape, 40, np.int16), np.diag([0.8, 0.8, 3.0, 1.0]))
        volume = read_volume(path)
        assert volume.shape == shape
        labels = predict_volume(model, volume)
        assert labels.shape == shape and labels.dtype == np.uint8


def _nifti_claiming(path: Path, shape: tuple[int, ...], gz: bool) -> Path:
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * 4 + b"\x01\x00" * 64
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_volume_header_claiming_gigabytes_is_refused_before_allocating(tmp_path, gz):
    pytest.importorskip("nibabel")
    from segdino.volumes.io import read_volume

    path = _nifti_claiming(tmp_path / ("big.nii.gz" if gz else "big.nii"), (4000, 4000, 500), gz)
    assert path.stat().st_size < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"claims 16,000,000,000 bytes"):
        read_volume(path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100_000  # the 16 GB were never asked for


def test_volume_of_rgb_voxels_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    from segdino.volumes.io import read_volume

    rgb = np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii"))
    with pytest.raises(DataError, match="voxel type .* is not supported"):
        read_volume(tmp_path / "rgb.nii")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_volume_of_complex_voxels_is_refused(tmp_path, dtype):
    nib = pytest.importorskip("nibabel")
    from segdino.volumes.io import read_volume

    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), dtype), np.eye(4)), str(path))
    with pytest.raises(DataError, match=rf"{path}: voxel type complex.* is not supported"):
        read_volume(path)


# --- training: kills, NaNs, bad data ----------------------------------------------------------------

TRAIN_ARGS = ["--backbone", "vitt16", "--image-size", "32", "--decoder-dim", "16", "--epochs", "4",
              "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--seed", "0", "--save-every", "0",
              "--quiet"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from segdino.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("train") / "data", 12, 4, 0, size=(32, 32), seed=0)


def _train_process(data: Path, out: Path, *extra: str) -> "subprocess.Popen":
    import subprocess
    import sys

    # Unbuffered: the "epoch N/E" lines of a process killed later must reach the pipe.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "segdino", "train", "--data", str(data), "--out", str(out),
                             *TRAIN_ARGS, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _writing(run: Path) -> list[Path]:
    from segdino.fileio import stale_temporaries

    return stale_temporaries(run) + stale_temporaries(run / "resume")


def _kill_when(proc, run: Path, how: str, delay: float) -> str:
    """SIGKILL ``proc`` mid-write (as soon as a temporary file appears) or after ``delay`` seconds.

    Returns ``killed-writing``, ``killed`` or ``finished`` (it ended before the moment came).
    """
    import time

    start = time.monotonic()
    before = set(_writing(run))
    while proc.poll() is None:
        if how == "write":
            if set(_writing(run)) - before:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed-writing"
        elif time.monotonic() - start >= delay:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed"
        time.sleep(0.001 if how == "write" else 0.01)
        if time.monotonic() - start > 120:
            proc.kill()
            raise AssertionError("training did not finish in 120 s")
    return "finished"


def _log_columns(run: Path, *names: str) -> list[tuple[str, ...]]:
    import csv

    with open(run / "log.csv") as f:
        return [tuple(row[n] for n in names) for row in csv.DictReader(f)]


def _log_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _saved_epoch(run: Path) -> int:
    with safe_open(str(run / "resume" / "state.safetensors"), framework="pt") as f:
        return int(json.loads(f.metadata()["segdino_resume"])["epoch"])


def _epochs_run(stdout: bytes) -> list[int]:
    """The epochs a ``segdino train`` process finished, from its ``epoch N/E`` lines."""
    import re

    return [int(n) for n in re.findall(r"^epoch (\d+)/\d+ ", stdout.decode(), flags=re.M)]


def _assert_same_file(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{b}: {k} differs from the uninterrupted run"
    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        assert fa.metadata() == fb.metadata()


def test_sigkill_at_random_moments_then_resume_ends_bit_identical(train_data, tmp_path):
    """Real processes, real SIGKILLs (some in the middle of writing a checkpoint), then --resume."""
    import random
    import time

    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = _train_process(train_data, full)  # runs beside the interrupted one

    rng = random.Random(16)
    proc = _train_process(train_data, cut)
    # Resuming needs one finished epoch (see the test below); from then on, any moment is fair.
    while proc.poll() is None and not (cut / "resume" / "state.safetensors").exists():
        time.sleep(0.005)
    outcomes = []
    resumes = []  # (saved epoch, log rows up to it, the process resumed from it)
    plan = ["write", "random", "write", "random", "write"]
    for attempt, how in enumerate(plan):
        outcome = _kill_when(proc, cut, how, rng.uniform(0.0, 1.5 if attempt == 0 else 6.0))
        outcomes.append(outcome)
        if outcome == "finished":
            break
        # After every kill, whatever the moment, the finished files are whole and load.
        for name in ("last.safetensors", "best.safetensors"):
            if (cut / name).exists():
                segdino.load_model(cut / name)
        assert (cut / "resume" / "state.safetensors").exists()
        saved = _saved_epoch(cut)
        proc = _train_process(train_data, cut, "--resume")
        resumes.append((saved, _log_rows(cut)[:saved], proc))
    else:
        outcome = _kill_when(proc, cut, "never", float("inf"))
    last_out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    # Each resumed process continued from the saved epoch (a restart from epoch 1 would reach the
    # same weights, training being deterministic), and the rows of the epochs before it, wall time
    # included, are the ones first written.
    final_rows = _log_rows(cut)
    ran_after_resumes = []
    for saved, rows, resumed in resumes:
        ran = _epochs_run(last_out if resumed is proc else resumed.stdout.read())
        assert ran == list(range(saved + 1, saved + 1 + len(ran))), (saved, ran)
        assert final_rows[:saved] == rows
        ran_after_resumes += ran
    assert ran_after_resumes and ran_after_resumes[-1] == 4 and 1 not in ran_after_resumes, ran_after_resumes
    assert outcomes.count("killed-writing") >= 1, outcomes  # at least one kill landed mid-write
    assert len([o for o in outcomes if o.startswith("killed")]) >= 2, outcomes

    _, err = reference.communicate(timeout=180)
    assert reference.returncode == 0, err.decode()[-2000:]
    _assert_same_file(full / "last.safetensors", cut / "last.safetensors")
    _assert_same_file(full / "best.safetensors", cut / "best.safetensors")
    columns = ("epoch", "step", "train_loss", "val_dice")
    assert _log_columns(full, *columns) == _log_columns(cut, *columns)
    from segdino.fileio import stale_temporaries

    assert stale_temporaries(cut, recursive=True) == []  # every kill's leftovers were ours, and removed


def test_run_killed_before_its_first_epoch_ends_can_be_resumed(train_data, tmp_path):
    import time

    cut = tmp_path / "cut"
    proc = _train_process(train_data, cut)
    while proc.poll() is None and not (cut / "config.yaml").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "resume" / "state.safetensors").exists()
    proc = _train_process(train_data, cut, "--resume")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()[-1000:]
    # It trained the whole run, from the first epoch, into a complete run folder.
    assert "from the beginning" in err.decode()
    assert _epochs_run(out) == [1, 2, 3, 4]
    assert [r["epoch"] for r in _log_rows(cut)] == ["1", "2", "3", "4"]
    assert _epoch_of(cut / "last.safetensors") == "4" and _saved_epoch(cut) == 4


def test_stale_temporaries_of_a_killed_write_are_found_and_removed(tmp_path):
    from segdino.fileio import remove_stale_temporaries, stale_temporaries

    (tmp_path / "last.safetensors").write_bytes(b"whole")
    (tmp_path / ".last.safetensors.k2j4x9_a.tmp").write_bytes(b"half")
    (tmp_path / ".hidden").write_bytes(b"not ours")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    assert [p.name for p in stale_temporaries(tmp_path)] == [".last.safetensors.k2j4x9_a.tmp"]
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.safetensors.k2j4x9_a.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "last.safetensors", "notes.tmp"]


def _poisoned_loss(monkeypatch, at_call: int, poison_weights: bool = False):
    """Make the ``at_call``-th training loss NaN, or (``poison_weights``) a weight NaN behind a finite loss."""
    real = training.trainer.segmentation_loss
    calls = {"n": 0}
    model_of = {}

    def loss(logits, masks, kind, **options):
        calls["n"] += 1
        value = real(logits, masks, kind, **options)
        if calls["n"] == at_call:
            if poison_weights:
                with torch.no_grad():
                    model_of["model"].head.conv.bias.fill_(float("nan"))
                return value
            return value * float("nan")
        return value

    monkeypatch.setattr(training.trainer, "segmentation_loss", loss)
    real_init = training.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        model_of["model"] = self.model

    monkeypatch.setattr(training.Trainer, "__init__", init)
    return calls


def _all_finite(run: Path) -> None:
    files = sorted(run.rglob("*.safetensors"))
    assert files
    for f in files:
        for k, t in load_file(str(f)).items():
            assert not t.is_floating_point() or bool(torch.isfinite(t).all()), f"{f}: {k}"


def _epoch_of(path: Path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["epoch"]


def test_nan_loss_stops_naming_step_and_cases_and_writes_nothing_non_finite(train_data, tmp_path, monkeypatch,
                                                                             capsys):
    _poisoned_loss(monkeypatch, at_call=5)  # 3 steps an epoch: epoch 2, its second step
    run = tmp_path / "run"
    code = cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS])
    err = capsys.readouterr().err
    assert code == 2, err
    line = [ln for ln in err.splitlines() if "error" in ln][-1]
    assert "non-finite loss at step 5 (epoch 2)" in line, line
    assert line.count("synth_") == 4, line  # the four cases of that batch
    _all_finite(run)
    assert _epoch_of(run / "last.safetensors") == "1"
    segdino.load_model(run / "last.safetensors")


def test_nan_loss_skipped_on_request(train_data, tmp_path, monkeypatch, caplog):
    calls = _poisoned_loss(monkeypatch, at_call=5)
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        code = cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS, "--on-nan", "skip"])
    assert code == 0
    assert calls["n"] == 12
    assert any("non-finite loss at step 5 (epoch 2)" in r.getMessage() and "skipped" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert [e for e, in _log_columns(run, "epoch")] == ["1", "2", "3", "4"]
    _all_finite(run)


def test_non_finite_weights_behind_a_finite_loss_are_never_written(train_data, tmp_path, monkeypatch, capsys):
    _poisoned_loss(monkeypatch, at_call=6, poison_weights=True)  # the last step of epoch 2
    run = tmp_path / "run"
    code = cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS, "--on-nan", "skip"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite weights after epoch 2" in err, err
    _all_finite(run)
    assert _epoch_of(run / "last.safetensors") == "1"


@pytest.fixture
def bad_data(train_data, tmp_path):
    """The training data with one truncated training image and one garbage mask."""
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(train_data, root)
    train = json.loads((root / "splits.json").read_text())["train"]
    image = root / "images" / f"{train[1]}.png"
    image.write_bytes(image.read_bytes()[:60])
    mask = root / "masks" / f"{train[4]}.png"
    mask.write_bytes(b"this is not a mask")
    return root, image, mask


def test_corrupt_data_stops_training_by_default_naming_the_file(bad_data, tmp_path, capsys):
    root, image, mask = bad_data
    code = cli_main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TRAIN_ARGS])
    err = capsys.readouterr().err
    assert code == 2
    assert str(image) in err or str(mask) in err, err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def _skip_run(root: Path, run: Path, *extra: str) -> int:
    return cli_main(["train", "--data", str(root), "--out", str(run), *TRAIN_ARGS, "--epochs", "2",
                     "--on-bad-data", "skip", *extra])


def test_corrupt_data_skipped_on_request_and_listed(bad_data, tmp_path):
    root, image, mask = bad_data
    config = tmp_path / "stream.yaml"
    config.write_text("cache_images: false\n")  # samples read as training draws them
    run = tmp_path / "run"
    assert _skip_run(root, run, "--config", str(config)) == 0
    listed = (run / "skipped.txt").read_text().splitlines()
    assert len(listed) == 2
    assert any(str(image) in ln for ln in listed) and any(str(mask) in ln for ln in listed), listed
    assert [e for e, in _log_columns(run, "epoch")] == ["1", "2"]
    segdino.load_model(run / "last.safetensors")


def test_corrupt_data_skipped_with_the_default_cache(bad_data, tmp_path):
    root, image, mask = bad_data
    run = tmp_path / "run"
    assert _skip_run(root, run) == 0
    listed = (run / "skipped.txt").read_text()
    assert str(image) in listed and str(mask) in listed


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX file-size limits")
def test_disk_full_during_training_stops_with_one_clear_line(train_data, tmp_path, capsys):
    """Model files (22 MB) still fit, the training state (66 MB) does not: a disk filling up mid-run."""
    run = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40 << 20, hard))
    try:
        code = cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS, "--epochs", "1"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "state.safetensors" in err and "nothing was written" in err, err
    segdino.load_model(run / "last.safetensors")


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX file-size limits")
def test_failed_training_state_write_keeps_the_previous_state(train_data, tmp_path, capsys):
    """Epoch 1 saved; epoch 2's state (66 MB) hits a 40 MB file-size limit: the epoch-1 state survives
    whole, says so, and the run resumes from it."""
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS, "--epochs", "1"]) == 0
    state = run / "resume" / "state.safetensors"
    before = state.read_bytes()
    capsys.readouterr()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40 << 20, hard))
    try:
        code = cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS, "--epochs", "2",
                         "--resume"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(state) in err[0] and "the previous state.safetensors is intact" in err[0], err
    assert state.read_bytes() == before and _saved_epoch(run) == 1
    assert _writing(run) == []
    assert cli_main(["train", "--data", str(train_data), "--out", str(run), *TRAIN_ARGS, "--epochs", "2",
                     "--resume"]) == 0
    assert _saved_epoch(run) == 2 and [e for e, in _log_columns(run, "epoch")] == ["1", "2"]


def test_reports_and_predictions_appear_only_by_rename(tiny, dataset, tmp_path, monkeypatch):
    """Every file that evaluate and predict leave was moved into place whole (os.replace of a
    finished temporary), none written where it stands, so a crash cannot leave half of one."""
    _, model_file, _, _ = tiny
    placed, real_replace = set(), os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        placed.add(Path(dst).resolve())

    monkeypatch.setattr(os, "replace", replace)
    images = dataset / "images"
    assert cli_main(["evaluate", "--model", str(model_file), "--data", str(dataset), "--out", str(tmp_path / "eval"),
                     "--device", "cpu"]) == 0
    assert cli_main(["predict", "--model", str(model_file), str(images), "--out", str(tmp_path / "pred"),
                     "--probabilities", "--overlays", "--device", "cpu"]) == 0
    monkeypatch.undo()
    for folder, expected in ((tmp_path / "eval", {"summary.json", "cases.csv", "report.md"}),
                             (tmp_path / "pred", {"masks", "overlays", "probabilities"})):
        # The folder's lock and its append-only manifest of our files are bookkeeping, not outputs.
        files = [p for p in folder.rglob("*") if p.is_file() and p.name not in (".segdino-lock", ".segdino-files")]
        assert expected <= {p.relative_to(folder).parts[0] for p in files}, files
        written_in_place = [p for p in files if p.resolve() not in placed]
        assert written_in_place == [], written_in_place
        assert not [p for p in files if p.name.endswith(".tmp")]
