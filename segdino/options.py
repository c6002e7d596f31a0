"""Ranges of numeric options: one rule table format, one check, used by every command.

A rule is ``(kind, low, high)``: ``kind`` is ``int`` or ``float``; ``low``/``high`` are inclusive
bounds (None: unbounded); a float must be finite. ``low`` may be written ``(value, "open")`` for a
strict bound. A value of None (option not given) passes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import ConfigError

Bound = float | int | tuple[float, str] | None
Rule = tuple[type, Bound, Bound]

#: Largest seed every generator we seed accepts (torch takes 64 bits, numpy's SeedSequence any >= 0).
MAX_SEED = 2**63 - 1


def _flag(name: str) -> str:
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def check_number(name: str, value: Any, rule: Rule) -> None:
    """Raise :class:`ConfigError` naming the option unless ``value`` obeys ``rule`` (see the module)."""
    if value is None:
        return
    kind, low, high = rule
    flag = _flag(name)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind is int and not is_int:
        raise ConfigError(f"{flag} must be an integer, got {value!r}")
    if kind is float:
        if not (is_int or isinstance(value, float)):
            raise ConfigError(f"{flag} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
    strict = isinstance(low, tuple)
    lo = low[0] if strict else low
    if lo is not None and (value <= lo if strict else value < lo):
        raise ConfigError(f"{flag} must be {'>' if strict else '>='} {lo}{_upto(high)}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{flag} must be {'>' if strict else '>='} {lo} and <= {high}, got {value!r}"
                          if lo is not None else f"{flag} must be <= {high}, got {value!r}")


def _upto(high: Bound) -> str:
    return f" and <= {high}" if high is not None else ""


def check_numbers(values: Mapping[str, Any] | Any, rules: Mapping[str, Rule]) -> None:
    """:func:`check_number` for every option in ``rules``; ``values`` is a mapping or an object
    (an argparse namespace, a dataclass) whose attributes are the options."""
    for name, rule in rules.items():
        value = values.get(name) if isinstance(values, Mapping) else getattr(values, name, None)
        check_number(name, value, rule)


POSITIVE_INT: Rule = (int, 1, None)
COUNT: Rule = (int, 0, None)
SEED: Rule = (int, 0, MAX_SEED)
POSITIVE: Rule = (float, (0, "open"), None)
NON_NEGATIVE: Rule = (float, 0, None)
FRACTION: Rule = (float, 0, 1)
GREY_LEVEL: Rule = (int, 0, 255)
