"""DINOv3 backbone through timm, tapped at four depths.

The backbone returns the token maps of four blocks, each passed through the ViT's final
LayerNorm, stripped of CLS and register tokens, as (B, C, H/16, W/16) tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

from .errors import ConfigError, DataError
from .ops import PATCH_SIZE  # noqa: F401  (named here too: the ViT's patch side)


@dataclass(frozen=True)
class BackboneSpec:
    """One member of the DINOv3 family."""

    name: str
    timm_name: str
    width: int
    depth: int
    heads: int
    default_taps: tuple[int, ...]
    swiglu: bool = False
    # timm overrides used when the registry of an older timm lacks the model.
    fallback: tuple[str, dict] | None = None


def even_taps(depth: int, n: int = 4) -> tuple[int, ...]:
    """Taps spread evenly over depth, ending at the last block (0-based)."""
    return tuple(depth * (i + 1) // n - 1 for i in range(n))


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            "vitt16", "vit_tiny_patch16_dinov3_qkvb", 192, 12, 3, (2, 5, 8, 11),
            fallback=("vit_small_patch16_dinov3_qkvb", {"embed_dim": 192, "num_heads": 3}),
        ),
        BackboneSpec("vits16", "vit_small_patch16_dinov3_qkvb", 384, 12, 6, (2, 5, 8, 11)),
        BackboneSpec("vits16plus", "vit_small_plus_patch16_dinov3_qkvb", 384, 12, 6, (2, 5, 8, 11), swiglu=True),
        BackboneSpec("vitb16", "vit_base_patch16_dinov3_qkvb", 768, 12, 12, (2, 5, 8, 11)),
        BackboneSpec("vitl16", "vit_large_patch16_dinov3_qkvb", 1024, 24, 16, (4, 11, 17, 23)),
        BackboneSpec("vith16plus", "vit_huge_plus_patch16_dinov3_qkvb", 1280, 32, 20, even_taps(32), swiglu=True),
        BackboneSpec("vit7b16", "vit_7b_patch16_dinov3", 4096, 40, 32, even_taps(40), swiglu=True),
    ]
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}"
        ) from None


def create_vit(spec: BackboneSpec) -> nn.Module:
    """The timm DINOv3 model for ``spec``, randomly initialised, without a classifier head."""
    kwargs = dict(pretrained=False, num_classes=0, dynamic_img_size=True)
    if spec.timm_name in timm.list_models(spec.timm_name):
        return timm.create_model(spec.timm_name, **kwargs)
    if spec.fallback is not None:
        base, overrides = spec.fallback
        return timm.create_model(base, **kwargs, **overrides)
    raise ConfigError(
        f"backbone {spec.name!r} needs timm's {spec.timm_name!r}, which timm {timm.__version__} lacks; "
        "upgrade timm (>= 1.0.20)"
    )


class DINOv3Backbone(nn.Module):
    """A timm DINOv3 ViT returning the normalised patch-token maps of the tapped blocks.

    Args:
        name: SegDINO backbone name (``vits16``, ``vitb16``, ...).
        taps: 0-based block indices, shallow to deep; repeats are allowed (the same map is
            then used for several pyramid levels).
    """

    def __init__(self, name: str = "vits16", taps: tuple[int, ...] | None = None):
        super().__init__()
        self.spec = get_spec(name)
        self.taps = tuple(taps) if taps is not None else self.spec.default_taps
        if len(self.taps) != 4:
            raise ConfigError(f"the decoder needs exactly 4 taps, got {list(self.taps)}")
        bad = [t for t in self.taps if not 0 <= t < self.spec.depth]
        if bad:
            raise ConfigError(
                f"taps {bad} are outside the {self.spec.depth} blocks of {name} (0-based indices 0..{self.spec.depth - 1})"
            )
        self.vit = create_vit(self.spec)
        # timm returns a repeated index once; map each tap to its position in the unique list.
        self._unique = sorted(set(self.taps))
        self._order = [self._unique.index(t) for t in self.taps]
        self.embed_dim = self.spec.width

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> four (B, C, H/16, W/16) maps, shallow to deep."""
        check_input(x)
        maps = self.vit.forward_intermediates(
            x, indices=self._unique, norm=True, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return [maps[i] for i in self._order]


def check_input(x: torch.Tensor) -> None:
    """Raise :class:`DataError` unless ``x`` is (B, 3, H, W) with H and W multiples of 16."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"model input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise DataError(f"model input must be 4-D (batch, 3, height, width), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise DataError(f"model input must have 3 channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % PATCH_SIZE or w % PATCH_SIZE or h == 0 or w == 0:
        raise DataError(
            f"model input height and width must be positive multiples of {PATCH_SIZE}, got {h}x{w} "
            "(predict() pads or resizes for you)"
        )
