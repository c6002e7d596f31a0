"""``segdino train --data DIR --out RUN_DIR``."""

from __future__ import annotations

import argparse

from . import add_device_argument


def _size(text: str):
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    return vals[0] if len(vals) == 1 else tuple(vals)


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def defaults_text(name: str) -> str:
    """`` (default X)``, or `` (segdino: X, paper: Y)`` where the recipes differ, from the recipes themselves."""
    from ..train_config import RECIPES, TrainConfig, recipe_defaults

    base = TrainConfig()
    values = {r: recipe_defaults(r).get(name, getattr(base, name)) for r in RECIPES}
    shown = {r: _shown(v) for r, v in values.items()}
    if all(v is None for v in values.values()):
        return ""
    if len(set(shown.values())) == 1:
        return f" (default {next(iter(shown.values()))})"
    return " (" + ", ".join(f"{r}: {v}" for r, v in shown.items()) + ")"


def register(sub) -> None:
    from ..train_config import AUGMENTATIONS

    p = sub.add_parser("train", help="train a model on a dataset folder",
                       description="Train SegDINO. Recipe defaults < --config file < flags; where the two "
                                   "recipes differ, each option's help shows both defaults. "
                                   "Runs unchanged under torchrun; --gpus N starts N processes here.")

    def a(*flags, help: str, default_of: str | None = None, **kw):
        name = default_of or flags[0].lstrip("-").replace("-", "_")
        p.add_argument(*flags, help=help + defaults_text(name), **kw)

    p.add_argument("--data", help="dataset folder (2D images or CT/MRI volumes)")
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--recipe", choices=["segdino", "paper"], default=None,
                   help="segdino (default: ours; greyscale 2D images train with the authors' batch 4, AdamW 1e-4 "
                        "constant, weight decay 0.01 where those are not given) or paper (the authors' code: "
                        "256 px, batch 4, AdamW 1e-4, BCE, fp32)")
    p.add_argument("--config", help="YAML file whose keys are these options' names (a run's config.yaml works)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as YAML (usable as --config) and exit without training")
    a("--epochs", type=int, help="passes over the training split")
    a("--image-size", type=_size, help="model input, N or HxW, multiples of 16")
    a("--backbone", help="vitt16, vits16, vits16plus, vitb16, vitl16, vith16plus, vit7b16")
    a("--decoder-dim", type=int, help="decoder width D (channels of TPA and SAD)")
    a("--taps", help="ablation: the four backbone blocks the decoder reads, 0-based, shallow to deep "
                     "(e.g. 11,11,11,11: the last block four times); unset: the backbone's default")
    a("--no-tpa", action="store_true", default=None, help="ablation: no token pyramid, every level at stride 16")
    a("--no-sad", action="store_true", default=None,
      help="ablation: no scale-aware refinement, levels merged by resize-and-add alone")
    a("--sad-blocks", type=int, help="residual blocks in each SAD refinement step (ablation: more decoder capacity)")
    a("--num-classes", type=int, help="1 = binary; K >= 2 = K classes with background; volumes: from dataset.json")
    a("--backbone-weights", help="pretrained DINOv3 backbone file (Meta .pth, Hugging Face or timm; docs/WEIGHTS.md); "
                                 "without it or --init the backbone starts from random weights")
    a("--init", help="whole model to fine-tune (ours or the authors'); new head if classes differ")
    a("--freeze-backbone", action="store_true", default=None,
      help="keep the backbone fixed and train the decoder only")
    a("--batch-size", type=int, help="samples per step, per process")
    a("--lr", type=float, help="decoder learning rate (AdamW)")
    a("--backbone-lr-scale", type=float,
      help="backbone lr / decoder lr; unset: 0.1 from pretrained weights, 1 from random ones")
    a("--weight-decay", type=float, help="AdamW weight decay")
    a("--schedule", choices=["cosine", "constant"], help="learning-rate schedule after warm-up")
    a("--warmup-epochs", type=float, help="epochs of linear learning-rate warm-up")
    a("--loss", choices=["bce", "bce_dice", "ce", "ce_dice"],
      help="training loss (bce and ce name the same choice for binary and multi-class tasks)")
    a("--dice", choices=["auto", "image", "batch"],
      help="soft Dice per image or one over the whole batch (nnU-Net's batch Dice); auto: batch for "
           "patch training, where most patches are empty, per image otherwise")
    a("--augment", choices=AUGMENTATIONS,
      help="training augmentation; segdino trains volumes with segdino-intensity (no colour jitter; "
           "-rigid drops its zoom and shift) and greyscale images with paper")
    a("--precision", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on GPU, fp32 elsewhere")
    a("--compile", action="store_true", default=None,
      help="torch.compile the training graph (CUDA with Triton only; off elsewhere, and config.yaml says so)")
    a("--fused-decoder", action=argparse.BooleanOptionalAction, default=None,
      help="with --compile, train on the fused decoder (folded TPA, matrix-product resizes, cached RoPE): "
           "the same function and checkpoints, faster; --no-fused-decoder trains the model's own modules")
    a("--num-workers", type=int, help="DataLoader processes preparing batches (0: in the training process; "
                                      "default: 2 on the CPU, on a GPU one per CPU core less two, 2 to 12)")
    a("--seed", type=int, help="seed of the weights, the sample order, the augmentation and seeded splits")
    a("--fold", type=int, help="fold of an nnU-Net splits_final.json")
    a("--val-every", type=int, help="validate every N epochs (and after the last)")
    a("--steps-per-epoch", type=int, help="cap the steps of each epoch")
    a("--resume", action="store_true", default=None, help="continue the run in --out")
    a("--overwrite", action="store_true", default=None, help="replace the run in --out")
    a("--save-every", type=float, help="seconds between saves of last + resume state (0 = every epoch)")
    a("--on-nan", choices=["stop", "skip"], help="a non-finite loss stops training or skips the step")
    a("--on-bad-data", choices=["stop", "skip"], help="an unreadable sample stops training or is skipped")
    v = p.add_argument_group("volumes (CT/MRI)")

    def av(*flags, help: str, **kw):
        name = flags[0].lstrip("-").replace("-", "_")
        v.add_argument(*flags, help=help + defaults_text(name), **kw)

    av("--channel", type=int, help="modality of a multi-modal volume dataset")
    av("--intensity", help="CT window abdomen|liver|lung|bone|ct:LOW,HIGH, or mri|percentile:LOW,HIGH; "
                           "CT datasets need one")
    av("--slice-axis", choices=["axial", "coronal", "sagittal", "0", "1", "2"],
       help="the slices the model sees (anatomical names follow the volume's orientation; 0-2: array axes)")
    av("--context", type=int, help="2.5D: neighbour slices i-k and i+k as the other channels")
    av("--foreground-ratio", type=float, help="share of each batch drawn from slices with the rarest class")
    av("--volume-cache", type=int,
       help="decoded volumes kept in memory per worker (default: as many as fit in 2 GiB)")
    av("--spacing", help="patch training at this in-plane spacing: auto (the training median) or X,Y mm")
    av("--patch-size", type=_size, help="patch training: N or HxW px at the target spacing "
                                        "(unset: planned from the data); the model's input size")
    av("--folds", type=int, help="make (once, seeded, by patient) and use K cross-validation folds "
                                 "in DATA/splits_final.json; --fold picks one")
    av("--tile-overlap", type=float, help="sliding-window overlap in validation")
    av("--min-size", metavar="MM3|auto",
       help="post-processing recorded in the model: predicted components under MM3 cubic millimetres "
            "are removed; auto: the size that scores best (mean of Dice and lesion F1) on the validation "
            "volumes after training; 0: none")
    p.add_argument("--gpus", type=int, help="start this many training processes on this machine (torchrun)")
    a("--quiet", action="store_true", default=None,
      help="no progress bars: plain lines (one per epoch, or per minute), as when output is not a terminal")
    add_device_argument(p)
    p.set_defaults(func=main, device=None)


OPTION_NAMES = [
    "data", "out", "recipe", "epochs", "image_size", "backbone", "decoder_dim", "taps", "no_tpa", "no_sad",
    "sad_blocks", "num_classes",
    "backbone_weights", "init", "freeze_backbone", "batch_size", "lr", "backbone_lr_scale", "weight_decay",
    "schedule", "warmup_epochs", "loss", "augment", "precision", "compile", "fused_decoder", "num_workers", "seed", "fold",
    "val_every", "channel", "resume", "overwrite", "on_nan", "on_bad_data", "steps_per_epoch", "device",
    "intensity", "slice_axis", "context", "foreground_ratio", "volume_cache", "quiet", "save_every", "min_size",
    "spacing", "patch_size", "folds", "tile_overlap",
]


def _without_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return out


def resolved_config_text(args) -> str:
    """``--print-config``: the configuration the options resolve to, as YAML readable by ``--config``."""
    from ..inference import resolve_device
    from ..train_config import dump_yaml, resolve_config
    from ..training import resolve_runtime

    cfg = resolve_config(_explicit(args), args.config)
    resolve_runtime(cfg, resolve_device(cfg.device))
    return dump_yaml(cfg)


def _explicit(args) -> dict:
    return {k: getattr(args, k) for k in OPTION_NAMES if getattr(args, k, None) is not None}


def train_from_args(args) -> dict:
    """Train as the command does (one process); returns the run's summary and file paths."""
    from ..train_config import resolve_config
    from ..training import run_training

    return run_training(resolve_config(_explicit(args), args.config))


def main(args) -> int:
    from ..errors import ConfigError
    from ..training import launch_local

    if args.print_config:
        print(resolved_config_text(args), end="")
        return 0
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
        if args.gpus > 1:
            argv = list(args.argv)
            argv = argv[argv.index("train") + 1 :]
            return launch_local(args.gpus, _without_gpus(argv))
    summary = train_from_args(args)
    if summary["has_validation"]:
        print(f"best validation Dice {summary['best_score']:.4f} at epoch {summary['best_epoch']}; "
              f"model: {summary['out']}/best.safetensors")
    else:
        print(f"no validation split: best = lowest training loss (epoch {summary['best_epoch']}); "
              f"model: {summary['out']}/best.safetensors")
    return 0
