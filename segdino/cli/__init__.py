"""Command line: ``segdino <command>`` (also ``python -m segdino``).

Each module in this package that defines ``register(subparsers)`` adds one command; the
handler it sets with ``parser.set_defaults(func=...)`` receives the parsed arguments and
returns an exit code. User mistakes (:class:`SegDINOError`) print one line and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from ..errors import SegDINOError

log = logging.getLogger("segdino")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
        help="where to run the model (auto: cuda, else mps, else cpu)",
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", action="store_true", default=None,
        help="no progress bar: a plain line now and then instead (what is written when output is not a terminal)",
    )


def progress_mode(args: argparse.Namespace) -> bool | str:
    """What the command's loops show: a bar on a terminal (True) or plain lines only (``"quiet"``)."""
    return "quiet" if getattr(args, "quiet", None) else True


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="segdino",
        description="Medical image segmentation with DINOv3 and the SegDINO decoder.",
    )
    parser.add_argument("--version", action="version", version=f"segdino {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except SegDINOError as e:
        if debug:
            raise
        print(f"segdino {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segdino {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def run() -> None:
    sys.exit(main())
