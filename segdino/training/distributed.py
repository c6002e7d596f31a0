"""Distribution: joining and leaving the process group ``torchrun`` describes, and the few
collectives training needs (every rank takes the same branch, counts are pooled once).

Outside a distributed run every function here is a no-op that answers as one process would.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes in the environment (env://).

    Returns (rank, world size, local rank); (0, 1, 0) when not launched by torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank


def shutdown_distributed(world: int) -> None:
    """Leave the process group :func:`init_distributed` joined (nothing for one process)."""
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (nothing for one process)."""
    if world > 1:
        torch.distributed.barrier()


def rank_share(n: int, rank: int, world: int) -> range:
    """The indices ``0..n-1`` that ``rank`` of ``world`` handles: every index on exactly one rank."""
    return range(rank, n, world)


def all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` for one process)."""
    _, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def all_ranks_agree(flag: torch.Tensor, world: int) -> bool:
    """True only if ``flag`` (a tensor of booleans) is all true on every rank, so that every rank
    takes the same branch."""
    ok = flag.all().float()
    if world > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def sum_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """``t`` summed over every rank, in place (``t`` itself for one process)."""
    if world > 1:
        torch.distributed.all_reduce(t)
    return t


def launch_local(n: int, argv: Sequence[str]) -> int:
    """Start ``n`` training processes on this machine through torchrun; returns their exit code."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "segdino", "train", *argv]
    env = dict(os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    return subprocess.call(cmd, env=env)


__all__ = ["all_gather", "all_ranks_agree", "barrier", "dist_info", "init_distributed", "launch_local",
           "rank_share", "shutdown_distributed", "sum_over_ranks"]
