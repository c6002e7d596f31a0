"""segdino.predict and `segdino predict`: sizes, batching, outputs, names, unreadable inputs."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import segdino
from segdino.cli import main
from segdino.cli.predict import ImageInput, output_names
from segdino.errors import ConfigError
from segdino.fast import FastModel
from segdino.inference import load_inference_model
from segdino.predictor import predict
from tests.conftest import tiny


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def multi():
    return tiny(num_classes=3, seed=1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    segdino.save_model(model, path)
    return path


def noise(h, w, c=3, seed=0):
    shape = (h, w, c) if c else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_predict_sizes_batching_and_probabilities(model, multi):
    images = [noise(37, 53), noise(20, 70, c=0, seed=1), Image.fromarray(noise(48, 33, c=4, seed=2), "RGBA"),
              noise(37, 53, seed=3)]
    for keep in (False, True):
        batched = predict(model, images, batch_size=3, keep_size=keep, probabilities=True)
        assert [p.mask.shape for p in batched] == [(37, 53), (20, 70), (48, 33), (37, 53)]
        for p in batched:
            assert p.mask.dtype == np.uint8 and set(np.unique(p.mask)) <= {0, 1}
            assert p.probabilities.shape == (1, *p.mask.shape) and p.probabilities.dtype == np.float32
            # The mask is the probability thresholded at 0.5.
            assert np.array_equal(p.mask, (p.probabilities[0] > 0.5).astype(np.uint8))
        # Batches (and, under keep_size, the grouping by padded size) change nothing.
        for im, p in zip(images, batched):
            alone = predict(model, im, keep_size=keep, probabilities=True)[0]
            assert np.abs(alone.probabilities - p.probabilities).max() < 1e-5
    # keep_size runs at another resolution than the default: the results differ.
    a = predict(model, images[0], probabilities=True)[0].probabilities
    b = predict(model, images[0], keep_size=True, probabilities=True)[0].probabilities
    assert np.abs(a - b).max() > 1e-3

    (p,) = predict(multi, [noise(21, 19)], probabilities=True)
    assert p.probabilities.shape == (3, 21, 19)
    assert np.allclose(p.probabilities.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(p.mask, p.probabilities.argmax(0))


def test_load_inference_model_and_devices(tmp_path, model, model_file, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(model_file.read_bytes())
    ref = model
    loaded = load_inference_model(run, device="cpu")
    state, expected = loaded.state_dict(), ref.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    # A model file path works directly with predict.
    assert np.array_equal(predict(str(model_file), noise(30, 30), device="cpu")[0], predict(ref, noise(30, 30))[0])

    # ONNX without the export module: a clear configuration error.
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not used")
    monkeypatch.setitem(sys.modules, "segdino.export", None)
    with pytest.raises(ConfigError, match="ONNX support is unavailable"):
        load_inference_model(onnx, device="cpu")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_inference_model(onnx, device="cuda")

    # A compiled fast model always sees full batches (no recompilation for the last one); the
    # padding changes no result. Compilation itself needs CUDA, so a recording stand-in takes its place.
    fast = FastModel(model, torch.device("cpu"), torch.float32, channels_last=True, compile_mode=None)
    seen = []
    fast.compiled = lambda x: (seen.append(x.shape[0]), fast.inner(x))[1]
    images = [noise(37, 53, seed=i) for i in range(4)]
    got = predict(fast, images, batch_size=3, probabilities=True, device="auto")
    want = predict(model, images, batch_size=3, probabilities=True)
    assert seen == [3, 3]
    assert max(np.abs(g.probabilities - w.probabilities).max() for g, w in zip(got, want)) < 1e-5

    # A model prepared for one device (fast or ONNX) is not silently moved.
    class Prepared:
        config = ref.config
        device = torch.device("meta")

        def __call__(self, x):
            raise AssertionError("must not run")

    with pytest.raises(ConfigError, match="prepared for meta"):
        predict(Prepared(), noise(16, 16), device="cpu")


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


def test_output_names_never_collide(tmp_path):
    a, b = tmp_path / "one" / "x.png", tmp_path / "two" / "x.png"
    c, d = tmp_path / "one" / "y.png", tmp_path / "one" / "y.jpg"
    assert output_names([ImageInput(a, None), ImageInput(c, None)]) == ["x", "y"]
    assert output_names([ImageInput(a, None), ImageInput(b, None)]) == ["one/x", "two/x"]
    assert output_names([ImageInput(c, None), ImageInput(d, None)]) == ["y_png", "y_jpg"]
    assert output_names([ImageInput(a, tmp_path), ImageInput(b, tmp_path)]) == ["one/x", "two/x"]
    up, low = tmp_path / "A.png", tmp_path / "a.png"
    names = output_names([ImageInput(up, None), ImageInput(low, None)])
    assert len({n.lower() for n in names}) == 2


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
