"""Key layouts of foreign weights, recognised and converted to ours by pure functions.

Four layouts reach us (docs/WEIGHTS.md):

1. ``meta``: Meta's DINOv3 ``.pth`` (``storage_tokens``, ``blocks.N.ls1.gamma``, ``attn.qkv.bias``
   with a ``bias_mask``, SwiGLU ``mlp.w1/w2/w3``);
2. ``hf``: Hugging Face transformers ``DINOv3ViTModel`` (``embeddings.*``, ``[model.]layer.N.*``,
   separate ``q/k/v/o_proj``, SwiGLU ``gate/up/down_proj``);
3. ``timm``: timm's own Eva keys, which our backbone uses as they are;
4. ``segdino_v2``: the authors' trained model, ``backbone.<meta keys>`` plus ``decoder.*``.

Every backbone layout becomes timm's keys (:func:`backbone_to_timm`), the authors' whole model
becomes our model's keys (:func:`authors_to_segdino`), and the config of a state dict in our keys
is read from its shapes (:func:`infer_model_config`). Nothing here reads a file or builds a
model: :mod:`segdino.weights` and :mod:`segdino.checkpoint` do, with these functions.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import torch

from .backbone import BACKBONES
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .weight_files import list_keys

__all__ = [
    "FORMAT_DESCRIPTIONS",
    "BACKBONE_FORMATS",
    "MODEL_FORMATS",
    "detect_format",
    "detect_backbone_format",
    "meta_to_timm",
    "hf_to_timm",
    "timm_to_timm",
    "backbone_to_timm",
    "guess_backbone",
    "describe_size",
    "name_in_layout",
    "authors_to_segdino",
    "authors_name",
    "infer_model_config",
]

FORMAT_DESCRIPTIONS = {
    "meta": "a DINOv3 backbone in Meta's layout",
    "hf": "a DINOv3 backbone in Hugging Face transformers' layout",
    "timm": "a DINOv3 backbone in timm's layout",
    "segdino_v2": "a whole SegDINO model in the authors' (segdino_v2) layout",
    "segdino": "a whole SegDINO model state dict without its config",
}
BACKBONE_FORMATS = ("meta", "hf", "timm")
MODEL_FORMATS = ("segdino_v2", "segdino")


# --- recognising a layout ---------------------------------------------------------------

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HF_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.")


def detect_format(state: Mapping[str, Any]) -> str | None:
    """The layout of a state dict: ``meta``, ``hf``, ``timm``, ``segdino_v2``, ``segdino``, or None."""
    keys = set(state)
    if any(k.startswith("decoder.") for k in keys) and any(k.startswith("backbone.") for k in keys):
        return "segdino_v2"
    if any(k.startswith("backbone.vit.") for k in keys) and any(k.startswith(("tpa.", "sad.", "head.")) for k in keys):
        return "segdino"
    if "storage_tokens" in keys or any(k.endswith((".ls1.gamma", ".attn.qkv.bias_mask")) for k in keys):
        return "meta"
    if any(k.startswith("embeddings.") for k in keys) or any(_HF_LAYER.match(k) for k in keys):
        return "hf"
    if "reg_token" in keys or any(k.endswith((".gamma_1", ".attn.q_bias")) for k in keys):
        return "timm"
    if "cls_token" in keys and any(_BLOCK.match(k) for k in keys):
        # Without register tokens or layer scale the layout is still timm's (and Meta's) naming.
        return "timm"
    return None


def detect_backbone_format(state: Mapping[str, Any], source: str | os.PathLike = "checkpoint") -> str:
    """``meta``, ``hf`` or ``timm`` for a backbone state dict; :class:`CheckpointError` otherwise."""
    fmt = detect_format(state)
    if fmt in BACKBONE_FORMATS:
        return fmt
    if fmt in MODEL_FORMATS:
        raise CheckpointError(
            f"{source} is {FORMAT_DESCRIPTIONS[fmt]}, not a backbone; expected a DINOv3 backbone file "
            "(Meta .pth, Hugging Face or timm safetensors). Load a whole model with segdino.load_model() "
            "(--model or --init on the command line)"
        )
    raise CheckpointError(
        f"{source}: not a DINOv3 backbone or SegDINO model; expected Meta, Hugging Face or timm DINOv3 keys, "
        f"found {list_keys(sorted(state), 6)}"
    )


# --- backbone layouts -> timm keys --------------------------------------------------------

# Keys an inference backbone never uses, by layout: pretraining-only tokens, buffers that are
# recomputed, and the 7B's second CLS norm for local crops.
_META_UNUSED = re.compile(r"^(mask_token|rope_embed\.periods|local_cls_norm\..*|.*\.bias_mask)$")
_HF_UNUSED = re.compile(r"^(embeddings\.mask_token|rope_embeddings\.inv_freq)$")
_TIMM_UNUSED = re.compile(r"^(mask_token|rope\.periods)$")


def meta_to_timm(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Meta's DINOv3 keys (format 1) -> timm's Eva keys.

    ``attn.qkv.bias`` (3C,) becomes ``attn.q_bias`` and ``attn.v_bias``: Meta masks the key bias
    to zero with ``bias_mask`` and timm has no key bias. An unmasked non-zero key bias cannot be
    represented and raises :class:`CheckpointError`.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if _META_UNUSED.match(k):
            continue
        if k.endswith(".attn.qkv.bias"):
            base = k[: -len("qkv.bias")]
            q, kb, vb = _split3(source, k, v)
            mask = state.get(k + "_mask")
            if mask is not None and mask.shape == v.shape and torch.isfinite(mask).all():
                mq, mk, mv = mask.chunk(3, dim=-1)
                q, kb, vb = q * mq, kb * mk, vb * mv
                if torch.count_nonzero(kb):
                    raise CheckpointError(
                        f"{source}: {k} has a key bias that its bias_mask does not mask; DINOv3 as timm "
                        "implements it has no key bias, so these weights cannot be loaded exactly"
                    )
            out[base + "q_bias"] = q
            out[base + "v_bias"] = vb
            continue
        k = k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        k = re.sub(r"\.mlp\.w1\.", ".mlp.fc1_g.", k)
        k = re.sub(r"\.mlp\.w2\.", ".mlp.fc1_x.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        if k == "storage_tokens":
            k = "reg_token"
        out[k] = v
    return out


# Per-layer names after ``layer.N.``; the norms keep theirs.
_HF_RENAMES = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attention.o_proj.", "attn.proj."),
    ("layer_scale1.lambda1", "gamma_1"),
    ("layer_scale2.lambda1", "gamma_2"),
)


def hf_to_timm(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Hugging Face ``DINOv3ViTModel`` keys (format 2, ``model.`` before ``layer.N`` or not) -> timm's.

    ``q_proj``, ``k_proj``, ``v_proj`` weights are stacked into ``attn.qkv.weight`` (q, k, v order);
    SwiGLU ``gate_proj``/``up_proj``/``down_proj`` become ``fc1_g``/``fc1_x``/``fc2``. A non-zero
    ``k_proj`` bias cannot be represented (timm has no key bias) and raises :class:`CheckpointError`.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    gated = any(k.endswith(".mlp.gate_proj.weight") for k in state)
    for k, v in state.items():
        if _HF_UNUSED.match(k):
            continue
        if k.startswith("embeddings."):
            name = k[len("embeddings."):]
            mapped = {
                "cls_token": "cls_token",
                "register_tokens": "reg_token",
                "patch_embeddings.weight": "patch_embed.proj.weight",
                "patch_embeddings.bias": "patch_embed.proj.bias",
            }.get(name)
            out[mapped or k] = v  # an unknown name stays and is reported as left over
            continue
        m = _HF_LAYER.match(k)
        if not m:
            out[k] = v  # norm.* keeps its name; anything else is reported as left over
            continue
        i, rest = int(m.group(1)), k[m.end():]
        prefix = f"blocks.{i}."
        if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            proj, param = rest.split(".")[1:3]
            if param == "weight":
                qkv.setdefault(i, {})[proj] = v
            elif proj == "q_proj" and param == "bias":
                out[prefix + "attn.q_bias"] = v
            elif proj == "v_proj" and param == "bias":
                out[prefix + "attn.v_bias"] = v
            elif proj == "k_proj" and param == "bias":
                if torch.count_nonzero(v):
                    raise CheckpointError(
                        f"{source}: {k} is a non-zero key bias; DINOv3 as timm implements it has no key "
                        "bias, so these weights cannot be loaded exactly"
                    )
            else:
                out[k] = v
            continue
        if rest.startswith("mlp."):
            sub, _, param = rest[len("mlp."):].partition(".")
            names = {"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"} if gated else {
                "up_proj": "fc1", "down_proj": "fc2"}
            if sub in names:
                out[f"{prefix}mlp.{names[sub]}.{param}"] = v
            else:
                out[k] = v
            continue
        for old, new in _HF_RENAMES:
            if rest.startswith(old):
                out[prefix + new + rest[len(old):]] = v
                break
        else:
            out[k] = v
    for i, parts in sorted(qkv.items()):
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            absent = sorted({"q_proj", "k_proj", "v_proj"} - set(parts))
            raise CheckpointError(
                f"{source}: layer {i} lacks attention.{', attention.'.join(p + '.weight' for p in absent)}"
            )
        shapes = {tuple(t.shape) for t in parts.values()}
        if len(shapes) != 1:
            raise CheckpointError(
                f"{source}: layer {i} has q/k/v projection weights of different shapes "
                f"{', '.join(f'{p} {tuple(t.shape)}' for p, t in sorted(parts.items()))}"
            )
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    return out


def timm_to_timm(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """timm's keys (format 3) as they are, less the few an inference backbone never uses."""
    return {k: v for k, v in state.items() if not _TIMM_UNUSED.match(k)}


_CONVERTERS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "meta": meta_to_timm,
    "hf": hf_to_timm,
    "timm": timm_to_timm,
}


def backbone_to_timm(
    state: Mapping[str, torch.Tensor], fmt: str | None = None, source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Any backbone layout (detected when ``fmt`` is None) -> timm's Eva keys."""
    fmt = fmt or detect_backbone_format(state, source)
    return _CONVERTERS[fmt](state, source=source)


def _split3(source, key: str, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if v.dim() != 1 or v.shape[0] % 3:
        raise CheckpointError(f"{source}: {key} has shape {tuple(v.shape)}; expected (3 * width,)")
    return v.chunk(3)


def guess_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone name whose width, depth and MLP kind match a timm-key state dict, if any."""
    cls = state.get("cls_token")
    if cls is None or cls.dim() == 0:
        return None
    width = int(cls.shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    swiglu = any(".mlp.fc1_g." in k for k in state)
    for spec in BACKBONES.values():
        if (spec.width, spec.depth, spec.swiglu) == (width, depth, swiglu):
            return spec.name
    return None


def describe_size(state: Mapping[str, torch.Tensor]) -> str | None:
    """What a timm-key backbone state dict holds, in words (``a vits16 backbone``), for messages."""
    name = guess_backbone(state)
    if name:
        return f"a {name} backbone"
    cls = state.get("cls_token")
    if cls is not None and cls.dim() > 0:
        blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
        return f"a backbone of width {cls.shape[-1]} and depth {max(blocks) + 1 if blocks else 0}"
    return None


_AUTHORS_BLOCK = re.compile(r"^decoder\.(sad_intra|sad_inter)_([1-4])\.(.+)$")
_AUTHORS_BRANCH = re.compile(r"^decoder\.tpa_branch_([1-4])\.conv\.weight$")
_AUTHORS_PROJ = re.compile(r"^decoder\.token_projections\.([0-3])\.weight$")


def authors_to_segdino(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The authors' whole-model keys (format 4) -> ours.

    ``backbone.<Meta keys>`` -> ``backbone.vit.<timm keys>``; ``decoder.token_projections.i`` ->
    ``tpa.projections.i``; ``decoder.tpa_branch_{i+1}.conv`` -> ``tpa.refine.i``;
    ``decoder.sad_{intra,inter}_{i+1}`` -> ``sad.{intra,inter}.i`` (``gamma`` -> ``gain``);
    ``decoder.out_conv`` -> ``head.conv``. Index 1 of the authors is their shallowest tap, our 0.
    Unknown keys are kept under their own name so the strict fit reports them.
    """
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {"backbone.vit." + k: v for k, v in backbone_to_timm(backbone, source=source).items()}
    for k, v in state.items():
        if k.startswith("backbone."):
            continue
        if m := _AUTHORS_PROJ.match(k):
            out[f"tpa.projections.{m.group(1)}.weight"] = v
        elif m := _AUTHORS_BRANCH.match(k):
            out[f"tpa.refine.{int(m.group(1)) - 1}.weight"] = v
        elif m := _AUTHORS_BLOCK.match(k):
            kind = "intra" if m.group(1) == "sad_intra" else "inter"
            param = "gain" if m.group(3) == "gamma" else m.group(3)
            out[f"sad.{kind}.{int(m.group(2)) - 1}.{param}"] = v
        elif k.startswith("decoder.out_conv."):
            out["head.conv." + k[len("decoder.out_conv."):]] = v
        else:
            out[k] = v
    return out


_META_NAMES = (
    (r"^reg_token$", "storage_tokens"),
    (r"\.gamma_1$", ".ls1.gamma"),
    (r"\.gamma_2$", ".ls2.gamma"),
    (r"\.mlp\.fc1_g\.", ".mlp.w1."),
    (r"\.mlp\.fc1_x\.", ".mlp.w2."),
    (r"\.attn\.[qv]_bias$", ".attn.qkv.bias"),
)
_HF_NAMES = (
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^reg_token$", "embeddings.register_tokens"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings."),
    (r"^blocks\.(\d+)\.", r"layer.\1."),
    (r"\.gamma_1$", ".layer_scale1.lambda1"),
    (r"\.gamma_2$", ".layer_scale2.lambda1"),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.attn\.qkv\.weight$", ".attention.{q,k,v}_proj.weight"),
    (r"\.attn\.([qv])_bias$", r".attention.\1_proj.bias"),
    (r"\.mlp\.fc1\.", ".mlp.up_proj."),
    (r"\.mlp\.fc1_g\.", ".mlp.gate_proj."),
    (r"\.mlp\.fc1_x\.", ".mlp.up_proj."),
    (r"\.mlp\.fc2\.", ".mlp.down_proj."),
)


def name_in_layout(fmt: str | None) -> Callable[[str], str]:
    """Maps a timm key to the name the same tensor has in a ``meta`` or ``hf`` file, for messages."""
    rules = {"meta": _META_NAMES, "hf": _HF_NAMES}.get(fmt or "", ())

    def name(key: str) -> str:
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        return key

    return name


def authors_name(key: str) -> str:
    """The authors' name of one of our model keys (``tpa.refine.0.weight`` ->
    ``decoder.tpa_branch_1.conv.weight``), for messages."""
    if key.startswith("backbone.vit."):
        return "backbone." + name_in_layout("meta")(key[len("backbone.vit."):])
    if m := re.match(r"^tpa\.projections\.(\d)\.weight$", key):
        return f"decoder.token_projections.{m.group(1)}.weight"
    if m := re.match(r"^tpa\.refine\.(\d)\.weight$", key):
        return f"decoder.tpa_branch_{int(m.group(1)) + 1}.conv.weight"
    if m := re.match(r"^sad\.(intra|inter)\.(\d)\.(.+)$", key):
        param = "gamma" if m.group(3) == "gain" else m.group(3)
        return f"decoder.sad_{m.group(1)}_{int(m.group(2)) + 1}.{param}"
    if key.startswith("head.conv."):
        return "decoder.out_conv." + key[len("head.conv."):]
    return key


def infer_model_config(state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The :class:`ModelConfig` of a state dict in our keys, from its tensor shapes.

    Backbone from width/depth/MLP kind, decoder width from ``tpa.projections.0.weight`` (D, C, 1, 1),
    class count from ``head.conv.weight`` (K, D, 1, 1), BatchNorm when running statistics are
    present. Preprocessing is the authors' default (256x256, ImageNet mean/std), since such a
    file carries none.
    """
    vit = {k[len("backbone.vit."):]: v for k, v in state.items() if k.startswith("backbone.vit.")}
    name = guess_backbone(vit)
    if name is None:
        found = describe_size(vit) or "no recognisable backbone"
        sizes = ", ".join(f"{s.name} ({s.width} wide, {s.depth} deep{', SwiGLU' if s.swiglu else ''})"
                          for s in BACKBONES.values())
        raise CheckpointError(f"{source}: its backbone is {found}; expected one of {sizes}")
    for key in ("tpa.projections.0.weight", "head.conv.weight"):
        if key not in state or state[key].dim() != 4:
            raise CheckpointError(f"{source}: cannot infer the decoder: {key} is missing or not a conv weight")
    decoder_dim = int(state["tpa.projections.0.weight"].shape[0])
    num_classes = int(state["head.conv.weight"].shape[0])
    norm = "batch" if "sad.intra.0.norm.running_mean" in state else "group"
    try:
        return ModelConfig(backbone=name, num_classes=num_classes, decoder_dim=decoder_dim, norm=norm)
    except ConfigError as e:
        raise CheckpointError(f"{source}: the inferred model is invalid: {e}") from None


