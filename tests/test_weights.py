"""Foreign weights: each format written by its own side's code (or from the spec's key list) loads
exactly, and every bad input is one CheckpointError naming the file."""

import re

import pytest
import torch
from safetensors.torch import save_file

import segdino
from segdino import CheckpointError
from segdino.backbone import DINOv3Backbone
from segdino.config import IMAGENET_MEAN, IMAGENET_STD
from segdino.weights import load_backbone_weights
from tests.conftest import randomize_


# --- files in the other side's layout, written from the spec's key lists -------------------


def meta_state(vit, seed=0):
    """Meta's DINOv3 ``.pth`` layout (docs/WEIGHTS.md, format 1) of a timm DINOv3 model.

    Written from the spec's key list: Meta keeps the key bias inside ``qkv.bias`` and masks it
    with ``bias_mask``, so the stored key bias is random here and must be ignored on load.
    """
    g = torch.Generator().manual_seed(seed)
    t = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    width = t["cls_token"].shape[-1]
    out = {
        "cls_token": t["cls_token"],
        "storage_tokens": t["reg_token"],
        "mask_token": torch.randn(1, width, generator=g),
        "patch_embed.proj.weight": t["patch_embed.proj.weight"],
        "patch_embed.proj.bias": t["patch_embed.proj.bias"],
        "rope_embed.periods": torch.rand(width // vit.blocks[0].attn.num_heads // 4, generator=g),
        "norm.weight": t["norm.weight"],
        "norm.bias": t["norm.bias"],
        "local_cls_norm.weight": torch.randn(width, generator=g),  # the 7B's, unused at inference
        "local_cls_norm.bias": torch.randn(width, generator=g),
    }
    for i in range(len(vit.blocks)):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = t[f"{b}{n}.weight"], t[f"{b}{n}.bias"]
        out[b + "attn.qkv.weight"] = t[b + "attn.qkv.weight"]
        key_bias = torch.randn(width, generator=g)
        out[b + "attn.qkv.bias"] = torch.cat([t[b + "attn.q_bias"], key_bias, t[b + "attn.v_bias"]])
        out[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(width), torch.zeros(width), torch.ones(width)])
        out[b + "attn.proj.weight"], out[b + "attn.proj.bias"] = t[b + "attn.proj.weight"], t[b + "attn.proj.bias"]
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = t[b + "gamma_1"], t[b + "gamma_2"]
        if b + "mlp.fc1_g.weight" in t:  # SwiGLU: w1 gate, w2 value, w3 out
            for meta_name, timm_name in (("w1", "fc1_g"), ("w2", "fc1_x"), ("w3", "fc2")):
                for p in ("weight", "bias"):
                    out[f"{b}mlp.{meta_name}.{p}"] = t[f"{b}mlp.{timm_name}.{p}"]
        else:
            for n in ("fc1", "fc2"):
                for p in ("weight", "bias"):
                    out[f"{b}mlp.{n}.{p}"] = t[f"{b}mlp.{n}.{p}"]
    return out


def authors_state(model, seed=0, scalar_gamma=True):
    """The authors' whole-model layout (docs/WEIGHTS.md, format 4) of one of our models."""
    sd = model.state_dict()
    out = {"backbone." + k: v for k, v in meta_state(model.backbone.vit, seed).items()}
    for i in range(4):
        out[f"decoder.token_projections.{i}.weight"] = sd[f"tpa.projections.{i}.weight"]
        out[f"decoder.tpa_branch_{i + 1}.conv.weight"] = sd[f"tpa.refine.{i}.weight"]
        for ours, theirs in (("intra", "sad_intra"), ("inter", "sad_inter")):
            for k, v in sd.items():
                prefix = f"sad.{ours}.{i}."
                if k.startswith(prefix):
                    name = k[len(prefix):]
                    if name == "gain":
                        # The authors' gamma is a 0-d scalar in some versions, (1,) in others.
                        scalar = scalar_gamma and ours == "intra"
                        out[f"decoder.{theirs}_{i + 1}.gamma"] = v.reshape(()) if scalar else v
                    else:
                        out[f"decoder.{theirs}_{i + 1}.{name}"] = v
    out["decoder.out_conv.weight"] = sd["head.conv.weight"]
    out["decoder.out_conv.bias"] = sd["head.conv.bias"]
    return out


def tokens(backbone, x):
    """Final-norm patch tokens (B, N, C) of the last tap."""
    return backbone(x)[-1].flatten(2).transpose(1, 2)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def tiny_vit():
    """A randomised vitt16 backbone (every parameter random), eval mode."""
    return randomize_(DINOv3Backbone("vitt16"), seed=3).eval()


def fresh(name="vitt16"):
    return DINOv3Backbone(name).eval()


@pytest.fixture(scope="module")
def target():
    """A vitt16 backbone that failing loads are aimed at; they must leave it untouched."""
    backbone = fresh()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    yield backbone
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a failed load changed the backbone"


def hf_model(hidden, heads, inter, gated, seed):
    """A randomised transformers DINOv3ViTModel in eval mode.

    RoPE base 100 and LayerNorm eps 1e-5 are DINOv3's (and timm's); the coordinate augmentations
    (pos_embed_shift/jitter/rescale) act only in training mode, and layer scale is a parameter
    that gets randomised like the rest.
    """
    pytest.importorskip("transformers")
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=12,
        num_register_tokens=4, patch_size=16, image_size=64, rope_theta=100.0, layer_norm_eps=1e-5,
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
        query_bias=True, key_bias=False, value_bias=True,
    )
    return randomize_(DINOv3ViTModel(cfg), seed=seed).eval()


# --- format 2: Hugging Face transformers ------------------------------------------------------


def test_hf_save_pretrained_matches_transformers_forward(tmp_path):
    hf = hf_model(192, 3, 768, gated=False, seed=11)
    hf.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state[:, 1 + 4:]
    for source in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):  # the folder and the file
        ours = fresh()
        load_backbone_weights(ours, source)
        with torch.no_grad():
            assert rel_err(tokens(ours, x), ref) < 1e-5


def test_hf_with_model_prefix_loads_identically(tmp_path):
    """Some transformers versions save ``model.layer.N``; the result must not depend on it."""
    hf = hf_model(192, 3, 768, gated=False, seed=12)
    hf.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file

    plain = load_file(str(tmp_path / "hf" / "model.safetensors"))
    prefixed = {("model." + k if k.startswith("layer.") else k): v for k, v in plain.items()}
    assert any(k.startswith("model.layer.") for k in prefixed)
    save_file(prefixed, str(tmp_path / "prefixed.safetensors"))
    a, b = fresh(), fresh()
    load_backbone_weights(a, tmp_path / "hf" / "model.safetensors")
    load_backbone_weights(b, tmp_path / "prefixed.safetensors")
    assert_same_state(a, b)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(tokens(a, x), hf(pixel_values=x).last_hidden_state[:, 5:]) < 1e-5


@pytest.fixture(scope="module")
def splus_hf(tmp_path_factory):
    """A randomised ViT-S+ (SwiGLU) saved by transformers, and the transformers model."""
    folder = tmp_path_factory.mktemp("splus")
    hf = hf_model(384, 6, 1536, gated=True, seed=13)
    hf.save_pretrained(folder)
    return hf, folder / "model.safetensors"


def test_hf_swiglu_splus_matches_and_meta_layout_agrees(splus_hf, tmp_path):
    hf, path = splus_hf
    ours = fresh("vits16plus")
    load_backbone_weights(ours, path)
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state[:, 5:]
        assert rel_err(tokens(ours, x), ref) < 1e-5
    # The same weights in Meta's SwiGLU layout (w1/w2/w3) load to the same backbone.
    torch.save(meta_state(ours.vit, seed=5), tmp_path / "splus_meta.pth")
    expected = {k: v.clone() for k, v in ours.state_dict().items()}
    randomize_(ours, seed=99)
    load_backbone_weights(ours, tmp_path / "splus_meta.pth")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, expected[k]), k


# --- format 3: timm ---------------------------------------------------------------------------


def test_timm_file_saved_by_timm_loads_bit_identically(tiny_vit, tmp_path):
    from timm.models import save_for_hf

    save_for_hf(tiny_vit.vit, str(tmp_path / "timm"), safe_serialization=True)
    ours = fresh()
    load_backbone_weights(ours, tmp_path / "timm")
    assert_same_state(ours, tiny_vit)
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        for a, b in zip(ours(x), tiny_vit(x)):
            assert torch.equal(a, b)


def test_timm_file_without_qkv_bias_loads_with_zero_biases(tmp_path):
    import timm

    # timm's DINOv3 variants without qkv bias at ViT-T size (the _qkvb one is our vitt16).
    src = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, embed_dim=192,
                            num_heads=3, dynamic_img_size=True)
    src = randomize_(src, seed=4).eval()
    assert not any(k.endswith("q_bias") for k in src.state_dict())
    save_file(src.state_dict(), str(tmp_path / "noqkvb.safetensors"))
    ours = fresh()
    randomize_(ours, seed=7)
    load_backbone_weights(ours, tmp_path / "noqkvb.safetensors")
    sd = ours.vit.state_dict()
    assert all(not sd[k].any() for k in sd if k.endswith(("q_bias", "v_bias")))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.vit.forward_features(x), src.forward_features(x), rtol=1e-5, atol=1e-6)


# --- format 1: Meta ---------------------------------------------------------------------------


def test_meta_pth_from_spec_keys_equals_the_timm_model(tiny_vit, tmp_path):
    torch.save(meta_state(tiny_vit.vit), tmp_path / "dinov3_vitt16.pth")
    ours = fresh()
    load_backbone_weights(ours, tmp_path / "dinov3_vitt16.pth")
    assert_same_state(ours, tiny_vit)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), tiny_vit(x)):
            assert torch.equal(a, b)


def test_meta_unmasked_key_bias_is_refused(tiny_vit, target, tmp_path):
    state = meta_state(tiny_vit.vit)
    state["blocks.3.attn.qkv.bias_mask"] = torch.ones_like(state["blocks.3.attn.qkv.bias_mask"])
    path = tmp_path / "unmasked.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*blocks\.3\.attn\.qkv\.bias.*key bias"):
        load_backbone_weights(target, path)


def test_meta_missing_and_leftover_keys_are_listed(tiny_vit, target, tmp_path):
    state = meta_state(tiny_vit.vit)
    del state["blocks.7.attn.proj.weight"]
    state["blocks.2.attn.extra.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(target, path)
    msg = str(e.value)
    assert str(path) in msg and "blocks.7.attn.proj.weight" in msg and "blocks.2.attn.extra.weight" in msg


# --- format 4: the authors' whole model ---------------------------------------------------------


@pytest.mark.parametrize("norm,suffix", [("group", ".pth"), ("batch", ".safetensors")])
def test_authors_state_dict_loads_and_equals_its_model(norm, suffix, tmp_path):
    src = segdino.build_model("vitt16", num_classes=3, decoder_dim=32, norm=norm, image_size=(64, 64))
    randomize_(src, seed=8)
    if norm == "batch":
        g = torch.Generator().manual_seed(2)
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    src.eval()
    state = authors_state(src)
    path = tmp_path / f"segdino_v2_best{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = segdino.load_model(path)
    cfg = loaded.config
    assert (cfg.backbone, cfg.decoder_dim, cfg.num_classes, cfg.norm) == ("vitt16", 32, 3, norm)
    assert cfg.image_size == (256, 256) and cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))


def test_authors_file_with_module_prefix_and_wrapper_loads(tmp_path):
    src = randomize_(segdino.build_model("vitt16", decoder_dim=32, image_size=(64, 64)), seed=9).eval()
    wrapped = {"epoch": 50, "state_dict": {"module." + k: v for k, v in authors_state(src).items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    loaded = segdino.load_model(tmp_path / "ddp.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))


def test_authors_state_dict_with_a_missing_decoder_key_lists_it(tmp_path):
    src = segdino.build_model("vitt16", decoder_dim=32, image_size=(64, 64))
    state = authors_state(src)
    del state["decoder.sad_inter_2.pointwise.weight"]
    state["decoder.aux_head.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        segdino.load_model(path)
    msg = str(e.value)
    assert str(path) in msg and "decoder.sad_inter_2.pointwise.weight" in msg and "decoder.aux_head.weight" in msg


# --- bad input --------------------------------------------------------------------------------


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_vit):
    d = tmp_path_factory.mktemp("bad")
    torch.save(meta_state(tiny_vit.vit), d / "good.pth")
    save_file(tiny_vit.vit.state_dict(), str(d / "good.safetensors"))
    pth, st = (d / "good.pth").read_bytes(), (d / "good.safetensors").read_bytes()
    return {
        "missing": d / "nope.pth",
        "empty": _write(d / "empty.pth", b""),
        "truncated_pth": _write(d / "trunc.pth", pth[: len(pth) // 2]),
        "truncated_safetensors": _write(d / "trunc.safetensors", st[: len(st) // 2]),
        "not_a_checkpoint": _write(d / "notes.pth", b"this is a text file, not weights\n" * 10),
        "not_tensors": (torch.save({"epoch": 3, "name": "x"}, d / "dict.pth"), d / "dict.pth")[1],
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated_pth", "truncated_safetensors", "not_a_checkpoint",
                                  "not_tensors"])
@pytest.mark.parametrize("entry", ["backbone", "model"])
def test_bad_files_raise_checkpoint_error_naming_the_file(bad_files, target, kind, entry):
    path = bad_files[kind]
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        if entry == "backbone":
            load_backbone_weights(target, path)
        else:
            segdino.load_model(path)


def test_backbone_file_given_as_a_whole_model(tiny_vit, tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(meta_state(tiny_vit.vit), path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*Meta.*not a whole model.*backbone_weights"):
        segdino.load_model(path)


def test_whole_models_given_as_backbone_weights(target, tmp_path):
    model = randomize_(segdino.build_model("vitt16", decoder_dim=32, image_size=(64, 64)), seed=1)
    torch.save(authors_state(model), tmp_path / "authors.pth")
    segdino.save_model(model, tmp_path / "ours.safetensors")
    save_file(model.state_dict(), str(tmp_path / "bare.safetensors"))
    for name, what in (("authors.pth", "authors"), ("ours.safetensors", "whole SegDINO model"),
                       ("bare.safetensors", "whole SegDINO model")):
        path = tmp_path / name
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + f".*{what}.*not a backbone.*load_model"):
            load_backbone_weights(target, path)
    with pytest.raises(CheckpointError, match="authors.*not a backbone"):  # the public entry point
        segdino.build_model("vitt16", decoder_dim=32, image_size=(64, 64), backbone_weights=tmp_path / "authors.pth")


def test_backbone_of_another_size_names_the_key_and_both_shapes(target, tmp_path):
    # timm's ViT-S keys and shapes, filled with random values (skips the slow weight initialisation).
    with torch.device("meta"):
        small = DINOv3Backbone("vits16").vit
    state = {k: torch.randn(v.shape) for k, v in small.state_dict().items()}
    path = tmp_path / "vits16.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(target, path)
    msg = str(e.value)
    assert str(path) in msg and "vits16 backbone" in msg and "vitt16" in msg
    assert re.search(r"\w+ has shape \(.*384.*\) in the file, the model expects \(.*192.*\)", msg), msg


def test_splus_file_into_s_backbone_lists_the_swiglu_keys(splus_hf, target):
    _, path = splus_hf
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(target, path)
    msg = str(e.value)
    # Keys are named as in the file: SwiGLU's gate_proj has no place in the ViT-T's plain MLP.
    assert str(path) in msg and "vits16plus" in msg and "mlp.gate_proj.weight" in msg
