"""Key layouts: each backbone layout converts to timm's keys (the large ones checked by key names
from the spec's lists), converters leave their input alone, and the layout is recognised."""

import pytest
import torch

from segdino.backbone import BACKBONES, DINOv3Backbone
from segdino.conversion import backbone_to_timm, detect_format, meta_to_timm
from tests.test_weights import meta_state, tiny_vit  # noqa: F401  (tiny_vit is a fixture)


def spec_key_names(name, layout):
    """Key names (tiny stand-in tensors) of a backbone file in ``layout``, from the spec's lists."""
    spec = BACKBONES[name]
    one, three = torch.zeros(1), torch.zeros(3)
    mat = torch.zeros(1, 1)
    keys = {}
    if layout == "meta":
        keys.update({k: one for k in ("cls_token", "storage_tokens", "mask_token", "rope_embed.periods",
                                      "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias")})
        if name == "vit7b16":
            keys.update({"local_cls_norm.weight": one, "local_cls_norm.bias": one})
        mlp = ("w1", "w2", "w3") if spec.swiglu else ("fc1", "fc2")
        for i in range(spec.depth):
            b = f"blocks.{i}."
            for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight",
                      "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "ls2.gamma"):
                keys[b + k] = one
            if name != "vit7b16":  # Meta's 7B has no qkv bias
                keys[b + "attn.qkv.bias"], keys[b + "attn.qkv.bias_mask"] = three, three
            for m in mlp:
                keys[f"{b}mlp.{m}.weight"], keys[f"{b}mlp.{m}.bias"] = one, one
    else:
        keys.update({k: one for k in ("embeddings.cls_token", "embeddings.mask_token", "embeddings.register_tokens",
                                      "embeddings.patch_embeddings.weight", "embeddings.patch_embeddings.bias",
                                      "norm.weight", "norm.bias")})
        mlp = ("gate_proj", "up_proj", "down_proj") if spec.swiglu else ("up_proj", "down_proj")
        for i in range(spec.depth):
            b = f"model.layer.{i}."
            for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attention.o_proj.weight",
                      "attention.o_proj.bias", "layer_scale1.lambda1", "layer_scale2.lambda1"):
                keys[b + k] = one
            for p in ("q_proj", "k_proj", "v_proj"):
                keys[f"{b}attention.{p}.weight"] = mat
            if name != "vit7b16":
                keys[b + "attention.q_proj.bias"], keys[b + "attention.v_proj.bias"] = one, one
            for m in mlp:
                keys[f"{b}mlp.{m}.weight"], keys[f"{b}mlp.{m}.bias"] = one, one
    return keys


@pytest.mark.parametrize("name", ["vith16plus", "vit7b16"])
@pytest.mark.parametrize("layout", ["meta", "hf"])
def test_large_swiglu_key_layouts_convert_to_the_timm_model_keys(name, layout):
    """H+ and 7B are too large to build here; their converted key names must equal timm's."""
    with torch.device("meta"):
        expected = set(DINOv3Backbone(name).vit.state_dict())
    converted = backbone_to_timm(spec_key_names(name, layout))
    assert detect_format(spec_key_names(name, layout)) == layout
    assert set(converted) == expected


def test_converters_are_pure_and_detect_formats(tiny_vit):
    meta = meta_state(tiny_vit.vit)
    before = {k: v.clone() for k, v in meta.items()}
    converted = meta_to_timm(meta)
    assert meta.keys() == before.keys() and all(torch.equal(meta[k], before[k]) for k in meta)
    assert detect_format(meta) == "meta" and detect_format(tiny_vit.vit.state_dict()) == "timm"
    assert detect_format(converted) == "timm"
    assert detect_format({"embeddings.cls_token": torch.zeros(1), "layer.0.norm1.weight": torch.zeros(1)}) == "hf"
    assert detect_format({"model.layer.0.norm1.weight": torch.zeros(1)}) == "hf"
    assert detect_format({"weight": torch.zeros(1)}) is None
