"""``segdino export --model CKPT --format onnx --out FILE``: a checked ONNX file for other runtimes."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX, checked against PyTorch",
        description="Export a model to ONNX (normalised image batch in, logits out; the batch size is free). "
                    "The file's metadata holds the model config and the preprocessing. The export is checked "
                    "by running ONNX Runtime on random inputs against PyTorch; the relative L2 error is printed "
                    "and a file that disagrees is not written.",
    )
    p.add_argument("--model", required=True, metavar="CKPT", help="checkpoint file (ours or the authors') or run folder")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                   help="input size the graph is fixed to: N, or H W (default: the model's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of leaving it free")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative L2 error accepted between ONNX Runtime and PyTorch (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime check")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the export summary as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import load_model
    from ..errors import ConfigError
    from ..export import export_onnx
    from ..fileio import atomic_write_text

    size = args.image_size
    if size is not None:
        if len(size) not in (1, 2):
            raise ConfigError(f"--image-size takes N or H W, got {' '.join(map(str, size))}")
        size = (size[0], size[-1])
    if not args.tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {args.tolerance}")
    model = load_model(args.model)
    result = export_onnx(model, args.out, image_size=size, opset=args.opset, dynamic_batch=not args.static_batch,
                         check=not args.no_check, tolerance=args.tolerance)
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
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0
