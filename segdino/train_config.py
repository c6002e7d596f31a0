"""Training configuration: recipes, a YAML file and command-line flags map onto one dataclass.

Precedence: recipe defaults < ``--config FILE.yaml`` < flags given on the command line. The
file's keys are the flag names (``image-size`` or ``image_size``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .fileio import read_text
from .options import COUNT, FRACTION, GREY_LEVEL, NON_NEGATIVE, POSITIVE, POSITIVE_INT, SEED, check_numbers

# Training augmentations by name (segdino.data.transforms.RECIPES builds them).
AUGMENTATIONS = ("segdino", "segdino-intensity", "segdino-intensity-rigid", "paper", "none")

RECIPES = ("segdino", "paper")

#: Range of every numeric training option (from flags or a config file alike).
NUMERIC_RULES = {
    "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "decoder_dim": POSITIVE_INT, "num_classes": POSITIVE_INT,
    "val_every": POSITIVE_INT, "steps_per_epoch": POSITIVE_INT, "volume_cache": POSITIVE_INT,
    "sad_blocks": POSITIVE_INT,
    "num_workers": COUNT, "fold": COUNT, "channel": COUNT, "context": COUNT, "seed": SEED,
    "lr": POSITIVE, "grad_clip": POSITIVE, "backbone_lr_scale": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
    "warmup_epochs": NON_NEGATIVE, "save_every": NON_NEGATIVE, "foreground_ratio": FRACTION,
    "mask_threshold": GREY_LEVEL,
}


@dataclass
class TrainConfig:
    data: str | None = None
    out: str | None = None
    recipe: str = "segdino"
    epochs: int = 50
    image_size: tuple[int, int] = (256, 256)
    backbone: str = "vits16"
    decoder_dim: int = 256
    # Decoder ablations (off = the paper's model): see ModelConfig and model_options().
    taps: tuple[int, ...] | None = None
    no_tpa: bool = False
    no_sad: bool = False
    sad_blocks: int = 1
    num_classes: int = 1
    backbone_weights: str | None = None
    init: str | None = None
    freeze_backbone: bool = False
    batch_size: int = 16
    lr: float = 5e-4
    backbone_lr_scale: float | None = None  # None: 0.1 with pretrained weights, else 1.0
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 2.0
    loss: str = "bce_dice"  # bce | bce_dice (ce / ce_dice are the multi-class names)
    dice: str = "auto"  # soft Dice per image or over the batch; auto: batch for patch training
    augment: str = "segdino"  # segdino | paper | none
    precision: str = "auto"  # auto (bf16 on GPU) | bf16 | fp32
    compile: bool = False  # torch.compile the training graph (CUDA with Triton only; ignored elsewhere)
    # Train on the fused decoder (segdino.fused: folded TPA, matrix-product resizes, cached RoPE), the
    # same function and parameters; a run resolves it to on only where it compiles.
    fused_decoder: bool = True
    channels_last: bool = True
    grad_clip: float | None = 1.0
    num_workers: int | None = None  # None: chosen for the device when the run starts (sampling.default_workers)
    cache_images: bool = True
    seed: int = 0
    fold: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    on_nan: str = "stop"  # stop | skip
    on_bad_data: str = "stop"  # stop | skip
    val_every: int = 1
    steps_per_epoch: int | None = None  # cap, for quick experiments and tests
    mask_threshold: int = 127
    channel: int | None = None
    # Volumes (CT/MRI): intensity window, slice axis, 2.5D context, foreground oversampling.
    intensity: str | None = None  # abdomen | liver | lung | bone | ct:LOW,HIGH | mri | percentile:LOW,HIGH
    slice_axis: str = "axial"
    context: int = 1
    foreground_ratio: float = 0.33
    volume_cache: int | None = None  # decoded volumes per worker; None: as many as fit in 2 GiB
    # Patch training (volumes): target in-plane spacing (auto = the training median, or "X,Y" mm),
    # patch size (None = planned), cross-validation folds (made into splits_final.json).
    spacing: str | None = None
    patch_size: tuple[int, int] | None = None
    folds: int | None = None
    tile_overlap: float = 0.5
    # Post-processing recorded in the model: predicted components under this volume (mm^3) are
    # removed; auto: the size that scores best on the validation volumes after training; 0: none.
    min_size: str | float = "auto"
    quiet: bool = False
    save_every: float = 60.0  # seconds between writes of last + resume state (always after the last epoch)
    extra: dict[str, Any] = field(default_factory=dict)

    def _validate_min_size(self) -> None:
        """``min_size``: ``auto`` or a volume in mm^3 >= 0 (a number, or its text from the command line)."""
        value = self.min_size
        if isinstance(value, str) and value.strip().lower() == "auto":
            self.min_size = "auto"
            return
        try:
            number = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            number = float("nan")
        if not (math.isfinite(number) and number >= 0):
            raise ConfigError(f"--min-size must be auto or a volume in mm^3 >= 0, got {value!r}")
        self.min_size = number

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if not 0.0 <= float(self.foreground_ratio) <= 1.0:
            raise ConfigError(f"--foreground-ratio must be between 0 and 1, got {self.foreground_ratio}")
        check_numbers(self, NUMERIC_RULES)
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"--schedule must be cosine or constant, got {self.schedule!r}")
        if self.loss not in ("bce", "bce_dice", "ce", "ce_dice"):
            raise ConfigError(f"--loss must be one of bce, bce_dice, ce, ce_dice, got {self.loss!r}")
        if self.dice not in ("auto", "image", "batch"):
            raise ConfigError(f"--dice must be auto, image or batch, got {self.dice!r}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        self._validate_patches()
        self._validate_decoder()
        self._validate_min_size()
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.on_nan not in ("stop", "skip") or self.on_bad_data not in ("stop", "skip"):
            raise ConfigError("--on-nan and --on-bad-data take stop or skip")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: continue the run, or replace it")
        if self.init and self.backbone_weights:
            raise ConfigError(
                "--init and --backbone-weights contradict each other: --init already brings a backbone"
            )
        if self.init and self.resume:
            raise ConfigError("--init and --resume contradict each other: a resumed run keeps its own weights")
        if self.freeze_backbone and self.backbone_lr_scale not in (None, 0, 0.0) and "backbone_lr_scale" in self.extra.get("explicit", ()):
            raise ConfigError("--freeze-backbone and --backbone-lr-scale contradict each other: a frozen backbone does not learn")
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        try:
            self.image_size = tuple(int(s) for s in self.image_size)
        except (TypeError, ValueError):
            raise ConfigError(f"--image-size must be N or HxW, got {self.image_size!r}") from None
        if len(self.image_size) != 2 or any(s < 16 or s % 16 for s in self.image_size):
            raise ConfigError(f"--image-size must be a multiple of 16 (or HxW), got {self.image_size}")

    def _validate_patches(self) -> None:
        from .resample import parse_spacing

        if self.spacing is not None:
            sp = parse_spacing(self.spacing if isinstance(self.spacing, (str, list, tuple)) else str(self.spacing))
            self.spacing = sp if sp == "auto" else ",".join(f"{v:g}" for v in sp)
        if self.patch_size is not None:
            ps = (self.patch_size, self.patch_size) if isinstance(self.patch_size, int) else self.patch_size
            try:
                ps = tuple(int(v) for v in ps)
            except (TypeError, ValueError):
                raise ConfigError(f"--patch-size must be N or HxW, got {self.patch_size!r}") from None
            if len(ps) != 2 or any(v < 16 or v % 16 for v in ps):
                raise ConfigError(f"--patch-size must be a multiple of 16 (or HxW), got {self.patch_size!r}")
            self.patch_size = ps
        if self.folds is not None and (not isinstance(self.folds, int) or self.folds < 2):
            raise ConfigError(f"--folds must be an integer >= 2, got {self.folds!r}")
        if self.folds is not None and not 0 <= self.fold < self.folds:
            raise ConfigError(f"--fold {self.fold} is not one of the {self.folds} folds 0..{self.folds - 1}")
        if not 0.0 <= float(self.tile_overlap) < 1.0:
            raise ConfigError(f"--tile-overlap must be in [0, 1), got {self.tile_overlap}")

    def _validate_decoder(self) -> None:
        from .config import MAX_SAD_BLOCKS

        if self.taps is not None:
            taps = self.taps.split(",") if isinstance(self.taps, str) else self.taps
            try:
                taps = tuple(int(t) for t in taps)
            except (TypeError, ValueError):
                raise ConfigError(f"--taps must be four block indices such as 2,5,8,11, got {self.taps!r}") from None
            if len(taps) != 4 or any(t < 0 for t in taps):
                raise ConfigError(f"--taps must be four block indices such as 2,5,8,11, got {self.taps!r}")
            self.taps = taps
        if self.sad_blocks > MAX_SAD_BLOCKS:
            raise ConfigError(f"--sad-blocks must be at most {MAX_SAD_BLOCKS}, got {self.sad_blocks}")
        if self.no_tpa and self.no_sad:
            raise ConfigError("--no-tpa and --no-sad cannot both be set: nothing of the decoder would remain")

    def model_options(self) -> dict[str, Any]:
        """The decoder's architecture switches, as :class:`segdino.config.ModelConfig` fields."""
        return dict(taps=self.taps, no_tpa=self.no_tpa, no_sad=self.no_sad, sad_blocks=self.sad_blocks)

    def match_loss_to_classes(self) -> None:
        """``bce``/``ce`` name the same choice; use the one that fits the class count."""
        if self.num_classes > 1:
            self.loss = {"bce": "ce", "bce_dice": "ce_dice"}.get(self.loss, self.loss)
        else:
            self.loss = {"ce": "bce", "ce_dice": "bce_dice"}.get(self.loss, self.loss)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["image_size"] = list(self.image_size)
        if self.taps is not None:
            d["taps"] = list(self.taps)
        if self.patch_size is not None:
            d["patch_size"] = list(self.patch_size)
        return d


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The options a recipe sets; anything else keeps the dataclass default."""
    if recipe == "paper":
        # The authors' code: 256x256, flips + rotation + colour jitter, AdamW 1e-4 constant,
        # batch 4, 50 epochs, BCE only, backbone fine-tuned, fp32.
        return dict(
            epochs=50, image_size=(256, 256), batch_size=4, lr=1e-4, backbone_lr_scale=1.0,
            weight_decay=0.01, schedule="constant", warmup_epochs=0.0, loss="bce", augment="paper",
            precision="fp32", grad_clip=None, channels_last=False, compile=False,
        )
    if recipe == "segdino":
        return dict(
            epochs=50, image_size=(256, 256), batch_size=16, lr=5e-4, backbone_lr_scale=None,
            weight_decay=0.05, schedule="cosine", warmup_epochs=2.0, loss="bce_dice", augment="segdino",
            precision="auto", grad_clip=1.0, channels_last=True, compile=True,
        )
    raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")


#: The optimiser the ``segdino`` recipe trains greyscale 2D images (ultrasound) with: the authors'
#: batch 4 and AdamW at 1e-4, constant, weight decay 0.01 (warm-up, BCE + Dice, clipping and bf16
#: stay the recipe's). Chosen on DDTI's validation split over three seeds: Dice 0.878 against 0.869
#: with the recipe's batch 16 at 5e-4, cosine (docs/RESULTS.md). Colour images keep the recipe's.
GREYSCALE_OPTIMISER = dict(batch_size=4, lr=1e-4, schedule="constant", weight_decay=0.01)


def greyscale_options(cfg: TrainConfig, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the ``segdino`` recipe changes for greyscale 2D images (:data:`GREYSCALE_OPTIMISER`),
    leaving alone every option that was given (flag or config file) or differs from the recipe's.
    ``recorded``: a resumed run's config.yaml, whose values it keeps (a run started before this
    rule goes on with the optimiser it started with)."""
    if cfg.recipe != "segdino":
        return {}
    recipe = recipe_defaults("segdino")
    given = set(cfg.extra.get("explicit", ()))
    chosen = {k: v for k, v in GREYSCALE_OPTIMISER.items() if k not in given and getattr(cfg, k) == recipe[k]}
    return {k: (recorded or {}).get(k, v) for k, v in chosen.items()}


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
#: Facts a run writes into its config.yaml beside the options (what it started from); a config
#: file may hold them, so that a run's config.yaml serves as --config, and they are not options.
RECORD_KEYS = ("pretrained", "backbone_weights_format", "backbone_weights_sha256")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options of a YAML config file, keys as field names; every failure is one :class:`ConfigError`
    naming the file (reading fails as :func:`segdino.fileio.read_text` says)."""
    path = Path(path)
    text = read_text(path, ConfigError, "YAML config", missing="no such config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())[:300]})") from None
    except RecursionError:
        # PyYAML composes nested values recursively; no option needs more than a few levels.
        raise ConfigError(f"{path}: not a YAML config: its values are nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key in RECORD_KEYS:
            continue
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown option {k!r}")
        out[key] = v
    return out


def resolve_config(explicit: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """Recipe defaults, then the config file, then explicit options."""
    from_file = read_config_file(config_file) if config_file else {}
    recipe = explicit.get("recipe") or from_file.get("recipe") or "segdino"
    values = recipe_defaults(recipe)
    if from_file:
        _check_types(from_file, str(config_file))
    values.update(from_file)
    values.update({k: v for k, v in explicit.items() if v is not None})
    values["recipe"] = recipe
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(f"invalid training options: {e}") from None
    given = set(from_file) | {k for k, v in explicit.items() if v is not None}
    cfg.extra["explicit"] = sorted(given)
    for key in ("backbone", "decoder_dim", "num_classes"):
        if key in given:
            cfg.extra[f"{key}_explicit"] = True
    cfg.validate()
    cfg.match_loss_to_classes()
    return cfg


def _check_types(values: dict[str, Any], where: str) -> None:
    """Options from a file arrive untyped: refuse a value of the wrong kind, naming the option."""
    kinds = {
        int: ("epochs", "decoder_dim", "num_classes", "batch_size", "num_workers", "seed", "fold", "val_every",
              "mask_threshold", "context", "volume_cache", "steps_per_epoch", "channel", "folds", "sad_blocks"),
        float: ("lr", "backbone_lr_scale", "weight_decay", "warmup_epochs", "grad_clip", "foreground_ratio",
                "save_every", "tile_overlap"),
        bool: ("freeze_backbone", "compile", "fused_decoder", "channels_last", "cache_images", "resume", "overwrite",
               "quiet", "no_tpa", "no_sad"),
        str: ("data", "out", "recipe", "backbone", "backbone_weights", "init", "schedule", "loss", "dice", "augment",
              "precision", "device", "on_nan", "on_bad_data", "intensity", "slice_axis"),
    }
    for kind, names in kinds.items():
        for name in names:
            if name not in values or values[name] is None:
                continue
            v = values[name]
            ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                values[name], ok = float(v), True
            if not ok:
                raise ConfigError(f"{where}: option {name.replace('_', '-')} expects {kind.__name__}, got {v!r}")


def dump_yaml(cfg: TrainConfig, record: dict[str, Any] | None = None) -> str:
    """The configuration as YAML (readable back with ``--config``), with a run's ``record`` facts."""
    values = cfg.to_dict()
    values.update(record or {})
    return yaml.safe_dump(values, sort_keys=True)
