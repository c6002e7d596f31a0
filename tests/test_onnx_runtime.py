"""Exported files run by ONNX Runtime agree with PyTorch, and files that are not ours, or contradict
their config, are refused naming the file."""

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from segdino.errors import CheckpointError, DataError  # noqa: E402
from segdino.onnx_runtime import load_onnx_model, rel_l2  # noqa: E402
from tests.test_export import exported, model  # noqa: E402,F401  (fixtures)


def test_onnx_runtime_agrees_with_torch_at_several_batches(model, exported):
    path, _ = exported
    om = load_onnx_model(path, threads=1)
    g = torch.Generator().manual_seed(5)
    for b in (1, 2, 5):
        x = torch.randn(b, 3, 32, 32, generator=g)
        with torch.no_grad():
            ref = model(x)
        out = om(x)
        assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (b, 2, 32, 32)
        assert rel_l2(out, ref) <= 1e-4
    # numpy in, torch out; inputs from another dtype are converted
    out = om(x.double().numpy())
    assert rel_l2(out, ref) <= 1e-4


def test_wrong_input_size_is_a_data_error(exported):
    om = load_onnx_model(exported[0], threads=1)
    with pytest.raises(DataError, match="exported for 32x32"):
        om(torch.zeros(1, 3, 64, 64))
    with pytest.raises(DataError, match=r"\(batch, 3"):
        om(torch.zeros(1, 1, 32, 32))


def test_bad_and_unrelated_onnx_files_are_refused(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(CheckpointError, match="missing.onnx"):
        load_onnx_model(missing)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.onnx"):
        load_onnx_model(garbage)
    # A valid ONNX model that is not ours: x -> relu(x).
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    with pytest.raises(CheckpointError, match=r"other\.onnx.*not a SegDINO export"):
        load_onnx_model(other)


def test_graph_that_contradicts_its_config_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported[0]))
    for p in proto.metadata_props:
        if p.key == "segdino_config":
            cfg = json.loads(p.value)
            cfg["num_classes"] = 3
            p.value = json.dumps(cfg)
    forged = tmp_path / "forged.onnx"
    onnx.save(proto, str(forged))
    with pytest.raises(CheckpointError, match="forged.onnx"):
        load_onnx_model(forged)
