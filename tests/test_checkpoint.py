"""Our model file: a save and load round trip is bit-identical and leaves only the file."""

import torch

import segdino
from tests.conftest import randomize_


def test_save_load_round_trip_is_bit_identical(tmp_path, tiny_model):
    model = segdino.build_model("vitt16", num_classes=3, decoder_dim=32, image_size=(64, 48), norm="batch",
                                class_names=("bg", "a", "b"))
    randomize_(model, seed=4).eval()
    path = segdino.save_model(model, tmp_path / "m.safetensors")
    loaded = segdino.load_model(path)
    assert loaded.config == model.config
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # the file alone rebuilds the model: no temporary files left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
