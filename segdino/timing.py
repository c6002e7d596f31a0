"""Timing on a device, and how busy a shared CPU is while timing.

Used by :mod:`segdino.benchmark`; nothing here knows about models. On CUDA a call is timed with
device events, on CPU with the wall clock; on a shared CPU, the share of the CPU other processes
use is read from ``/proc/stat`` (Linux) so that a timing under load can be recognised.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

__all__ = ["time_fn", "time_alternating", "cpu_model_name", "cpu_flags", "OtherLoad", "QUIET_SHARE",
           "wait_for_quiet_cpu", "torch_threads"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
            min_seconds: float = 0.0) -> list[float]:
    """Per-call seconds of ``fn`` after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def time_alternating(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Per-call seconds of each function, timed in alternation (CPU wall clock).

    Each round calls every function once; the starting function rotates from round to round, so
    no path always runs after the same other path and a change of load hits all of them alike.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (Linux /proc/stat), all cores summed."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class OtherLoad:
    """Measures the share of the CPU used by other processes between ``start()`` and ``stop()``."""

    def start(self) -> "OtherLoad":
        self.t, self.busy, self.own = time.perf_counter(), _cpu_busy_seconds(), _own_cpu_seconds()
        return self

    def stop(self) -> float | None:
        busy = _cpu_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.t
        others = (busy - self.busy) - (_own_cpu_seconds() - self.own)
        # Tick counts are coarse (10 ms): over short spans the estimate can stray past [0, 1].
        return min(1.0, max(0.0, others / max(wall * (os.cpu_count() or 1), 1e-9)))


QUIET_SHARE = 0.1  # other processes below 10% of the CPU: a timing counts as quiet


def wait_for_quiet_cpu(max_seconds: float, busy_below: float = QUIET_SHARE, window: float = 5.0) -> float:
    """Wait until other processes use less than ``busy_below`` of the CPU over ``window`` seconds.

    Returns the seconds waited (at most about ``max_seconds``; then the timing runs anyway).
    """
    start = time.perf_counter()
    while time.perf_counter() - start < max_seconds:
        probe = OtherLoad().start()
        time.sleep(window)
        share = probe.stop()
        if share is None or share < busy_below:
            break
    return time.perf_counter() - start


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the ``with`` block with ``n`` PyTorch intra-op threads, then restore the number."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
