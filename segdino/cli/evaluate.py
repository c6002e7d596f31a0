"""``segdino evaluate``: score a model (or existing prediction masks) on a dataset split, with a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import run_files
from ..errors import ConfigError
from . import add_device_argument, add_quiet_argument, add_volume_output_arguments, progress_mode


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a model or prediction masks on a dataset split, with a report",
        description="Score a model, or prediction masks from any tool, on a dataset split at each image's own "
                    "resolution. Writes cases.csv (per case and class), summary.json (mean, std, median, count "
                    "per metric and class; HD95/ASD failures counted), report.md with figures/, and report.html (one "
                    "self-contained page to open in a browser) into --out. "
                    "Volume datasets (NIfTI, MetaImage, NRRD, DICOM) are scored per volume, with NSD at --nsd-tolerance.",
    )
    parser.add_argument("--model", metavar="CKPT|RUN_DIR|FILE.onnx", action="append",
                        help="checkpoint (ours or the authors'), run folder (its best.safetensors) or ONNX file; "
                             "given several times, or a folder of run folders (folds), their probabilities are averaged")
    parser.add_argument("--tta", action="store_true", help="average the predictions of flipped inputs (4 flips)")
    parser.add_argument("--tile-overlap", type=float, default=None, metavar="F",
                        help="volumes: sliding-window overlap (default 0.5 for models trained on patches)")
    parser.add_argument("--resample", action="store_true",
                        help="volumes: resample predictions on another grid onto the label's (nearest) instead of refusing")
    parser.add_argument("--predictions", metavar="DIR",
                        help="score these masks instead of running a model (matched to cases by file stem; "
                             "a `segdino predict` output folder is read from its masks/)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder with the ground truth")
    parser.add_argument("--out", metavar="DIR",
                        help="report folder (default: RUN_DIR/report when --model or --run is a run folder)")
    parser.add_argument("--split", default=None, choices=["train", "val", "test", "all"],
                        help="cases to score (default: test; all on a dataset other than the run's)")
    parser.add_argument("--fold", type=int, default=0, help="fold, for split files with folds (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the seeded split rules (default 0)")
    parser.add_argument("--run", metavar="RUN_DIR",
                        help="training run of the model: learning curves in the report, and its split")
    parser.add_argument("--keep-size", action="store_true",
                        help="run at each image's native size padded to a multiple of 16 instead of resizing")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images ahead (default 2)")
    parser.add_argument("--num-classes", type=int, default=None, metavar="K",
                        help="with --predictions: 1 = binary masks (default), K >= 2 = index masks 0..K-1")
    parser.add_argument("--mask-threshold", type=int, default=None, metavar="T",
                        help="with --predictions: binary foreground = grey value > T (default 127)")
    add_volume_output_arguments(parser, scoring=True)
    parser.add_argument("--nsd-tolerance", type=float, default=None, metavar="MM",
                        help="volumes: normalised surface Dice counts boundary voxels within MM of the other "
                             "boundary (default 1 mm)")
    add_quiet_argument(parser)
    add_device_argument(parser)
    parser.set_defaults(func=run_evaluate)


def default_split(run_dir: Path | None, data: str) -> str:
    """``test``; ``all`` when ``data`` is not the dataset the run trained on (its split is meaningless there)."""
    from ..runs import is_run_dataset, run_dataset

    if run_dir is None or is_run_dataset(run_dir, data):
        return "test"
    print(f"segdino evaluate: {data} is not the dataset {run_dir} trained on ({run_dataset(run_dir)}): scoring "
          "every labelled case (--split all); pass --split test for its own test split", file=sys.stderr)
    return "all"


def _channel(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _out_folder(args: argparse.Namespace, run_dir: Path | None) -> Path:
    if args.out:
        return Path(args.out)
    if run_dir is not None:
        return run_dir / "report"
    raise ConfigError("--out DIR is required (it defaults to RUN_DIR/report only when the model is a run folder)")


def run_evaluate(args: argparse.Namespace) -> int:
    from ..summary_file import format_summary

    summary = evaluate_from_args(args)
    print(format_summary(summary))
    print(f"report: {summary['outputs']['report']} (in a browser: {summary['outputs']['report_html']})")
    return 0


def evaluate_from_args(args: argparse.Namespace) -> dict:
    """Score as the command does; returns the summary (as in summary.json) with ``outputs``: the files written."""
    from ..runs import find_run_dir
    from ..options import COUNT, GREY_LEVEL, POSITIVE_INT, SEED, check_numbers
    from ..outputs import open_output

    if (args.model is None) == (args.predictions is None):
        raise ConfigError("give either --model CKPT (to predict and score) or --predictions DIR (to score masks)")
    check_numbers(args, {"batch_size": POSITIVE_INT, "workers": COUNT, "fold": COUNT, "seed": SEED,
                         "num_classes": POSITIVE_INT, "mask_threshold": GREY_LEVEL})
    if args.model is not None and (args.num_classes is not None or args.mask_threshold is not None):
        raise ConfigError("--num-classes and --mask-threshold go with --predictions; a model's file sets them")
    if args.run is not None and not Path(args.run).is_dir():
        raise ConfigError(f"--run {args.run}: no such run folder")
    run_dir = Path(args.run) if args.run else (find_run_dir(args.model[0]) if args.model and len(args.model) == 1
                                               else None)
    out = _out_folder(args, run_dir)
    # Checked (and held) before any work, so a report that cannot be written costs nothing.
    with open_output(out, inputs=[args.data, args.predictions]):
        return _evaluate(args, out, run_dir)


def _evaluate(args: argparse.Namespace, out: Path, run_dir: Path | None) -> dict:
    from ..evaluation import evaluate_model, evaluate_predictions

    if args.model is not None and (len(args.model) > 1 or args.tta or (
            Path(args.model[0]).is_dir() and not (Path(args.model[0]) / run_files.BEST).is_file())):
        from ..ensemble import load_models

        args.model = load_models(args.model, args.device, tta=args.tta)
    elif args.model is not None:
        args.model = args.model[0]
    if args.split is None:
        args.split = default_split(run_dir, args.data)

    from ..volumes import is_volume_dataset

    if is_volume_dataset(args.data):
        return _evaluate_volumes(args, out, run_dir)
    if args.channel is not None or args.largest_component or args.nsd_tolerance is not None \
            or args.resample or args.tile_overlap is not None or args.min_size is not None:
        raise ConfigError(f"--channel, --largest-component, --min-size, --nsd-tolerance, --resample and "
                          f"--tile-overlap apply to volume datasets; {args.data} holds 2D images")
    if args.predictions is not None:
        return evaluate_predictions(
            args.predictions, args.data, out, num_classes=args.num_classes or 1, split=args.split,
            fold=args.fold, seed=args.seed,
            mask_threshold=127 if args.mask_threshold is None else args.mask_threshold,
            run_dir=run_dir, progress=progress_mode(args),
        )
    return evaluate_model(
        args.model, args.data, out, split=args.split, fold=args.fold, seed=args.seed,
        batch_size=args.batch_size, keep_size=args.keep_size, device=args.device, run_dir=run_dir,
        workers=max(0, args.workers), progress=progress_mode(args),
    )


def _evaluate_volumes(args: argparse.Namespace, out: Path, run_dir: Path | None) -> dict:
    try:
        from ..volumes.evaluate import evaluate_volumes
    except ImportError as e:
        raise ConfigError(f"{args.data} is a volume dataset, but volume evaluation is unavailable ({e})") from None
    if args.num_classes is not None or args.mask_threshold is not None:
        raise ConfigError("--num-classes and --mask-threshold apply to 2D masks; volume labels follow the "
                          "dataset's own label list")
    if args.keep_size:
        raise ConfigError("--keep-size applies to 2D images; volumes are scored slice by slice on their own grid")
    return evaluate_volumes(
        args.data, out, predictions=args.predictions, model=args.model, split=args.split, fold=args.fold,
        channel=_channel(args.channel), device=args.device, batch_size=args.batch_size,
        largest_component=args.largest_component, run_dir=run_dir, resample=args.resample,
        tile_overlap=args.tile_overlap, min_size_mm3=args.min_size, progress=progress_mode(args),
        **({} if args.nsd_tolerance is None else {"nsd_tolerance": args.nsd_tolerance}),
    )
