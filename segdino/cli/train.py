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


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model on a dataset folder",
                       description="Train SegDINO. Recipe defaults < --config file < flags. "
                                   "Runs unchanged under torchrun; --gpus N starts N processes here.")
    a = p.add_argument
    a("--data", help="dataset folder (2D images or CT/MRI volumes)")
    a("--out", help="run folder to write")
    a("--recipe", choices=["segdino", "paper"], default=None,
      help="segdino (default: ours) or paper (the authors' code: 256 px, batch 4, AdamW 1e-4, BCE, fp32)")
    a("--config", help="YAML file whose keys are these flags' names")
    a("--epochs", type=int)
    a("--image-size", type=_size, help="N or HxW, multiples of 16")
    a("--backbone", help="vitt16, vits16, vits16plus, vitb16, vitl16, vith16plus, vit7b16")
    a("--decoder-dim", type=int)
    a("--num-classes", type=int, help="1 = binary; K >= 2 = K classes with background")
    a("--backbone-weights", help="pretrained DINOv3 backbone file (Meta .pth, Hugging Face or timm)")
    a("--init", help="whole model to fine-tune (ours or the authors'); new head if classes differ")
    a("--freeze-backbone", action="store_true", default=None)
    a("--batch-size", type=int, help="per process")
    a("--lr", type=float, help="decoder learning rate")
    a("--backbone-lr-scale", type=float, help="backbone lr / decoder lr (default 0.1 pretrained, 1 random)")
    a("--weight-decay", type=float)
    a("--schedule", choices=["cosine", "constant"])
    a("--warmup-epochs", type=float)
    a("--loss", choices=["bce", "bce_dice", "ce", "ce_dice"])
    a("--augment", choices=["segdino", "segdino-intensity", "paper", "none"],
      help="segdino (volumes: segdino-intensity, no colour jitter), paper or none")
    a("--precision", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on GPU, fp32 elsewhere")
    a("--compile", action="store_true", default=None, help="torch.compile the training graph")
    a("--num-workers", type=int)
    a("--seed", type=int)
    a("--fold", type=int)
    a("--val-every", type=int, help="validate every N epochs (and after the last)")
    a("--steps-per-epoch", type=int, help="cap the steps of each epoch")
    a("--resume", action="store_true", default=None, help="continue the run in --out")
    a("--overwrite", action="store_true", default=None, help="replace the run in --out")
    a("--save-every", type=float, help="seconds between saves of last + resume state (default 60; 0 = every epoch)")
    a("--on-nan", choices=["stop", "skip"], help="a non-finite loss stops training (default) or skips the step")
    a("--on-bad-data", choices=["stop", "skip"], help="an unreadable sample stops (default) or is skipped")
    v = p.add_argument_group("volumes (CT/MRI)")
    v.add_argument("--channel", type=int, help="modality of a multi-modal volume dataset")
    v.add_argument("--intensity", help="CT window abdomen|liver|lung|bone|ct:LOW,HIGH, or mri|percentile:LOW,HIGH")
    v.add_argument("--slice-axis", choices=["axial", "coronal", "sagittal", "0", "1", "2"])
    v.add_argument("--context", type=int, help="2.5D: neighbour slices i-k and i+k as the other channels")
    v.add_argument("--foreground-ratio", type=float, help="share of each batch drawn from slices with the rarest class")
    v.add_argument("--volume-cache", type=int, help="decoded volumes kept in memory per worker")
    v.add_argument("--spacing", help="patch training at this in-plane spacing: auto (the training median) or X,Y mm")
    v.add_argument("--patch-size", type=_size, help="patch training: N or HxW px at the target spacing "
                   "(default planned from the data); the model's input size")
    v.add_argument("--folds", type=int, help="make (once, seeded, by patient) and use K cross-validation folds "
                   "in DATA/splits_final.json; --fold picks one")
    v.add_argument("--tile-overlap", type=float, help="sliding-window overlap in validation (default 0.5)")
    a("--gpus", type=int, help="start this many training processes on this machine (torchrun)")
    a("--quiet", action="store_true", default=None, help="no progress bars")
    add_device_argument(p)
    p.set_defaults(func=main, device=None)


OPTION_NAMES = [
    "data", "out", "recipe", "epochs", "image_size", "backbone", "decoder_dim", "num_classes",
    "backbone_weights", "init", "freeze_backbone", "batch_size", "lr", "backbone_lr_scale", "weight_decay",
    "schedule", "warmup_epochs", "loss", "augment", "precision", "compile", "num_workers", "seed", "fold",
    "val_every", "channel", "resume", "overwrite", "on_nan", "on_bad_data", "steps_per_epoch", "device",
    "intensity", "slice_axis", "context", "foreground_ratio", "volume_cache", "quiet", "save_every",
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


def main(args) -> int:
    from ..errors import ConfigError
    from ..train_config import resolve_config
    from ..training import launch_local, run_training

    explicit = {k: getattr(args, k) for k in OPTION_NAMES if getattr(args, k, None) is not None}
    cfg = resolve_config(explicit, args.config)
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
        if args.gpus > 1:
            argv = list(args.argv)
            argv = argv[argv.index("train") + 1 :]
            return launch_local(args.gpus, _without_gpus(argv))
    summary = run_training(cfg)
    if summary["has_validation"]:
        print(f"best validation Dice {summary['best_score']:.4f} at epoch {summary['best_epoch']}; "
              f"model: {summary['out']}/best.safetensors")
    else:
        print(f"no validation split: best = lowest training loss (epoch {summary['best_epoch']}); "
              f"model: {summary['out']}/best.safetensors")
    return 0
