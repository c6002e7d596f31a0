"""Real-data runs: a compact dataset copy that travels to a GPU machine, then train + test.

Two steps::

    # 1. compact copy: train/val images resized to SIZE x SIZE JPEG, masks PNG; the test
    #    split stays at its released resolution (it is scored there)
    python benchmarks/realdata.py pack --data ../shared/data/kvasir-seg --out .data/kvasir-seg --size 320

    # 2. train one recipe and seed, evaluate `test` at native resolution, write a results JSON
    python benchmarks/realdata.py run --data .data/kvasir-seg --recipe segdino --seed 0 \\
        --epochs 50 --out runs/kvasir-seg/segdino-s0 --json results/kvasir-seg-segdino-s0.json

    # 3. a decoder ablation by name (ABLATIONS), on top of the recipe
    python benchmarks/realdata.py run --data .data/ddti --recipe segdino --seed 0 --ablation no_tpa \\
        --out runs/ddti-segdino-s0-no_tpa --json results/gpu/ddti-segdino-s0-no_tpa.json

Validation (model selection) happens on the compact copy's `val` images; the `test` split is
never seen before the final evaluation. Each results JSON records the ablation's name, the
model's parameters and its GFLOPs per 256x256 image (`model_cost`, cached in
results/model_costs.json by configuration).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Decoder ablations by name: (what it is, the training options it sets on top of the recipe).
#: ``taps="last"`` stands for the backbone's last block four times.
ABLATIONS: dict[str, tuple[str, dict]] = {
    "full": ("the full model, D=256", {"decoder_dim": 256}),
    "no_tpa": ("no token pyramid: every level at stride 16", {"no_tpa": True}),
    "no_tpa_wide": ("no_tpa with D=512 and two residual blocks per SAD step: capacity without scale",
                    {"no_tpa": True, "decoder_dim": 512, "sad_blocks": 2}),
    "no_sad": ("no scale-aware refinement: levels merged by resize-and-add alone", {"no_sad": True}),
    "d128": ("decoder width D=128", {"decoder_dim": 128}),
    "d512": ("decoder width D=512", {"decoder_dim": 512}),
    "last_tap": ("the last block's output as all four taps", {"taps": "last"}),
}
COSTS = ROOT / "results" / "model_costs.json"
COST_SIZE = (256, 256)  # costs are per image at the recipes' input size
# The training options that shape the model, with the values a config without them means.
MODEL_DEFAULTS = {"backbone": "vits16", "decoder_dim": 256, "taps": None, "no_tpa": False, "no_sad": False,
                  "sad_blocks": 1}


def ablation_options(name: str, backbone: str) -> dict:
    """The training options of ablation ``name`` for ``backbone`` (its last block's index filled in)."""
    from segdino.backbone import get_spec

    if name not in ABLATIONS:
        raise SystemExit(f"--ablation must be one of {', '.join(ABLATIONS)}, got {name!r}")
    opts = dict(ABLATIONS[name][1])
    if opts.get("taps") == "last":
        opts["taps"] = (get_spec(backbone).depth - 1,) * 4
    return opts


def model_cost(config: dict, cache: Path | None = COSTS) -> dict:
    """Parameters and GFLOPs per 256x256 image of the model a training config builds.

    ``config``: a run's training config (a dict; only the keys of ``MODEL_DEFAULTS`` count, absent
    or null ones are the defaults). GFLOPs from torch's flop counter on one CPU forward pass;
    results are kept in ``cache`` (JSON, keyed by the model's options) so each variant is counted once.
    """
    model_opts = {k: d if config.get(k) is None else config[k] for k, d in MODEL_DEFAULTS.items()}
    model_opts = {k: list(v) if isinstance(v, tuple) else v for k, v in model_opts.items()}
    key = json.dumps({**model_opts, "image_size": list(COST_SIZE)}, sort_keys=True)
    known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key in known:
        return known[key]
    import torch

    from segdino.benchmark import count_gflops
    from segdino.model import build_model

    backbone = model_opts.pop("backbone")
    if model_opts["taps"] is not None:
        model_opts["taps"] = tuple(model_opts["taps"])
    model = build_model(backbone, image_size=COST_SIZE, **model_opts).eval()
    counts = model.count_parameters()
    cost = {"params": counts["total"], "params_decoder": counts["decoder"],
            "gflops": round(count_gflops(model, torch.zeros(1, 3, *COST_SIZE)), 2)}
    if cache is not None:
        known[key] = cost
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    return cost


def pack(data: Path, out: Path, size: int, quality: int = 92) -> dict:
    """A compact copy of dataset ``data`` in ``out``: train/val at ``size`` x ``size`` (JPEG of
    ``quality``, masks PNG), test as released; returns the split counts and the bytes written."""
    from segdino.data.imageio import read_image
    from segdino.data.layouts import find_pairs
    from segdino.data.masks import read_mask
    from segdino.data.splits import resolve_splits

    pairs = find_pairs(data)
    splits = resolve_splits(data, pairs)
    where = {cid: name for name in ("train", "val", "test") for cid in splits[name]}
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    counts = {"train": 0, "val": 0, "test": 0}
    copied = 0
    for p in pairs:
        split = where.get(p.case_id)
        if split is None:
            continue
        image = read_image(p.image)
        mask = read_mask(p.masks, 1)
        name = Path(p.case_id).name
        if split == "test":  # scored at its own size: keep the pixels as released
            Image.fromarray(image).save(out / "images" / f"{name}.png", optimize=True) if p.image.suffix.lower() not in (
                ".jpg", ".jpeg") else shutil.copyfile(p.image, out / "images" / f"{name}{p.image.suffix.lower()}")
            Image.fromarray(mask * 255).save(out / "masks" / f"{name}.png", optimize=True)
        else:
            if _is_jpeg_of_size(p.image, image, size):  # a second lossy encoding would only lose detail
                shutil.copyfile(p.image, out / "images" / f"{name}.jpg")
                copied += 1
            else:
                img = Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=None)
                img.save(out / "images" / f"{name}.jpg", quality=quality)
            Image.fromarray(mask * 255).resize((size, size), Image.NEAREST).save(out / "masks" / f"{name}.png", optimize=True)
        counts[split] += 1
    ids = {k: [Path(c).name for c in splits[k]] for k in ("train", "val", "test")}
    (out / "splits.json").write_text(json.dumps(ids, indent=1))
    kept = f"; {copied} already {size}x{size} JPEG copied as released" if copied else ""
    (out / "SOURCE.txt").write_text(
        f"Compact copy of {data.name}: train/val resized to {size}x{size} (JPEG q{quality}{kept}, masks PNG, "
        f"nearest); test as released. Splits: {splits.source}.\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"counts": counts, "bytes": total, "copied_jpeg": copied}


def _is_jpeg_of_size(path: Path, image: np.ndarray, size: int) -> bool:
    """Whether an image file (read as ``image``) is already a ``size`` x ``size`` JPEG, packed byte for byte."""
    return path.suffix.lower() in (".jpg", ".jpeg") and image.shape[:2] == (size, size)


def commit_hash() -> str:
    import os

    if os.environ.get("SEGDINO_COMMIT"):  # a copied working tree may carry a stale .git
        return os.environ["SEGDINO_COMMIT"]
    try:
        # "-dirty" when tracked files differ from that commit: uncommitted changes, or a copied
        # working tree whose .git is older than its files (the GPU machine's copy).
        return subprocess.check_output(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=ROOT,
                                       text=True).strip()
    except Exception:
        return "unknown"


def run(args, argv: list[str] | None = None) -> dict:
    """Train one recipe/seed/ablation, score ``test`` and return (and write to ``--json``) the results.

    ``argv``: this script's arguments, recorded as the run's command.
    """
    import shlex

    import torch

    from segdino.evaluation import evaluate_model
    from segdino.inference import load_inference_model
    from segdino.train_config import resolve_config
    from segdino.training import run_training

    resuming = args.resume and (Path(args.out) / "resume" / "state.safetensors").is_file()
    opts = dict(data=str(args.data), out=str(args.out), recipe=args.recipe, seed=args.seed, epochs=args.epochs,
                backbone=args.backbone, device=args.device, num_workers=args.num_workers, quiet=True,
                **({"resume": True} if resuming else {"overwrite": True}))
    for extra in ("batch_size", "lr", "freeze_backbone", "compile", "fused_decoder", "steps_per_epoch", "image_size",
                  "decoder_dim", "augment", "loss", "schedule", "weight_decay", "precision"):
        v = getattr(args, extra)
        if v is not None:
            opts[extra] = v
    ablation = ablation_options(args.ablation, args.backbone) if args.ablation else {}
    clash = sorted(k for k in ablation if opts.get(k) is not None)
    if clash:
        raise SystemExit(f"--ablation {args.ablation} sets {', '.join('--' + k.replace('_', '-') for k in clash)}; "
                         "leave it out")
    opts.update(ablation)
    cfg = resolve_config(opts)
    cost = model_cost(cfg.to_dict(), args.costs)
    t0 = time.perf_counter()
    summary = run_training(cfg)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    # The plain model for scoring: compiling for one evaluation costs more than it saves.
    model = load_inference_model(Path(args.out) / "best.safetensors", device=args.device, fast=False)
    # Beside the run folder, not in it: a run cut during this scoring resumes into its folder, which
    # `segdino train --resume` keeps to the files training writes.
    result = evaluate_model(model, args.data, Path(f"{args.out}-test"), split="test", batch_size=32,
                            run_dir=args.out)
    eval_s = time.perf_counter() - t1
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = {
        "dataset": Path(args.data).name, "recipe": args.recipe, "seed": args.seed, "epochs": args.epochs,
        "backbone": args.backbone, "pretrained": False, "freeze_backbone": bool(args.freeze_backbone),
        "commit": commit_hash(), "gpu": gpu, "torch": torch.__version__,
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "epoch_seconds_total": round(sum(float(r.split(",")[5]) for r in
                                         (Path(args.out) / "log.csv").read_text().splitlines()[1:]), 1),
        "best_epoch": summary["best_epoch"], "best_val_dice": summary["best_score"],
        "ablation": args.ablation or "full", "params": cost["params"], "params_decoder": cost["params_decoder"],
        "gflops_per_image": cost["gflops"], "gflops_at": f"{COST_SIZE[0]}x{COST_SIZE[1]}, torch FlopCounterMode",
        "command": "python benchmarks/realdata.py " + shlex.join(argv) if argv else None,
        "config": cfg.to_dict(), "test": {k: v for k, v in result.items() if k not in ("outputs",)},
        "log": (Path(args.out) / "log.csv").read_text(),
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return out


def plot(logs: list[Path], out: Path) -> None:
    """Validation Dice and training loss per epoch of several runs (their log.csv files), one figure."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for log in logs:
        with open(log) as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
        label = log.name.replace(".log.csv", "").replace("log.csv", log.parent.name)
        ax1.plot(epochs, [float(r["val_dice"]) for r in rows], label=label)
        ax2.plot(epochs, [float(r["train_loss"]) for r in rows], label=label)
    ax1.set(xlabel="epoch", ylabel="validation Dice")
    ax2.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (the docs' commands are checked against it)."""
    from segdino.train_config import AUGMENTATIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--size", type=int, default=320)
    a.add_argument("--quality", type=int, default=92, help="JPEG quality of the resized train/val images")
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--json", type=Path)
    r.add_argument("--recipe", default="segdino", choices=["segdino", "paper"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--epochs", type=int, default=50)
    r.add_argument("--backbone", default="vits16")
    r.add_argument("--device", default="auto")
    r.add_argument("--num-workers", type=int, default=6)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--lr", type=float)
    r.add_argument("--steps-per-epoch", type=int)
    r.add_argument("--image-size", type=int)
    r.add_argument("--decoder-dim", type=int)
    r.add_argument("--freeze-backbone", action="store_true", default=None)
    r.add_argument("--compile", action="store_true", default=None)
    r.add_argument("--fused-decoder", action=argparse.BooleanOptionalAction, default=None,
                   help="train on the fused decoder (the default when compiling on CUDA) or the model's own modules")
    r.add_argument("--augment", choices=AUGMENTATIONS)
    r.add_argument("--loss")
    r.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    r.add_argument("--schedule", choices=["cosine", "constant"])
    r.add_argument("--weight-decay", type=float)
    r.add_argument("--ablation", choices=list(ABLATIONS),
                   help="a decoder ablation by name: " + "; ".join(f"{k}: {v[0]}" for k, v in ABLATIONS.items()))
    r.add_argument("--costs", type=Path, default=COSTS, help="cache of the models' parameters and GFLOPs")
    r.add_argument("--resume", action="store_true", help="continue the run in --out if it has a resume state")
    g = sub.add_parser("plot")
    g.add_argument("logs", type=Path, nargs="+")
    g.add_argument("--out", type=Path, required=True)
    return p


def main() -> None:
    args = build_parser().parse_args()
    if args.cmd == "plot":
        plot(args.logs, args.out)
        return
    if args.cmd == "pack":
        print(json.dumps(pack(args.data, args.out, args.size, args.quality)))
    else:
        res = run(args, sys.argv[1:])
        dice = res["test"]["mean_over_classes"]["dice"]["mean"]
        print(json.dumps({k: res[k] for k in ("dataset", "recipe", "seed", "train_seconds", "best_val_dice")}),
              f"test Dice {dice:.4f}")


if __name__ == "__main__":
    main()
