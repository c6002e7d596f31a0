"""Real-data runs: a compact dataset copy that travels to a GPU machine, then train + test.

Two steps::

    # 1. compact copy: train/val images resized to SIZE x SIZE JPEG, masks PNG; the test
    #    split stays at its released resolution (it is scored there)
    python benchmarks/realdata.py pack --data ../shared/data/kvasir-seg --out .data/kvasir-seg --size 320

    # 2. train one recipe and seed, evaluate `test` at native resolution, write a results JSON
    python benchmarks/realdata.py run --data .data/kvasir-seg --recipe segdino --seed 0 \\
        --epochs 50 --out runs/kvasir-seg/segdino-s0 --json results/kvasir-seg-segdino-s0.json

Validation (model selection) happens on the compact copy's `val` images; the `test` split is
never seen before the final evaluation.
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


def pack(data: Path, out: Path, size: int, quality: int = 92) -> dict:
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
            img = Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=None)
            img.save(out / "images" / f"{name}.jpg", quality=quality)
            Image.fromarray(mask * 255).resize((size, size), Image.NEAREST).save(out / "masks" / f"{name}.png", optimize=True)
        counts[split] += 1
    ids = {k: [Path(c).name for c in splits[k]] for k in ("train", "val", "test")}
    (out / "splits.json").write_text(json.dumps(ids, indent=1))
    (out / "SOURCE.txt").write_text(
        f"Compact copy of {data.name}: train/val resized to {size}x{size} (JPEG q{quality}, masks PNG, "
        f"nearest); test as released. Splits: {splits.source}.\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"counts": counts, "bytes": total}


def commit_hash() -> str:
    import os

    if os.environ.get("SEGDINO_COMMIT"):  # a copied working tree may carry a stale .git
        return os.environ["SEGDINO_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:
        return "unknown"


def run(args) -> dict:
    import torch

    from segdino.evaluation import evaluate_model
    from segdino.inference import load_inference_model
    from segdino.train_config import resolve_config
    from segdino.training import run_training

    resuming = args.resume and (Path(args.out) / "resume" / "state.safetensors").is_file()
    opts = dict(data=str(args.data), out=str(args.out), recipe=args.recipe, seed=args.seed, epochs=args.epochs,
                backbone=args.backbone, device=args.device, num_workers=args.num_workers, quiet=True,
                **({"resume": True} if resuming else {"overwrite": True}))
    for extra in ("batch_size", "lr", "freeze_backbone", "compile", "steps_per_epoch", "image_size", "decoder_dim",
                  "augment", "loss", "schedule", "weight_decay"):
        v = getattr(args, extra)
        if v is not None:
            opts[extra] = v
    cfg = resolve_config(opts)
    t0 = time.perf_counter()
    summary = run_training(cfg)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    # The plain model for scoring: compiling for one evaluation costs more than it saves.
    model = load_inference_model(Path(args.out) / "best.safetensors", device=args.device, fast=False)
    result = evaluate_model(model, args.data, Path(args.out) / "report", split="test", batch_size=32,
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--size", type=int, default=320)
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
    r.add_argument("--augment", choices=["segdino", "paper", "none"])
    r.add_argument("--loss")
    r.add_argument("--schedule", choices=["cosine", "constant"])
    r.add_argument("--weight-decay", type=float)
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
        print(json.dumps(pack(args.data, args.out, args.size)))
    else:
        res = run(args)
        dice = res["test"]["mean_over_classes"]["dice"]["mean"]
        print(json.dumps({k: res[k] for k in ("dataset", "recipe", "seed", "train_seconds", "best_val_dice")}),
              f"test Dice {dice:.4f}")


if __name__ == "__main__":
    main()
