"""segdino.predictor: the Predictor gives the logits of the model run by hand on every path it serves;
segdino.predictor.predict: sizes, batching, probabilities, devices."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segdino

from segdino.errors import CheckpointError, ConfigError
from segdino.fast import FastModel
from segdino.inference import load_inference_model, normalize, to_tensor
from segdino.predictor import Pad, Predictor, Resize, Tiles, is_compiled, predict
from segdino.sliding_window import AveragedModel, sliding_window
from tests.conftest import tiny
from tests.prediction_fixtures import model, model_file, multi, noise  # noqa: F401 (fixtures)


def by_hand(model, image, keep_size=False):
    """One image's (K, H, W) logits, computed step by step without the package's prediction code."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    if keep_size:
        ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
        x = F.pad(normalize(x, model.config), (0, pw - w, 0, ph - h))
        with torch.no_grad():
            return model(x[None]).float()[0, :, :h, :w]
    x = F.interpolate(x[None], size=model.config.image_size, mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        logits = model(normalize(x, model.config)).float()
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]


class Recording(torch.nn.Module):
    """A compiled-looking model: records the batch sizes it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.seen = inner, inner.config, []
        self.compiled = object()

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.inner(x)


def test_native_size_logits_labels_and_probabilities_match_the_model_by_hand(model, multi):
    images = [noise(37, 53), noise(20, 70, seed=1), noise(24, 17, seed=4)]
    for keep in (False, True):
        predictor = Predictor(model, batch_size=2, keep_size=keep)
        assert isinstance(predictor.strategy, Pad if keep else Resize)
        wants = [by_hand(model, im, keep) for im in images]
        for im, li, want in zip(images, predictor.logits(images), wants):
            assert li.shape == (1, *im.shape[:2])
            torch.testing.assert_close(li, want, atol=1e-5, rtol=1e-5)
        for p, want in zip(predictor.predict(images, probabilities=True), wants):
            assert np.array_equal(p.mask, (want[0] > 0).numpy().astype(np.uint8))
            np.testing.assert_allclose(p.probabilities, torch.sigmoid(want).numpy(), atol=1e-5)
    predictor = Predictor(multi)
    want = by_hand(multi, images[0])
    torch.testing.assert_close(predictor.logits(images[:1])[0], want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(predictor.labels(images[:1])[0], want.argmax(0).numpy().astype(np.uint8))
    np.testing.assert_allclose(predictor.probabilities(images[:1])[0], torch.softmax(want, 0).numpy(), atol=1e-5)


def test_batches_already_at_the_input_size_come_back_at_each_size(model):
    images = [noise(37, 53), noise(20, 70, seed=1), noise(37, 53, seed=2)]
    sizes = [im.shape[:2] for im in images]
    x = torch.stack([normalize(F.interpolate(to_tensor(im)[None], size=(32, 32), mode="bilinear",
                                             align_corners=False, antialias=True)[0], model.config)
                     for im in images])
    predictor = Predictor(model, batch_size=2)
    got = predictor.logits_at_sizes(x, sizes)
    for im, li in zip(images, got):
        torch.testing.assert_close(li, by_hand(model, im), atol=1e-5, rtol=1e-5)
    labels = predictor.labels_at_sizes(x, sizes)
    assert [tuple(lab.shape) for lab in labels] == [tuple(s) for s in sizes]
    assert all(torch.equal(lab, (li[0] > 0).to(torch.uint8)) for lab, li in zip(labels, got))


def test_a_compiled_model_always_sees_full_batches_and_the_padding_changes_nothing(model):
    rec = Recording(model)
    assert is_compiled(rec) and is_compiled(AveragedModel([rec], flips=[(), (-1,)])) and not is_compiled(model)
    images = [noise(37, 53, seed=i) for i in range(5)]
    got = Predictor(rec, batch_size=3).logits(images)
    assert rec.seen == [3, 3]  # 3 + 2 images, the last batch padded to 3
    for im, li in zip(images, got):
        torch.testing.assert_close(li, by_hand(model, im), atol=1e-5, rtol=1e-5)
    # The tiles of a sliding window go through the same padding.
    rec.seen.clear()
    x = normalize(to_tensor(noise(40, 72)), model.config)[None]
    tiled = Predictor(rec, batch_size=4, tile_overlap=0.5).logits([noise(40, 72)])[0]
    assert rec.seen and set(rec.seen) == {4}
    torch.testing.assert_close(tiled, sliding_window(model, x, (32, 32), 0.5, 4)[0], atol=1e-5, rtol=1e-5)
    assert isinstance(Predictor(model, tile_overlap=0.25).strategy, Tiles)


def test_tta_and_ensembles_are_the_averaged_model(model, multi):
    image = noise(30, 41)
    flips = {(): lambda a: a, (-1,): lambda a: a[:, ::-1], (-2,): lambda a: a[::-1], (-2, -1): lambda a: a[::-1, ::-1]}
    want = []
    for undo in flips.values():  # predict the flipped image, flip its probabilities back
        p = torch.sigmoid(by_hand(model, np.ascontiguousarray(undo(image)))).numpy()[0]
        want.append(undo(p))
    got = Predictor(model, tta=True).probabilities([image])[0]
    assert got.shape == (1, 30, 41)
    # Resizing commutes with flips up to rounding.
    np.testing.assert_allclose(got[0], np.mean(want, 0), atol=1e-4)
    pair = Predictor([model, model]).probabilities([image])[0]
    np.testing.assert_allclose(pair, torch.sigmoid(by_hand(model, image)).numpy(), atol=1e-5)
    with pytest.raises(CheckpointError, match="class count"):
        Predictor([model, multi])


def test_bad_settings_and_non_finite_logits_are_refused(model):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            Predictor(model, batch_size=bad)
    with pytest.raises(ConfigError, match="tile-overlap"):
        Predictor(model, tile_overlap=1.0)

    def broken(x):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float("nan"))

    with pytest.raises(CheckpointError, match="NaN"):
        Predictor(broken, config=model.config).logits([noise(20, 20)])


def test_eval_mode_is_restored(model):
    m = tiny()
    m.train()
    predictor = Predictor(m)
    with predictor.eval_mode():
        assert not m.training
    assert m.training


def test_volumes_are_the_predictor_slice_by_slice(tiny_model):
    from segdino.volumes import Volume, predict_volume
    from segdino.volumes.intensity import ct_window, normalize_intensity, volume_settings
    from segdino.volumes.predict import predict_volume_with_probabilities
    from segdino.volumes.slicing import context_slice

    tiny_model.config.volume = volume_settings(ct_window("abdomen"), axis="axial", context=1)
    try:
        rng = np.random.default_rng(0)
        image = rng.normal(40, 120, (20, 24, 3)).astype(np.float32)
        vol = Volume(image, np.eye(4))  # axial = the last axis for an identity affine
        labels, prob = predict_volume_with_probabilities(tiny_model, vol, batch_size=2)
        assert np.array_equal(predict_volume(tiny_model, vol, batch_size=3), labels)
        norm = normalize_intensity(image, tiny_model.config.volume["intensity"])
        for k in range(image.shape[2]):
            s = torch.from_numpy(np.ascontiguousarray(context_slice(norm, 2, k, 1))).permute(2, 0, 1)
            x = F.interpolate(s[None].float(), size=(64, 64), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
            with torch.no_grad():
                logits = tiny_model(normalize(x, tiny_model.config)).float()
            want = F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=False)[0]
            np.testing.assert_allclose(prob[:, :, :, k], torch.sigmoid(want).numpy(), atol=1e-5)
            assert np.array_equal(labels[:, :, k], (want[0] > 0).numpy().astype(np.uint8))
    finally:
        tiny_model.config.volume = None


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
