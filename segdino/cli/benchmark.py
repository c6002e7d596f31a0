"""``segdino benchmark``: eager fp32 against the fast path, on the same random weights."""

from __future__ import annotations

from pathlib import Path

from . import add_device_argument


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="time the eager fp32 model against the fast path")
    p.add_argument("--backbone", default="vits16")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--decoder-dim", type=int, default=256)
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", default="auto", help="auto, a torch.compile mode, or none")
    p.add_argument("--json", help="write the report as JSON to this file")
    add_device_argument(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from ..benchmark import run_benchmark
    from ..errors import ConfigError
    from ..fileio import atomic_write_text
    from ..inference import resolve_device

    try:
        batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch takes comma-separated integers, got {args.batch!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"--batch takes positive integers, got {args.batch!r}")
    device = resolve_device(args.device)
    report = run_benchmark(
        backbone=args.backbone, image_size=(args.image_size, args.image_size), batches=batches, device=device,
        decoder_dim=args.decoder_dim, warmup=args.warmup, repeats=args.repeats,
        compile_mode=None if args.compile == "none" else args.compile,
    )
    print(report.table())
    if args.json:
        atomic_write_text(Path(args.json), report.to_json())
    return 0
