"""The fast-path wrapper: cast and layout inside the compiled call, tables built before compiling,
a float32 copy out. Compilation itself needs CUDA, so a recording stand-in takes its place."""

import torch

from segdino.fast import FastModel
from segdino.kernels import tables
from tests.conftest import randomize_
from tests.kernels.conftest import rel


def test_fast_model_casts_inside_the_call_and_primes_tables_once(monkeypatch):
    from segdino.model import build_model

    monkeypatch.setattr(tables, "_TABLES", {})
    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32))).eval()
    fast = FastModel(model, torch.device("cpu"), torch.float64, channels_last=True, compile_mode=None,
                     fused={"pointwise": "linear"})
    seen = []

    def compiled(x):  # what torch.compile would run: the cast and the model together
        seen.append((x.dtype, x.is_contiguous()))
        return fast._run(x)

    fast.compiled = compiled
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = model.double()(x.double())
    y = fast(x)
    assert seen == [(torch.float32, True)]  # the caller's tensor goes in as it is
    assert y.dtype == torch.float32 and rel(y, ref) < 1e-5
    # The first call at a shape ran once eagerly: the interpolation tables exist before compiling.
    assert any(k.startswith("bilinear:") for k in tables._TABLES)
    assert any(k.startswith("shifted:") for k in tables._TABLES)
    n = len(tables._TABLES)
    y2 = fast(x)
    assert len(seen) == 2 and len(tables._TABLES) == n and torch.equal(y, y2)
    assert y2.data_ptr() != y.data_ptr()
    # Parameters appear once (the cast wrapper is not a second registered copy of the model).
    assert len(list(fast.parameters())) == len(list(fast.inner.parameters()))


def test_training_compiles_as_cuda_graphs_in_one_process_only():
    from segdino.fast import TRAIN_COMPILE, train_compile_options

    assert TRAIN_COMPILE["mode"] == "reduce-overhead"
    assert train_compile_options(1) == TRAIN_COMPILE
    # Under DDP the gradients' all-reduce runs inside the backward: no CUDA graphs there.
    assert "mode" not in train_compile_options(2)
    assert train_compile_options(1) is not TRAIN_COMPILE  # a copy: callers cannot change the default


def test_compiled_fast_models_may_each_keep_their_own_compiled_shapes(monkeypatch):
    """Every FastModel compiles the same wrapper code; dynamo keeps 8 versions of one code object by
    default, which an ensemble of five models at two shapes (or the benchmark's paths) outgrows."""
    from segdino.fast import COMPILED_ENTRIES
    from segdino.model import build_model

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(config, name, 8)
    model = build_model("vitt16", decoder_dim=16, image_size=(32, 32)).eval()
    FastModel(model, torch.device("cpu"), torch.float32, channels_last=False, compile_mode=None)
    assert getattr(config, name) == 8  # nothing compiled, nothing changed
    FastModel(model, torch.device("cpu"), torch.float32, channels_last=False, compile_mode="reduce-overhead")
    assert getattr(config, name) == COMPILED_ENTRIES >= 5 * 2
    monkeypatch.setattr(config, name, 200)
    FastModel(model, torch.device("cpu"), torch.float32, channels_last=False, compile_mode="reduce-overhead")
    assert getattr(config, name) == 200  # a larger limit set by the user stays
