"""``segdino predict``: segment image files and folders (and volumes), writing masks at each
input's own size.

The options are parsed here; :func:`segdino.file_prediction.predict_paths` finds the inputs and
predicts them, and :mod:`segdino.prediction_writer` describes the layout written into ``--out``
(``masks/``, ``probabilities/``, ``overlays/``). An input that cannot be read is named on stderr
and the others are still predicted; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from . import add_device_argument, add_quiet_argument, add_volume_output_arguments, progress_mode


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images (files or folders) with a model",
        description="Segment image files and folders (searched recursively) at each image's own size. "
                    "Writes masks/ (binary 0/255, multi-class index values), and optionally probabilities/ "
                    "and overlays/, into --out. Unreadable images are named and skipped (exit status 1).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files or folders; volumes too (.nii[.gz], .mha, .mhd, .nrrd files, DICOM series folders)")
    parser.add_argument("--model", required=True, action="append", metavar="CKPT|RUN_DIR|FILE.onnx",
                        help="checkpoint (ours or the authors'), run folder (its best.safetensors) or ONNX file; "
                             "given several times, or a folder of run folders (folds), their probabilities are averaged")
    parser.add_argument("--tta", action="store_true", help="average the predictions of flipped inputs (4 flips)")
    parser.add_argument("--tile-overlap", type=float, default=None, metavar="F",
                        help="sliding-window prediction at native resolution with tiles overlapping by F (e.g. 0.5); "
                             "default for models trained on patches: 0.5")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--probabilities", action="store_true", help="also write probability maps")
    parser.add_argument("--probability-format", default="png", choices=["png", "npy"],
                        help="2D images: png: 8-bit grey per foreground class (default); npy: float32 arrays "
                             "(volumes write probabilities as volumes)")
    parser.add_argument("--overlays", action="store_true", help="also write the images with the prediction drawn on; volumes: a PNG per slice "
                             "holding a prediction and a montage per case")
    parser.add_argument("--label-values", default="255", choices=["255", "index"],
                        help="2D images, binary masks: 255 writes 0/255 (viewable, default); index writes the class "
                             "index 0/1, as nnU-Net's 2D labels")
    parser.add_argument("--keep-size", action="store_true",
                        help="2D images: run at each image's native size padded to a multiple of 16 instead of "
                             "resizing (volumes always keep their grid)")
    parser.add_argument("--batch-size", type=int, default=8, help="images (or volume slices) per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="2D images: threads decoding images ahead (default 2)")
    add_volume_output_arguments(parser, scoring=False)
    add_quiet_argument(parser)
    add_device_argument(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    def report(message: str) -> None:
        print(f"segdino predict: {message}", file=sys.stderr)

    result = predict_from_args(args, on_error=report)
    errors = result["errors"]
    print(f"{len(result['masks'])} mask(s) written under {result['out']}"
          + (f"; {len(errors)} input(s) failed (named above)" if errors else ""))
    return 1 if errors else 0


def predict_from_args(args: argparse.Namespace, on_error: Callable[[str], None] | None = None) -> dict:
    """Predict as the command does; returns ``{"out", "masks": [paths], "errors": [messages]}``.

    ``args.model`` may also be a loaded model (the Python API). Inputs that cannot be read are
    errors passed to ``on_error`` as they happen; the others are still predicted.
    """
    from ..file_prediction import PredictOptions, predict_paths
    from ..options import COUNT, POSITIVE_INT, check_numbers

    check_numbers(args, {"batch_size": POSITIVE_INT, "workers": COUNT})
    options = PredictOptions.of(args)
    options.progress = progress_mode(args)
    return predict_paths(args.model, args.inputs, args.out, options, on_error)
