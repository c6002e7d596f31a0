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
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, SegDINOError

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


def add_volume_output_arguments(parser: argparse.ArgumentParser, scoring: bool) -> None:
    """The volume options that ``predict`` and ``evaluate`` share: the channel read, and what is
    removed from the predicted labels (before scoring, with ``scoring``)."""
    parser.add_argument("--channel", default=None, metavar="C",
                        help="volumes: the channel of multi-channel volumes (index or name)")
    parser.add_argument("--largest-component", action="store_true",
                        help="volumes: keep only the largest connected component of each predicted class")
    when, default = (" before scoring", "default with --model") if scoring else ("", "default")
    parser.add_argument("--min-size", type=float, default=None, metavar="MM3",
                        help=f"volumes: remove predicted components smaller than MM3 cubic millimetres from every class"
                             f"{when} (false positives of lesion detection are mostly specks); {default}: the size the "
                             "model's training chose on its validation cases, if any; 0 keeps every component")


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
    _accept_debug_everywhere(parser)
    return parser


def command_parser(command: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of one command (``["train"]``, ``["data", "check"]``)."""
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def options_namespace(command: Sequence[str], options: Mapping[str, Any], caller: str) -> argparse.Namespace:
    """The arguments a command would receive, from Python keyword options named like its flags.

    ``options`` use the flags' names (``image_size`` or ``image-size``); what is not given takes
    the command's default, so the Python API and the command line cannot drift apart. Values are
    taken as given (no string parsing); choices and required options are checked as the command
    line checks them. ``caller`` names the function in error messages.
    """
    parser = command_parser(command)
    ns = argparse.Namespace(**parser._defaults)
    actions = {a.dest: a for a in parser._actions if a.dest != "help" and not isinstance(a, argparse._VersionAction)}
    for dest, action in actions.items():
        setattr(ns, dest, False if action.default is argparse.SUPPRESS else action.default)
    for key, value in options.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(actions))
            raise ConfigError(f"{caller}: unknown option {key!r}; the options are {known}")
        if value is not None and action.choices is not None:
            values = value if isinstance(value, (list, tuple)) and action.nargs not in (None, "?") else [value]
            bad = [v for v in values if str(v) not in {str(c) for c in action.choices}]
            if bad:
                raise ConfigError(f"{caller}: {key} must be one of {', '.join(map(str, action.choices))}, got {bad[0]!r}")
        setattr(ns, dest, value)
    for dest, action in actions.items():
        if action.required and getattr(ns, dest) is None:
            raise ConfigError(f"{caller}: {dest} is required")
    ns.command, ns.argv = command[0], []
    return ns


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
