"""Where a training step's time goes on the GPU: the kernels of one path's step (torch.profiler).

Builds the step exactly as ``segdino benchmark --train`` does (``segdino.train_benchmark``: same
config, one fixed random batch), warms it up, then profiles ``--steps`` steps and prints

- wall time per step against the sum of the GPU's kernel time per step (a wall time well above
  the kernel sum means the host, not the GPU, sets the pace: launches, syncs, Python);
- the top kernels by total CUDA time, and the share of the step in GEMMs, attention, convolutions,
  normalisation and the rest.

    python benchmarks/train_profile.py --path fast --batch 32 --log $OUT/train_profile.log

Variants of the fast path, one process each: ``--norm channels_last`` (SAD's GroupNorm on the
channels-last view, :mod:`segdino.kernels.norm`) and ``--compile-mode default`` (torch.compile's
default mode instead of the trainer's CUDA graphs, ``reduce-overhead``), set through
``segdino.fused.TRAINING`` and ``segdino.fast.TRAIN_COMPILE``, the switches the trainer reads.
``--no-profile`` times only. The log is appended to, so that several variants share one file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdino.train_benchmark import _fixed_batch, _Placeholder, path_name, step_config  # noqa: E402
from segdino.training import Trainer  # noqa: E402

GROUPS = (  # (group, substrings of kernel names), first match wins
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("GEMM", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "mm_")),
    ("convolution", ("conv", "dgrad", "wgrad", "implicit")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("normalisation (fused Triton)", ("native_group_norm", "native_layer_norm", "red_fused", "per_fused")),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "pointwise and other Triton/aten kernels"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="fast", choices=("plain", "fast"))
    ap.add_argument("--backbone", default="vits16")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--norm", default="module", choices=("module", "channels_last"))
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode of the step (default: the trainer's, segdino.fast.TRAIN_COMPILE)")
    ap.add_argument("--no-profile", action="store_true", help="time the step only")
    a = ap.parse_args()
    import segdino.fast
    import segdino.fused

    segdino.fused.TRAINING["norm"] = a.norm
    if a.compile_mode:
        segdino.fast.TRAIN_COMPILE["mode"] = a.compile_mode
    a.log.parent.mkdir(parents=True, exist_ok=True)

    def say(s: str) -> None:
        print(s, flush=True)
        with a.log.open("a") as f:
            f.write(s + "\n")

    device = torch.device("cuda")
    cfg = step_config(a.path, a.backbone, (a.image_size, a.image_size), 256, a.batch, device, True)
    trainer = Trainer(cfg, _Placeholder(a.batch), None, None, out=Path("/tmp/segdino-train-profile"))
    batch = _fixed_batch(cfg, device, 0)
    t0 = time.perf_counter()
    for _ in range(5):
        trainer.train_step(batch, 0)
    torch.cuda.synchronize()
    say(f"{path_name(trainer)} (norm {a.norm}, compile mode {segdino.fast.TRAIN_COMPILE.get('mode', 'default')}), batch {a.batch}, "
        f"{a.image_size} px, {torch.cuda.get_device_name(0)}, "
        f"torch {torch.__version__}: warm-up 5 steps {time.perf_counter() - t0:.1f} s")
    walls = []
    for _ in range(5):  # five chunks: the median, and the spread
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = trainer.train_step(batch, 0)
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / a.steps)
    wall = sorted(walls)[2]
    say(f"unprofiled: {wall * 1000:.2f} ms per step (chunks {min(walls) * 1000:.2f}-{max(walls) * 1000:.2f}), "
        f"{a.batch / wall:.0f} images/s; loss {float(loss):.4f}")
    if a.no_profile:
        return 0

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            trainer.train_step(batch, 0)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in kernels) / a.steps / 1000  # ms per step
    say(f"GPU kernel time {total:.2f} ms per step ({total / (wall * 1000):.0%} of the unprofiled wall time), "
        f"{len(kernels) / a.steps:.0f} kernels per step")
    groups: dict[str, float] = {}
    for e in kernels:
        groups[group_of(e.name)] = groups.get(group_of(e.name), 0.0) + e.device_time_total / a.steps / 1000
    for g, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        say(f"  {g:45s} {ms:7.2f} ms  {ms / total:6.1%}")
    say("")
    say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
