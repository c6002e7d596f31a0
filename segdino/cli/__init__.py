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
    _accept_debug_everywhere(parser)
    return parser


def _accept_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``--debug`` follow any (sub)command too, as users add it at the end of a failed line.

    SUPPRESS as default: a subcommand that was not given ``--debug`` must not reset the value
    that the main parser read before it.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            if "--debug" not in child._option_string_actions:
                child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="show full tracebacks")
            _accept_debug_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
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
