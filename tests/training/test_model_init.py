"""What a run starts from: --init from ours or the authors' weights, a new head when classes differ."""

import pytest
import torch

import segdino
from segdino.errors import ConfigError
from segdino.training import Trainer, build_datasets, run_training
from tests.training.conftest import config


def test_init_from_authors_state_dict_with_a_new_head(discs, tmp_path):
    from tests.conftest import randomize_
    from tests.test_weights import authors_state

    src = randomize_(segdino.build_model("vitt16", num_classes=3, decoder_dim=16, image_size=(32, 32)))
    torch.save(authors_state(src), tmp_path / "authors.pth")
    cfg = config(discs, tmp_path / "run", epochs=1, steps_per_epoch=1, init=str(tmp_path / "authors.pth"),
                 decoder_dim=None)
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, None, out=tmp_path / "run")
    model = trainer.model
    assert model.num_classes == 1 and model.config.decoder_dim == 16
    src_sd, sd = src.state_dict(), model.state_dict()
    for k, v in sd.items():
        if k.startswith("head."):
            assert v.shape[0] == 1
        else:
            assert torch.equal(v, src_sd[k]), k
    trainer.fit()
    assert segdino.load_model(tmp_path / "run" / "last.safetensors").num_classes == 1


def test_init_with_the_same_class_count_keeps_the_head(tmp_path, discs):
    from tests.conftest import randomize_

    src = randomize_(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)))
    segdino.save_model(src, tmp_path / "src.safetensors")
    cfg = config(discs, tmp_path / "run", init=str(tmp_path / "src.safetensors"), decoder_dim=None)
    train, val, _ = build_datasets(cfg)
    model = Trainer(cfg, train, val, None, out=tmp_path / "run").model
    assert torch.equal(model.head.conv.weight, src.head.conv.weight)


def test_init_contradicting_backbone_is_refused(discs, tmp_path):
    segdino.save_model(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32)), tmp_path / "m.safetensors")
    cfg = config(discs, tmp_path / "run", init=str(tmp_path / "m.safetensors"), backbone="vits16")
    with pytest.raises(ConfigError, match="contradicts --init"):
        run_training(cfg)


def test_decoder_switches_build_the_ablated_model(discs, tmp_path):
    from segdino.training import build_run_model

    cfg = config(discs, tmp_path / "run", taps="11,11,11,11", no_tpa=True, sad_blocks=2)
    model = build_run_model(cfg)
    c = model.config
    assert (c.taps, c.no_tpa, c.no_sad, c.sad_blocks) == ((11, 11, 11, 11), True, False, 2)
    assert not model.tpa.resample and isinstance(model.sad.intra[0], torch.nn.Sequential)
    plain = build_run_model(config(discs, tmp_path / "run"))
    assert plain.config.taps == (2, 5, 8, 11) and plain.tpa.resample and not plain.config.no_sad


def test_init_keeps_the_sad_depth_of_the_model_it_starts_from(discs, tmp_path):
    from segdino.training import build_run_model
    from tests.conftest import randomize_

    src = randomize_(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32), sad_blocks=2))
    segdino.save_model(src, tmp_path / "src.safetensors")
    model = build_run_model(config(discs, tmp_path / "run", init=str(tmp_path / "src.safetensors"), decoder_dim=None))
    assert model.config.sad_blocks == 2
    assert torch.equal(model.sad.inter[1][1].pointwise.weight, src.sad.inter[1][1].pointwise.weight)
