"""``segdino export --model CKPT --format onnx --out FILE``: a checked ONNX file for other runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX, checked against PyTorch",
        description="Export a model to ONNX (normalised image batch in, logits out; the batch size is free). "
                    "The file's metadata holds the model config and the preprocessing. The export is checked "
                    "by running ONNX Runtime on random inputs against PyTorch; the relative L2 error is printed "
                    "and a file that disagrees is not written.",
    )
    p.add_argument("--model", required=True, metavar="CKPT|RUN_DIR",
                   help="checkpoint file (ours or the authors') or run folder (its best.safetensors)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                   help="input size the graph is fixed to: N, or H W (default: the model's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of leaving it free")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative L2 error accepted between ONNX Runtime and PyTorch (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime check")
    p.add_argument("--no-fold", action="store_true",
                   help="write TPA as resize + 3x3 conv instead of folded (same function; folded is faster)")
    p.add_argument("--int8", action="store_true",
                   help="write an int8 file (static quantisation, calibrated on --calibration-data): faster on CPU; "
                        "check its Dice with segdino benchmark --device cpu --model CKPT --data DIR")
    p.add_argument("--calibration-data", default=None, metavar="DIR",
                   help="dataset whose training images calibrate the int8 scales (needed with --int8)")
    p.add_argument("--calibration-samples", type=int, default=16, metavar="N", help="training images used (default 16)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the export summary as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import load_model
    from ..errors import ConfigError
    from ..export import export_onnx
    from ..fileio import atomic_write_text

    from ..options import POSITIVE, POSITIVE_INT, check_number, check_numbers
    from ..outputs import open_output

    size = args.image_size
    if size is not None:
        if len(size) not in (1, 2):
            raise ConfigError(f"--image-size takes N or H W, got {' '.join(map(str, size))}")
        for s in size:
            check_number("image_size", s, POSITIVE_INT)
        size = (size[0], size[-1])
    check_numbers(args, {"tolerance": POSITIVE, "opset": POSITIVE_INT, "calibration_samples": POSITIVE_INT})
    if args.int8 and not args.calibration_data:
        raise ConfigError("--int8 needs --calibration-data DIR: the int8 scales come from real training images")
    if args.calibration_data and not args.int8:
        raise ConfigError("--calibration-data is used only with --int8")
    # Both outputs are checked before the export's work: writable, not a folder, not a file of another tool.
    open_output(args.out, inputs=[args.model, args.calibration_data], file=True, recognise=_is_our_onnx)
    if args.json:
        open_output(args.json, inputs=[args.model, args.calibration_data, args.out], option="--json", file=True,
                    recognise=_is_json)
    model = load_model(args.model)
    kwargs = dict(image_size=size, opset=args.opset, dynamic_batch=not args.static_batch, check=not args.no_check,
                  tolerance=args.tolerance, fold=not args.no_fold)
    if args.int8:
        result = _export_int8(model, Path(args.out), args, kwargs)
    else:
        result = export_onnx(model, args.out, **kwargs)
    h, w = result["image_size"]
    batch = "dynamic batch" if result["dynamic_batch"] else "batch 1"
    print(f"wrote {result['path']} ({result['bytes'] / 2**20:.1f} MiB, opset {result['opset']}, {h}x{w}, {batch}, "
          f"{result['seconds']:.1f} s)")
    if result["rel_l2"] is None:
        print("not checked (--no-check)")
    else:
        print(f"check: ONNX Runtime {result['onnxruntime']} vs PyTorch fp32 on random inputs "
              f"(batches {', '.join(map(str, result['check_batches']))}): relative L2 error {result['rel_l2']:.2e}, "
              f"max abs {result['max_abs']:.2e}")
    if "int8" in result:
        q = result["int8"]
        print(f"int8: static quantisation calibrated on {q['calibration_samples']} training images of "
              f"{args.calibration_data}; relative L2 error vs fp32 {q['rel_l2_vs_fp32']:.2e} (reduced precision: "
              "compare Dice with segdino benchmark --device cpu --model CKPT --data DIR)")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


def _is_our_onnx(path: Path) -> bool:
    from ..errors import SegDINOError
    from ..onnx_runtime import CONFIG_KEY, read_onnx_metadata

    try:
        return CONFIG_KEY in read_onnx_metadata(path)
    except SegDINOError:
        return False


def _is_json(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"opset", "image_size", "bytes"} <= set(data)  # an export summary


def _export_int8(model, out: Path, args: argparse.Namespace, kwargs: dict) -> dict:
    """Export fp32 to a scratch folder beside ``out``, check it, then quantise it into ``out``."""
    import dataclasses
    import tempfile

    from ..export import export_onnx
    from ..quantize import calibration_inputs, quantize_onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        result = export_onnx(model, fp32, **kwargs)
        config = dataclasses.replace(model.config, image_size=tuple(result["image_size"]))
        calib = calibration_inputs(args.calibration_data, config, samples=args.calibration_samples)
        q = quantize_onnx(fp32, out, calibration=calib)
    result.update(path=str(out), bytes=q["bytes"], precision="int8", int8=q)
    return result
