"""Model configuration: everything needed to rebuild and use a model from one file."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORM_TYPES = ("group", "batch")
MAX_IMAGE_SIDE = 8192  # the largest model input side a configuration may ask for
# Normalisation maps pixels in [0, 1] by (x - mean) / std. Beyond these bounds the model's input
# leaves the range any trained network has seen, and near their ends float32 overflows to
# infinity (std 1e-300, mean 1e308): such a config is refused rather than giving NaN masks.
MAX_ABS_MEAN = 1000.0
STD_RANGE = (1e-3, 1000.0)
MAX_SAD_BLOCKS = 16  # residual blocks per SAD step; far past any useful decoder depth


@dataclass
class ModelConfig:
    """Architecture and preprocessing of a SegDINO model.

    Defaults reproduce the paper's model: DINOv3 ViT-S/16, taps at blocks 2, 5, 8, 11,
    decoder width 256, GroupNorm, 256x256 input, ImageNet normalisation.
    """

    backbone: str = "vits16"
    num_classes: int = 1
    decoder_dim: int = 256
    taps: tuple[int, ...] | None = None  # None: the backbone's default taps
    norm: str = "group"
    image_size: tuple[int, int] = (256, 256)  # (height, width) the model is fed
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mask_threshold: int = 127
    class_names: tuple[str, ...] | None = None
    # Ablation switches (off = the paper's model).
    no_tpa: bool = False
    no_sad: bool = False
    sad_blocks: int = 1  # residual blocks in each SAD refinement step (the paper: 1)
    # Volumes: intensity window, slice axis and 2.5D context, filled by the volume pipeline.
    volume: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            if isinstance(self.image_size, int):
                self.image_size = (self.image_size, self.image_size)
            self.image_size = tuple(int(s) for s in self.image_size)
            if self.taps is not None:
                self.taps = tuple(int(t) for t in self.taps)
            self.mean = tuple(float(m) for m in self.mean)
            self.std = tuple(float(s) for s in self.std)
            if self.class_names is not None:
                self.class_names = tuple(str(c) for c in self.class_names)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid model config value: {e}") from None
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1 (1 = binary), got {self.num_classes!r}")
        if not isinstance(self.decoder_dim, int) or isinstance(self.decoder_dim, bool) or self.decoder_dim < 1:
            raise ConfigError(f"decoder_dim must be a positive integer, got {self.decoder_dim!r}")
        if self.norm not in NORM_TYPES:
            raise ConfigError(f"norm must be one of {', '.join(NORM_TYPES)}, got {self.norm!r}")
        if self.norm == "group":
            groups = min(32, self.decoder_dim)
            if self.decoder_dim % groups:
                raise ConfigError(
                    f"decoder_dim must be divisible by its GroupNorm groups ({groups}), got {self.decoder_dim}"
                )
        if len(self.image_size) != 2 or any(s <= 0 or s % 16 or s > MAX_IMAGE_SIDE for s in self.image_size):
            raise ConfigError(f"image_size must be (height, width), multiples of 16 up to {MAX_IMAGE_SIDE}, "
                              f"got {self.image_size}")
        if (len(self.mean) != 3 or len(self.std) != 3
                or not all(math.isfinite(v) for v in self.mean + self.std)
                or any(abs(m) > MAX_ABS_MEAN for m in self.mean)
                or any(not STD_RANGE[0] <= v <= STD_RANGE[1] for v in self.std)):
            raise ConfigError(f"mean and std need 3 values each, mean in -{MAX_ABS_MEAN:g}..{MAX_ABS_MEAN:g} and "
                              f"std in {STD_RANGE[0]:g}..{STD_RANGE[1]:g} (pixels are scaled to 0..1 first), "
                              f"got {self.mean} and {self.std}")
        if (not isinstance(self.mask_threshold, int) or isinstance(self.mask_threshold, bool)
                or not 0 <= self.mask_threshold <= 65535):
            raise ConfigError(f"mask_threshold must be an integer grey level, got {self.mask_threshold!r}")
        for name in ("no_tpa", "no_sad"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if (not isinstance(self.sad_blocks, int) or isinstance(self.sad_blocks, bool)
                or not 1 <= self.sad_blocks <= MAX_SAD_BLOCKS):
            raise ConfigError(f"sad_blocks must be an integer in 1..{MAX_SAD_BLOCKS}, got {self.sad_blocks!r}")
        if self.volume is not None and not isinstance(self.volume, dict):
            raise ConfigError(f"volume settings must be a mapping or null, got {self.volume!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a mapping, got {self.extra!r}")
        if self.class_names is not None:
            expected = 2 if self.num_classes == 1 else self.num_classes
            if len(self.class_names) != expected:
                raise ConfigError(
                    f"class_names needs {expected} names (background included) for num_classes="
                    f"{self.num_classes}, got {len(self.class_names)}"
                )
        if self.no_tpa and self.no_sad:
            raise ConfigError("no_tpa and no_sad cannot both be set: nothing of the decoder would remain")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config fields: {', '.join(unknown)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:  # wrong types in a hand-made or forged config
            raise ConfigError(f"invalid model config: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("model config must be a JSON object")
        return cls.from_dict(d)
