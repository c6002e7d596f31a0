"""Speed of the plain eager fp32 model (the authors' way) and of our fast path, side by side.

Same random weights for both (every parameter randomised, SAD gains included); reports
parameters, GFLOPs, median latency, throughput, peak memory, the speed ratio, and the relative
L2 error between the two outputs.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .model import SegDINO, build_model


def randomize_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the SAD gains too, which start at 0 and would hide the blocks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gain"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() <= 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return model


def count_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of one forward pass on ``x`` per image (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9 / x.shape[0]


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


@dataclass
class PathResult:
    name: str
    batch: int
    median_ms: float
    images_per_s: float
    peak_mem_mib: float | None
    rel_l2_vs_eager: float | None = None


@dataclass
class BenchmarkReport:
    device: str
    torch: str
    backbone: str
    image_size: list[int]
    decoder_dim: int
    params_total: int
    params_decoder: int
    gflops_per_image: float
    results: list[PathResult] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        lines = [
            f"device: {self.device}   torch {self.torch}   {self.backbone} D={self.decoder_dim} "
            f"{self.image_size[0]}x{self.image_size[1]}",
            f"parameters: {self.params_total / 1e6:.2f} M ({self.params_decoder / 1e6:.2f} M decoder)   "
            f"{self.gflops_per_image:.1f} GFLOP/image",
            f"{'path':<28}{'batch':>6}{'median ms':>12}{'images/s':>12}{'peak MiB':>10}{'rel L2':>10}",
        ]
        for r in self.results:
            mem = f"{r.peak_mem_mib:.0f}" if r.peak_mem_mib is not None else "-"
            err = f"{r.rel_l2_vs_eager:.1e}" if r.rel_l2_vs_eager is not None else "-"
            lines.append(f"{r.name:<28}{r.batch:>6}{r.median_ms:>12.3f}{r.images_per_s:>12.1f}{mem:>10}{err:>10}")
        for k, v in self.ratios.items():
            lines.append(f"speed-up {k}: {v:.2f}x")
        lines += self.notes
        return "\n".join(lines)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def measure_path(name: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
                 warmup: int, repeats: int, reference: torch.Tensor | None, min_seconds: float = 0.0) -> tuple[PathResult, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        out = fn(x)
        times = time_fn(lambda: fn(x), device, warmup, repeats, min_seconds)
    med = statistics.median(times)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    err = rel_l2(out, reference) if reference is not None else None
    return PathResult(name, x.shape[0], med * 1000, x.shape[0] / med, mem, err), out


def run_benchmark(backbone: str = "vits16", image_size: tuple[int, int] = (256, 256), batches=(1, 32),
                  device: str | torch.device = "cuda", decoder_dim: int = 256, warmup: int = 10,
                  repeats: int = 50, compile_mode: str | None = "auto", extra_paths: dict | None = None,
                  seed: int = 0) -> BenchmarkReport:
    """Time eager fp32 and the fast path for each batch size; see the module docstring."""
    from .fast import fast_model

    device = torch.device(device)
    torch.manual_seed(seed)
    model: SegDINO = randomize_parameters(build_model(backbone, decoder_dim=decoder_dim, image_size=image_size), seed)
    model = model.eval().to(device)
    counts = model.count_parameters()
    probe = torch.randn(1, 3, *image_size, device=device)
    report = BenchmarkReport(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        torch=torch.__version__, backbone=backbone, image_size=list(image_size), decoder_dim=decoder_dim,
        params_total=counts["total"], params_decoder=counts["decoder"], gflops_per_image=count_gflops(model, probe),
    )
    fast = fast_model(model, device, compile_mode=compile_mode)
    paths: dict[str, Callable] = {"eager fp32": model}
    if fast is not model:
        paths[f"fast ({getattr(fast, 'compile_mode', None) or 'eager'} bf16)"] = fast
    for name, fn in (extra_paths or {}).items():
        paths[name] = fn
    g = torch.Generator().manual_seed(seed + 1)
    for b in batches:
        x = torch.randn(b, 3, *image_size, generator=g).to(device)
        ref = None
        first = None
        for name, fn in paths.items():
            res, out = measure_path(name, fn, x, device, warmup, repeats, ref)
            if ref is None:
                ref, first = out.float(), res
                res.rel_l2_vs_eager = 0.0
            report.results.append(res)
            if first is not None and res is not first:
                report.ratios[f"{name} vs eager fp32, batch {b}"] = first.median_ms / res.median_ms
    return report
