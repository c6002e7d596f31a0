"""Reading weights files is safe: a pickle that needs code is refused and never run, and a hub name
that cannot be downloaded says how to pass a local file."""

import re

import pytest
import torch

import segdino
from segdino import CheckpointError
from segdino.weight_files import safe_torch_load
from tests.test_weights import meta_state, tiny_vit  # noqa: F401  (tiny_vit is a fixture)


class _CreatesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_never_run(tiny_vit, tmp_path):
    marker = tmp_path / "created_by_pickle.txt"
    path = tmp_path / "evil.pth"
    state = meta_state(tiny_vit.vit)
    state["payload"] = _CreatesFile(marker)
    torch.save(state, path)
    for load in (lambda: segdino.load_model(path), lambda: segdino.build_model("vitt16", backbone_weights=path),
                 lambda: safe_torch_load(path)):
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*not executed.*convert it yourself"):
            load()
        assert not marker.exists()
    # The refusal is what kept the file from appearing: an unsafe load of this (our own) file creates it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_hub_name_offline_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    for name in ("timm/vit_small_patch16_dinov3_qkvb.lvd1689m", "facebook/dinov3-vits16-pretrain-lvd1689m"):
        with pytest.raises(CheckpointError, match=re.escape(name) + ".*local file.*backbone_weights"):
            segdino.build_model("vitt16", decoder_dim=32, image_size=(64, 64), backbone_weights=name)
