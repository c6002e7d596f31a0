"""``segdino demo``: the whole tool end to end on generated data, in minutes on a laptop CPU.

It writes a small synthetic dataset whose lesions differ from the background by texture and
shape (not brightness), trains the real SegDINO architecture on it (the small ``vitt16`` DINOv3
backbone at 64x64 px), evaluates the test split at native resolution with the report, predicts
the test images with overlays, and prints the model's test Dice beside the Dice of the best single
global grey-level threshold (either polarity, chosen on the test images themselves).

``--volumes`` does the same with generated whole CT sections holding a few small lesions
(:mod:`segdino.data.whole_scan`) in the nnU-Net layout: patch training at the planned spacing,
sliding-window prediction, label volumes written in the source geometry, and lesion detection F1.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from . import add_device_argument

# Sizes measured to finish within a few minutes on 2 CPU cores.
IMAGES = dict(n_train=200, n_val=24, n_test=40, size=64)
IMAGE_TRAINING = dict(backbone="vitt16", decoder_dim=32, image_size=64, batch_size=16, lr=1e-3, epochs=36,
                      augment="segdino", warmup_epochs=1.0, num_workers=0, quiet=True)
# Whole sections (128 mm across at 1 mm, 2.5 mm slices) with 2-4 lesions of 8-20 mm, mostly empty slices.
# Trained at 0.5 mm (at 1 mm most lesions lie inside one 16 px ViT token and a CPU-sized run learns
# nothing) on 96 px patches: 64 px patches, 32 mm of context, took dark tissue for lesions in the
# same places whatever the seed. Three validation volumes choose the best epoch and the minimum
# component size; the test volumes are predicted with flips averaged (docs/RESULTS.md, "Small
# lesions in whole scans").
VOLUMES = dict(n_train=16, n_val=3, n_test=3, shape=(16, 128, 128), spacing=(2.5, 1.0, 1.0), lesions=(2, 4),
               diameters=(8.0, 20.0))
VOLUME_TRAINING = dict(backbone="vitt16", decoder_dim=32, batch_size=8, lr=3e-3, epochs=100, steps_per_epoch=16,
                       augment="segdino", warmup_epochs=0.5, num_workers=0, context=1, foreground_ratio=0.5,
                       intensity="ct:-200,250", spacing="0.5,0.5", patch_size=(96, 96), val_every=10,
                       tile_overlap=0.25, quiet=True)
VOLUME_TTA = True  # test volumes: the four flips averaged


DESCRIPTION = (
    "Run the whole tool end to end on generated data, in minutes on a laptop CPU: write a small synthetic "
    "dataset (lesions that differ from the background by texture and shape, not brightness), train SegDINO on "
    "it (the small vitt16 DINOv3 backbone at 64x64 px, from random weights), evaluate the test split with the "
    "report, predict the test images with overlays, and print the model's test Dice beside that of the best "
    "single grey-level threshold. --volumes does the same with CT-like volumes in the nnU-Net layout."
)


def register(sub) -> None:
    p = sub.add_parser("demo", help="train, evaluate and predict on generated data (no data needed)",
                       description=DESCRIPTION)
    p.add_argument("--out", default="segdino-demo", help="folder to write (default: ./segdino-demo)")
    p.add_argument("--volumes", action="store_true", help="CT-like volumes instead of 2D images")
    p.add_argument("--epochs", type=int, help="override the training length (a quicker, weaker demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training (default 0)")
    add_device_argument(p)
    p.set_defaults(func=main)


def _prepare(out: Path, overwrite: bool):
    """Hold ``out`` (see :func:`segdino.outputs.open_output`); with ``overwrite`` clear an earlier demo
    there, deleting only what it wrote."""
    from ..errors import ConfigError
    from ..fileio import MANIFEST_NAME
    from ..outputs import LOCK_NAME, open_output

    earlier = out.is_dir() and any(p.name not in (LOCK_NAME, MANIFEST_NAME) for p in out.iterdir())
    if earlier and not overwrite:
        raise ConfigError(f"{out} is not empty; pass --overwrite to replace the demo there, or another --out")
    held = open_output(out)
    if earlier:
        try:
            held.remove_own_files()
        except BaseException:
            held.close()
            raise
    return held


def _train(data: Path, run: Path, settings: dict, args) -> dict:
    from ..train_config import resolve_config
    from ..training import run_training

    opts = dict(settings, data=str(data), out=str(run), device=args.device, seed=args.seed)
    if args.epochs:
        opts["epochs"] = args.epochs
    return run_training(resolve_config(opts))


def demo_images(out: Path, args) -> dict:
    import numpy as np

    from ..data.dataset import SegmentationDataset
    from ..data.synthetic import best_global_threshold_dice, write_dataset
    from ..evaluation import evaluate_model
    from ..inference import load_inference_model
    from ..file_prediction import collect_inputs, predict_files

    t0 = time.perf_counter()
    data = write_dataset(out / "data", IMAGES["n_train"], IMAGES["n_val"], IMAGES["n_test"],
                         size=(IMAGES["size"], IMAGES["size"]), seed=args.seed)
    print(f"data: {data} ({IMAGES['n_train']} train, {IMAGES['n_val']} val, {IMAGES['n_test']} test images, "
          f"{IMAGES['size']}x{IMAGES['size']} px)")
    _train(data, out / "run", IMAGE_TRAINING, args)
    model = load_inference_model(out / "run", device=args.device)
    summary = evaluate_model(model, data, out / "report", split="test", run_dir=out / "run")
    test = SegmentationDataset(data, split="test", image_size=None)
    images = [test.native_image(i) for i in range(len(test))]
    masks = [test.native_mask(i) for i in range(len(test))]
    baseline, threshold, polarity = best_global_threshold_dice(images, masks)
    inputs, _, _ = collect_inputs([test.pairs[i].image for i in range(len(test))])
    predict_files(model, inputs, out / "predictions", overlays=True)
    dice = summary["mean_over_classes"]["dice"]["mean"]
    return {"dice": dice, "baseline": baseline, "baseline_rule": f"grey {'>' if polarity == 'above' else '<'} "
            f"{threshold:g}", "seconds": time.perf_counter() - t0, "cases": len(images),
            "masks_with_lesions": int(sum(bool(np.any(m)) for m in masks))}


def demo_volumes(out: Path, args) -> dict:
    from ..data.synthetic import best_volume_threshold_dice
    from ..data.whole_scan import WHOLE_SCAN_LABELS, write_whole_scan_dataset
    from ..inference import load_inference_model
    from ..sliding_window import ensemble
    from ..volumes import read_volume
    from ..volumes.evaluate import evaluate_volumes
    from ..volumes.predict import predict_volume_files

    t0 = time.perf_counter()
    v = VOLUMES
    data = write_whole_scan_dataset(out / "data", v["n_train"], v["n_val"], v["n_test"], shape=v["shape"],
                                    spacing=v["spacing"], seed=args.seed, lesions=v["lesions"],
                                    diameters=v["diameters"])
    print(f"data: {data} (nnU-Net layout: {v['n_train']} train, {v['n_val']} val, {v['n_test']} test whole "
          f"sections of {v['shape']} voxels at {v['spacing']} mm, {v['lesions'][0]}-{v['lesions'][1]} lesions "
          f"of {v['diameters'][0]:g}-{v['diameters'][1]:g} mm each, most slices empty)")
    _train(data, out / "run", VOLUME_TRAINING, args)
    model = ensemble([load_inference_model(out / "run", device=args.device)], tta=VOLUME_TTA)
    # Predicted once, as a user would (the run's minimum component size applied), then scored.
    predict_volume_files(model, [data / "imagesTs"], out / "predictions", tile_overlap=VOLUME_TRAINING["tile_overlap"])
    summary = evaluate_volumes(data, out / "report", predictions=out / "predictions", split="test",
                               run_dir=out / "run")
    tests = sorted((data / "labelsTs").glob("*.nii.gz"))
    vols = [read_volume(data / "imagesTs" / p.name.replace(".nii.gz", "_0000.nii.gz")).array for p in tests]
    labels = [read_volume(p).array for p in tests]
    baseline, threshold, polarity = best_volume_threshold_dice(vols, labels, label=WHOLE_SCAN_LABELS["lesion"])
    dice = summary["mean_over_classes"]["dice"]["mean"]
    f1 = next(iter(summary["lesions"].values()))["detection_f1"]
    return {"dice": dice, "baseline": baseline, "baseline_rule": f"HU {'>' if polarity == 'above' else '<'} "
            f"{threshold:g}", "seconds": time.perf_counter() - t0, "cases": len(tests), "lesion_f1": f1}


def main(args) -> int:
    from ..options import POSITIVE_INT, SEED, check_numbers

    check_numbers(args, {"epochs": POSITIVE_INT, "seed": SEED})
    out = Path(args.out)
    with _prepare(out, args.overwrite):
        result = demo_volumes(out, args) if args.volumes else demo_images(out, args)
    what = "lesion Dice per volume" if args.volumes else "Dice per image"
    print()
    print(f"SegDINO (vitt16, trained here):    test {what} {result['dice']:.3f}")
    if "lesion_f1" in result:
        print(f"                                   lesion detection F1 {result['lesion_f1']:.3f}")
    print(f"best global threshold ({result['baseline_rule']}): test {what} {result['baseline']:.3f}"
          "  (chosen on the test set itself)")
    print(f"report:      {out / 'report' / 'report.md'}")
    print(f"predictions: {out / 'predictions'}")
    print(f"model:       {out / 'run' / 'best.safetensors'}  ({result['seconds']:.0f} s in all)")
    return 0
