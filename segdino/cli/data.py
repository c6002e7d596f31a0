"""``segdino data check --data DIR``: report what a dataset folder holds and every problem."""

from __future__ import annotations

import argparse
import json

from ..fileio import atomic_write_text
from . import add_quiet_argument, progress_mode


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect dataset folders",
                                   description="Inspect dataset folders.")
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>")
    parser.set_defaults(func=lambda args: _no_subcommand(parser))

    check = sub.add_parser(
        "check", help="report pairs, sizes, mask values, splits and every problem",
        description="Report what a dataset folder holds (pairs, image sizes, mask values, empty masks, "
                    "class ids, split sizes) and every problem with its file names. "
                    "Exit status 0 only when the folder is usable for training.",
    )
    check.add_argument("--data", required=True, metavar="DIR", help="dataset folder")
    check.add_argument("--num-classes", type=int, default=None, metavar="K",
                       help="1 = binary, K >= 2 = index masks 0..K-1 (default: inferred from the masks)")
    check.add_argument("--mask-threshold", type=int, default=127, metavar="T",
                       help="binary foreground = grey value > T (default 127)")
    check.add_argument("--seed", type=int, default=0, help="seed of the seeded split rules (default 0)")
    check.add_argument("--fold", type=int, default=0, help="fold, for split files with folds (default 0)")
    check.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, max 8)")
    check.add_argument("--channel", default=None, metavar="C",
                       help="multi-channel volumes: the channel to use (index or name from dataset.json)")
    check.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    add_quiet_argument(check)
    check.set_defaults(func=run_check)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _channel(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def run_check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    report = check_dataset(args.data, num_classes=args.num_classes, mask_threshold=args.mask_threshold,
                           seed=args.seed, fold=args.fold, workers=args.workers,
                           channel=_channel(args.channel), progress=progress_mode(args))
    print(report.format())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1, default=str) + "\n")
    return 0 if report.ok else 1
