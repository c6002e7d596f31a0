"""Progress of long loops: a live bar on a terminal, a few plain lines anywhere else.

A bar redraws itself with carriage returns, which is right on a terminal and wrong in a log file
(``nohup``, CI, a cluster job): there every redraw becomes text. So a bar is drawn only when the
stream is a terminal and the user did not ask for ``--quiet``; otherwise :class:`Progress`
writes a plain line now and then (when a tenth of the work is done, but at most every
``MIN_SECONDS``, and at least every ``MAX_SECONDS`` of a long loop) and, if asked, one line when
the loop ends. Lines never hold a carriage return.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

#: Plain mode: no two lines closer than this, ...
MIN_SECONDS = 5.0
#: ... and a line at least this often while work goes on.
MAX_SECONDS = 60.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Progress:
    """Progress of ``total`` units of work, as a bar (terminal) or plain lines (anything else).

    Args:
        total: units of work expected (steps, cases, volumes).
        desc: what is being done (``"evaluate"``, ``"epoch 3/50"``).
        unit: name of one unit (``"case"``).
        quiet: never draw a bar, even on a terminal (plain lines only).
        enabled: False shows nothing at all (e.g. the non-main ranks of a distributed run).
        final_line: plain mode: write a line when :meth:`close` is called.
        tenths: plain mode: a line when each tenth of the work is done (at most every
            ``MIN_SECONDS``); off, only every ``MAX_SECONDS`` (a training epoch has its own line).
        stream: where to write (default stderr).
    """

    def __init__(self, total: int, desc: str, unit: str = "item", *, quiet: bool = False, enabled: bool = True,
                 final_line: bool = True, tenths: bool = True, stream: TextIO | None = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self.enabled = enabled
        self.final_line = final_line
        self.stream = sys.stderr if stream is None else stream
        self.postfix: dict[str, Any] = {}
        self._bar = None
        self._start = self._last = time.monotonic()
        self._every = max(1, math.ceil(self.total / 10)) if tenths else None
        self._closed = False
        if enabled and not quiet and is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
                             file=self.stream)

    @property
    def is_bar(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        before = self.n
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.enabled:
            return
        now = time.monotonic()
        crossed = self._every is not None and self.n // self._every > before // self._every and self.n < self.total
        if (crossed and now - self._last >= MIN_SECONDS) or now - self._last >= MAX_SECONDS:
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (e.g. ``loss=0.123``): on the bar, or on the next plain line."""
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def _text(self, now: float) -> str:
        total = f"/{self.total}" if self.total else ""
        units = self.unit if self.n == 1 or self.unit.endswith("s") else self.unit + "s"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.n}{total} {units}{extra} ({_fmt_seconds(now - self._start)})"

    def _line(self, now: float) -> None:
        self._last = now
        print(self._text(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.final_line:
            self._line(time.monotonic())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write(text: str, stream: TextIO | None = None) -> None:
    """Print a line without breaking a bar that is being drawn (stdout by default)."""
    if is_terminal(sys.stderr):
        from tqdm.auto import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=sys.stdout if stream is None else stream, flush=True)


def track(items: Iterable[Any], total: int, desc: str, unit: str = "item", show: bool | str = True
          ) -> Iterator[Any]:
    """Yield ``items`` while showing their progress (see :class:`Progress`); closes at the end.

    ``show``: False shows nothing; True a bar on a terminal, plain lines elsewhere; ``"quiet"``
    plain lines only (the commands' ``--quiet``).
    """
    if not show:
        yield from items
        return
    bar = Progress(total, desc, unit, quiet=show == "quiet")
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
