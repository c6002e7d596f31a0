"""ONNX export: the check against PyTorch, metadata round trip, dynamic and static batch, refusals, CLI.

Running exported files is tested in test_onnx_runtime.py, int8 files in test_quantize.py."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import segdino  # noqa: E402
from segdino.cli import main as cli_main  # noqa: E402
from segdino.errors import ConfigError  # noqa: E402
from segdino.export import (  # noqa: E402
    ExportError,
    export_onnx,
    fold_tpa,
    load_onnx_model,
    physical_cores,
    read_onnx_metadata,
    rel_l2,
)
from tests.conftest import randomize_  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Taps on the first four blocks: the traced graph stops there, which keeps every export quick.
    m = segdino.build_model("vitt16", decoder_dim=16, image_size=(64, 64), num_classes=2, taps=(0, 1, 2, 3))
    return randomize_(m).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = export_onnx(model, path, image_size=32)
    return path, result


def test_export_reports_check_and_writes_one_file(exported):
    path, result = exported
    assert path.is_file() and result["path"] == str(path)
    assert result["rel_l2"] is not None and result["rel_l2"] <= 1e-4
    assert result["check_batches"] == [1, 3]
    assert result["image_size"] == [32, 32] and result["opset"] == 17 and result["dynamic_batch"] is True
    assert result["bytes"] == path.stat().st_size
    # Atomic write: nothing but the file itself beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


def test_fold_tpa_keeps_function_and_parameters(model):
    folded = fold_tpa(model)
    assert type(folded.tpa).__name__ == "FoldedTokenPyramidAdaptation"
    assert type(model.tpa).__name__ == "TokenPyramidAdaptation"  # the original is untouched
    assert folded.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_l2(folded(x), model(x)) < 1e-5


def test_metadata_round_trip(model, exported):
    path, result = exported
    meta = read_onnx_metadata(path)
    assert meta["format"] == "segdino-onnx" and meta["precision"] == "fp32" and meta["tpa"] == "folded"
    cfg = segdino.ModelConfig.from_json(meta["segdino_config"])
    expected = model.config.to_dict()
    expected["image_size"] = [32, 32]
    assert cfg.to_dict() == expected
    pre = json.loads(meta["preprocessing"])
    assert pre["image_size"] == [32, 32]
    assert pre["mean"] == pytest.approx(list(model.config.mean)) and pre["std"] == pytest.approx(list(model.config.std))
    assert pre["activation"] == "softmax" and pre["num_classes"] == 2
    assert json.loads(meta["export_check"])["rel_l2"] == pytest.approx(result["rel_l2"])

    om = load_onnx_model(path)
    assert om.config.to_dict() == expected
    assert om.num_classes == 2 and om.device == torch.device("cpu") and om.eval() is om
    assert om.image_size == (32, 32) and om.batch_size is None
    assert om.threads == physical_cores()


def test_static_batch_export_is_chunked(model, tmp_path):
    path = tmp_path / "static.onnx"
    result = export_onnx(model, path, image_size=32, dynamic_batch=False, fold=False)
    assert result["check_batches"] == [1] and result["dynamic_batch"] is False and result["tpa_folded"] is False
    assert read_onnx_metadata(path)["tpa"] == "direct"
    assert "Resize" in {n.op_type for n in onnx.load(str(path)).graph.node}
    om = load_onnx_model(path, threads=1)
    assert om.batch_size == 1
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert rel_l2(om(x), model(x)) <= 1e-4


def test_failed_check_leaves_no_file_and_keeps_the_old_one(model, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_onnx(model, path, image_size=32, tolerance=1e-12)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_refuses_bad_options(model, tmp_path):
    with pytest.raises(ConfigError, match="multiples of 16"):
        export_onnx(model, tmp_path / "a.onnx", image_size=40)
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "a.onnx", opset=9)
    with pytest.raises(ConfigError, match="SegDINO model"):
        export_onnx(torch.nn.Conv2d(3, 1, 1), tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())


def test_exporter_failure_is_an_export_error(model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match="unsupported operator"):
        export_onnx(model, tmp_path / "a.onnx", image_size=32)
    assert not list(tmp_path.iterdir())


def test_export_cli(model, tmp_path, capsys):
    ckpt = tmp_path / "model.safetensors"
    segdino.save_model(model, ckpt)
    out = tmp_path / "cli.onnx"
    summary = tmp_path / "export.json"
    code = cli_main(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(out), "--image-size", "32",
                     "--json", str(summary)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "relative L2 error" in printed
    result = json.loads(summary.read_text())
    assert f"{result['rel_l2']:.2e}" in printed and result["rel_l2"] <= 1e-4
    assert load_onnx_model(out, threads=1).config.image_size == (32, 32)

    code = cli_main(["export", "--model", str(ckpt), "--out", str(tmp_path / "bad.onnx"), "--image-size", "33"])
    assert code == 2 and "multiples of 16" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()
    code = cli_main(["export", "--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x.onnx")])
    assert code == 2 and "nope.safetensors" in capsys.readouterr().err


def test_export_cli_int8_calibrated_on_training_images(model, tmp_path, capsys):
    from segdino.data.synthetic import write_dataset

    ckpt = tmp_path / "model.safetensors"
    segdino.save_model(model, ckpt)
    data = write_dataset(tmp_path / "data", 3, 0, 1, size=(40, 48), seed=2)
    out = tmp_path / "int8.onnx"
    code = cli_main(["export", "--model", str(ckpt), "--out", str(out), "--image-size", "32", "--int8",
                     "--calibration-data", str(data), "--json", str(tmp_path / "q.json")])
    printed = capsys.readouterr().out
    assert code == 0 and "int8" in printed
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["precision"] == "int8" and q["int8"]["calibration_samples"] == 3 and q["bytes"] == out.stat().st_size
    om = load_onnx_model(out, threads=1)
    assert om.precision == "int8" and om.image_size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "int8.onnx", "model.safetensors", "q.json"]
    assert cli_main(["export", "--model", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "--calibration-data" in capsys.readouterr().err


def test_large_models_keep_weights_beside_the_graph(model, tmp_path, monkeypatch):
    import segdino.export as export

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)  # treat the tiny model as one over 2 GB
    path = tmp_path / "big.onnx"
    result = export_onnx(model, path, image_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert result["bytes"] == path.stat().st_size + (tmp_path / "big.onnx.data").stat().st_size
    assert path.stat().st_size < (tmp_path / "big.onnx.data").stat().st_size
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_l2(load_onnx_model(path, threads=1)(x), model(x)) <= 1e-4
