"""``segdino benchmark``: eager fp32 against the faster paths, on the same weights."""

from __future__ import annotations

from pathlib import Path

from . import add_device_argument


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark", help="time the eager fp32 model against the faster paths",
        description="Time the plain eager fp32 model against the faster paths on the same weights (random by "
                    "default) and report each path's speed ratio and relative L2 error against eager fp32. "
                    "GPU: the plain model compiled (bf16, channels-last, torch.compile) and the fast path (the same plus fused decoder kernels), with their ratio. CPU: TPA folded in PyTorch, "
                    "ONNX Runtime fp32 and int8, bf16 channels-last where the CPU has native bf16, torch.compile "
                    "on request, timed in alternation. With --model and --data, each path's mean Dice on a split as well. "
                    "--train times training instead: the step alone (eager fp32 batch 4, the plain model "
                    "compiled, the fast path on the fused decoder) and, with --data, whole epochs through the "
                    "DataLoader.",
    )
    p.add_argument("--backbone", default="vits16", help="backbone of the random-weights model (default vits16)")
    p.add_argument("--image-size", type=int, default=256, help="input side in pixels, a multiple of 16 (default 256)")
    p.add_argument("--decoder-dim", type=int, default=256, help="decoder width D (default 256)")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,32; --train: one, default 32)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per path (CPU: alternating rounds; at least 20 for a fair median; default 50); "
                        "--train: timed chunks of --steps steps (default 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per path before timing (default 10; --train: steps, default 5)")
    p.add_argument("--train", action="store_true",
                   help="time training: the step alone per path and, with --data DIR, whole epochs of a run "
                        "through the DataLoader (first epoch, the warm-up and compilation, reported apart)")
    p.add_argument("--steps", type=int, default=10, help="--train: steps per timed chunk (default 10)")
    p.add_argument("--epochs", type=int, default=5, help="--train with --data: epochs to run (default 5)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="--train with --data: DataLoader processes (default: the training default)")
    p.add_argument("--compile", default="auto", help="auto, a torch.compile mode, or none")
    p.add_argument("--paths", default=None,
                   help="CPU paths, comma-separated among eager, folded, onnx, onnx-int8, bf16, compile, "
                        "compile-bf16 (default: eager,folded,onnx,onnx-int8, and bf16 where the CPU has native "
                        "bf16); all but eager run TPA folded (the same function, fewer FLOPs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every path (default: physical cores)")
    p.add_argument("--fp8", action="store_true",
                   help="GPU: also time the fast path with the backbone's linear layers as FP8 products "
                        "(compute capability 8.9 or newer; with --model and --data, its Dice beside fp32)")
    p.add_argument("--model", default=None, metavar="CKPT",
                   help="use this model's weights and size instead of random weights (--backbone, --image-size "
                        "and --decoder-dim are then taken from it)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset: also measure each path's mean Dice (needs --model); --train: the data of the epochs")
    p.add_argument("--split", default="test", help="split of --data for Dice (default test)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="CPU: before timing, wait up to SECONDS for other processes to leave the CPU idle "
                        "(shared machines); the share they used while timing is reported either way")
    p.add_argument("--json", help="write the report as JSON to this file")
    add_device_argument(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from ..benchmark import CPU_PATHS, run_benchmark
    from ..errors import ConfigError
    from ..fileio import atomic_write_text
    from ..inference import resolve_device
    from ..options import COUNT, NON_NEGATIVE, POSITIVE_INT, check_numbers

    if args.train:
        return train_main(args)
    args.batch = "1,32" if args.batch is None else args.batch
    args.repeats = 50 if args.repeats is None else args.repeats
    args.warmup = 10 if args.warmup is None else args.warmup
    try:
        batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch takes comma-separated integers, got {args.batch!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"--batch takes positive integers, got {args.batch!r}")
    check_numbers(args, {"wait_quiet": NON_NEGATIVE, "repeats": POSITIVE_INT, "warmup": COUNT,
                         "threads": POSITIVE_INT, "image_size": POSITIVE_INT, "decoder_dim": POSITIVE_INT})
    paths = None
    if args.paths:
        paths = [p.strip() for p in args.paths.split(",") if p.strip()]
        unknown = [p for p in paths if p not in CPU_PATHS]
        if unknown:
            raise ConfigError(f"--paths: unknown path(s) {', '.join(unknown)}; expected some of {', '.join(CPU_PATHS)}")
    if args.data and not args.model:
        raise ConfigError("--data measures Dice, which needs a trained model: add --model CKPT")
    device = resolve_device(args.device)
    if args.fp8 and device.type == "cpu":
        raise ConfigError("--fp8 is a GPU path (FP8 tensor cores, compute capability 8.9 or newer); "
                          "this run is on the CPU")
    model = None
    if args.model:
        from ..checkpoint import load_model

        model = load_model(args.model)
    report = run_benchmark(
        backbone=args.backbone, image_size=(args.image_size, args.image_size), batches=batches, device=device,
        decoder_dim=args.decoder_dim, warmup=args.warmup, repeats=args.repeats,
        compile_mode=None if args.compile == "none" else args.compile, paths=paths, threads=args.threads,
        model=model, data=args.data, split=args.split, weights_name=args.model, wait_quiet=args.wait_quiet,
        fp8=args.fp8,
    )
    print(report.table())
    if args.json:
        atomic_write_text(Path(args.json), report.to_json())
    return 0


def train_main(args) -> int:
    """``segdino benchmark --train``: the training paths, in the report shape of the inference benchmark."""
    from ..errors import ConfigError
    from ..fileio import atomic_write_text
    from ..inference import resolve_device
    from ..options import COUNT, POSITIVE_INT, check_numbers
    from ..train_benchmark import run_train_benchmark

    for flag, value in (("--model", args.model), ("--paths", args.paths), ("--threads", args.threads),
                        ("--fp8", args.fp8)):
        if value:
            raise ConfigError(f"{flag} is not an option of --train (it times training from random weights)")
    try:
        batch = int(args.batch) if args.batch is not None else 32
    except ValueError:
        raise ConfigError(f"--train takes one batch size, got --batch {args.batch!r}") from None
    args.batch_size = batch
    args.repeats = 5 if args.repeats is None else args.repeats
    args.warmup = 5 if args.warmup is None else args.warmup
    check_numbers(args, {"batch_size": POSITIVE_INT, "repeats": POSITIVE_INT, "warmup": COUNT, "steps": POSITIVE_INT,
                         "epochs": POSITIVE_INT, "num_workers": COUNT, "image_size": POSITIVE_INT,
                         "decoder_dim": POSITIVE_INT})
    report = run_train_benchmark(
        backbone=args.backbone, image_size=(args.image_size, args.image_size), batch=batch,
        device=resolve_device(args.device), decoder_dim=args.decoder_dim, warmup=args.warmup, steps=args.steps,
        repeats=args.repeats, compile_=args.compile != "none", data=args.data, epochs=args.epochs,
        num_workers=args.num_workers,
    )
    print(report.table())
    if args.json:
        atomic_write_text(Path(args.json), report.to_json())
    return 0
