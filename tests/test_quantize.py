"""int8 quantisation keeps the export's metadata, measures its error against fp32, and quantises once."""

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from segdino.errors import CheckpointError  # noqa: E402
from segdino.onnx_runtime import load_onnx_model  # noqa: E402
from segdino.quantize import quantize_onnx  # noqa: E402
from tests.test_export import exported, model  # noqa: E402,F401  (fixtures)


def test_int8_quantisation_keeps_metadata(exported, tmp_path):
    path, _ = exported
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(2)]
    result = quantize_onnx(path, tmp_path / "int8.onnx", calibration=calib)
    om = load_onnx_model(tmp_path / "int8.onnx", threads=1)
    assert om.precision == "int8" and om.config == load_onnx_model(path, threads=1).config
    assert json.loads(om.metadata["quantization"])["calibration_samples"] == 2
    nodes = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "QuantizeLinear" in nodes and "DequantizeLinear" in nodes
    # int8 is close to fp32, not equal: the error is measured and reported.
    assert 0 < result["rel_l2_vs_fp32"] < 0.5
    with pytest.raises(CheckpointError, match="already int8"):
        quantize_onnx(tmp_path / "int8.onnx", tmp_path / "again.onnx")
