"""`segdino predict`: sizes, outputs, names, unreadable and missing inputs."""

import numpy as np
import pytest
from PIL import Image

import segdino
from segdino.cli import main
from segdino.predictor import predict
from tests.prediction_fixtures import model, model_file, multi, noise  # noqa: F401 (fixtures)


def test_cli_sizes_outputs_and_unreadable_file(tmp_path, model, model_file, capsys):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    sizes = {"a/x.png": (37, 53), "b/x.png": (64, 31), "odd.jpg": (17, 90)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(noise(h, w, seed=i)).save(src / name)
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_file), str(src), "--out", str(out), "--probabilities",
                 "--overlays", "--batch-size", "2", "--device", "cpu", "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 1  # one input failed
    assert "broken.png" in captured.err and "notes.txt" not in captured.err
    assert "3 mask(s) written" in captured.out
    for name, (h, w) in sizes.items():
        stem = name.rsplit(".", 1)[0]
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        prob = np.asarray(Image.open(out / "probabilities" / f"{stem}.png"))
        assert prob.shape == (h, w) and prob.dtype == np.uint8
        assert np.array_equal(mask == 255, prob > 127) or np.mean((mask == 255) != (prob > 127)) < 0.01
        assert np.asarray(Image.open(out / "overlays" / f"{stem}.png")).shape == (h, w, 3)
    # The written mask is the Python API's prediction.
    assert np.array_equal(np.asarray(Image.open(out / "masks" / "odd.png")) > 0,
                          predict(model, src / "odd.jpg")[0] > 0)

    # --keep-size, and two files of one stem given directly: distinct names, own sizes.
    out2 = tmp_path / "out2"
    code = main(["predict", "--model", str(model_file), str(src / "a" / "x.png"), str(src / "b" / "x.png"),
                 "--out", str(out2), "--keep-size", "--probability-format", "npy", "--probabilities",
                 "--device", "cpu", "--workers", "0"])
    assert code == 0
    assert np.asarray(Image.open(out2 / "masks" / "a" / "x.png")).shape == (37, 53)
    assert np.asarray(Image.open(out2 / "masks" / "b" / "x.png")).shape == (64, 31)
    p = np.load(out2 / "probabilities" / "b" / "x.npy")
    assert p.shape == (64, 31) and p.dtype == np.float32
    kept = predict(model, src / "b" / "x.png", keep_size=True, probabilities=True)[0]
    assert np.allclose(p, kept.probabilities[0], atol=1e-6)


def test_multiclass_outputs_and_missing_input(tmp_path, multi, capsys):
    path = tmp_path / "multi.safetensors"
    segdino.save_model(multi, path)
    Image.fromarray(noise(25, 41)).save(tmp_path / "img.png")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(path), str(tmp_path / "img.png"), str(tmp_path / "missing.png"),
                 "--out", str(out), "--probabilities", "--device", "cpu", "--workers", "0"])
    assert code == 1 and "missing.png: no such file" in capsys.readouterr().err
    mask = np.asarray(Image.open(out / "masks" / "img.png"))
    assert mask.shape == (25, 41) and mask.max() <= 2
    probs = [np.asarray(Image.open(out / "probabilities" / f"img_class{k}.png")) for k in (1, 2)]
    assert all(p.shape == (25, 41) for p in probs)
    assert not (out / "probabilities" / "img_class0.png").exists()
