"""Speed of the plain eager fp32 model (the authors' way) against our faster paths, side by side.

Same weights for every path (random by default, every parameter randomised, SAD gains included; or
a trained model's); reports parameters, GFLOPs, median latency, throughput, peak memory, each
path's speed ratio to eager fp32 and the relative L2 error of its output against eager fp32.

- On CUDA: eager fp32, the plain model compiled (our modules in bf16, channels-last,
  ``torch.compile(mode="reduce-overhead")``: what one line of code gives any user) and the fast path
  of :mod:`segdino.fast` (the same plus the fused decoder kernels), each timed on its own after
  warm-up (device events), with the fast path's ratio to the plain compiled model; with ``fp8``,
  also the fast path with FP8 backbone products (:mod:`segdino.kernels.fp8`).
- On CPU: eager PyTorch fp32 (the authors' way), then every other path with TPA folded
  (:func:`segdino.export.fold_tpa`, the same function with ~25 of 43 GFLOP removed at 256x256):
  PyTorch fp32, ONNX Runtime fp32 (the exported file), ONNX Runtime int8 (static quantisation),
  PyTorch bf16 channels-last (where the CPU has native bf16: AVX512-BF16 or AMX) and, on request,
  ``torch.compile``. The CPU is often shared, so the paths are timed in alternation (one call of
  each per round, the order rotating) and every path sees the same drift in load; the load
  average before and after is reported.

With a trained model and a dataset, each path's mean Dice on a split is measured as well (at each
image's own size), which is how reduced-precision paths are judged.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .cpu_paths import (CPU_PATHS, DEFAULT_CPU_PATHS, PATH_NAMES, PATH_PRECISION,  # noqa: F401  (named here too)
                        Bf16CpuModel, build_cpu_paths, cpu_has_native_bf16)
from .errors import ConfigError
from .model import SegDINO, build_model
from .onnx_runtime import physical_cores, rel_l2
from .progress import write
from .quantize import calibration_inputs
from .timing import (QUIET_SHARE, OtherLoad, cpu_flags, cpu_model_name, time_alternating,  # noqa: F401
                     time_fn, torch_threads, wait_for_quiet_cpu)

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


@dataclass
class PathResult:
    name: str
    batch: int
    median_ms: float
    images_per_s: float
    peak_mem_mib: float | None
    rel_l2_vs_eager: float | None = None
    ratio_vs_eager: float | None = None  # eager median / this median: > 1 is faster
    precision: str = "fp32"
    runs: int = 0
    min_ms: float | None = None
    dice: float | None = None  # mean Dice on the dataset split, when one was given
    dice_delta_vs_eager: float | None = None


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
    onnxruntime: str | None = None
    threads: int | None = None
    cpu: str | None = None
    load_average: dict[str, list[float]] | None = None  # 1/5/15-minute load before and after timing
    # Share of the machine's CPU time used by other processes while the paths were timed (Linux).
    other_cpu_share: float | None = None
    waited_for_quiet_s: float | None = None
    timing: str = ""
    weights: str = "random"  # "random", or the checkpoint's path
    dice: dict | None = None  # dataset, split, cases, when Dice was measured

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        lines = [
            f"device: {self.device}   torch {self.torch}"
            + (f"   onnxruntime {self.onnxruntime}" if self.onnxruntime else "")
            + f"   {self.backbone} D={self.decoder_dim} {self.image_size[0]}x{self.image_size[1]}",
            f"parameters: {self.params_total / 1e6:.2f} M ({self.params_decoder / 1e6:.2f} M decoder)   "
            f"{self.gflops_per_image:.1f} GFLOP/image   weights: {self.weights}",
        ]
        if self.timing:
            lines.append(f"timing: {self.timing}")
        if self.load_average:
            before, after = self.load_average.get("before"), self.load_average.get("after")
            lines.append(f"load average (1/5/15 min): before {_fmt_load(before)}, after {_fmt_load(after)}")
        if self.other_cpu_share is not None:
            waited = f" (after waiting {self.waited_for_quiet_s:.0f} s for a quiet CPU)" if self.waited_for_quiet_s else ""
            lines.append(f"other processes used {100 * self.other_cpu_share:.0f}% of the CPU while timing{waited}")
        with_dice = any(r.dice is not None for r in self.results)
        header = (f"{'path':<28}{'batch':>6}{'median ms':>11}{'images/s':>10}{'vs eager':>10}{'rel L2':>10}"
                  f"{'peak MiB':>10}")
        if with_dice:
            header += f"{'Dice':>8}{'dDice':>9}"
        lines.append(header)
        for r in self.results:
            mem = f"{r.peak_mem_mib:.0f}" if r.peak_mem_mib is not None else "-"
            err = f"{r.rel_l2_vs_eager:.1e}" if r.rel_l2_vs_eager is not None else "-"
            ratio = f"{r.ratio_vs_eager:.2f}x" if r.ratio_vs_eager is not None else "-"
            line = (f"{r.name:<28}{r.batch:>6}{r.median_ms:>11.2f}{r.images_per_s:>10.1f}{ratio:>10}{err:>10}"
                    f"{mem:>10}")
            if with_dice:
                dice = f"{r.dice:.4f}" if r.dice is not None else "-"
                delta = f"{r.dice_delta_vs_eager:+.4f}" if r.dice_delta_vs_eager is not None else "-"
                line += f"{dice:>8}{delta:>9}"
            lines.append(line)
        if self.dice:
            lines.append(f"Dice: mean over the {self.dice['cases']} '{self.dice['split']}' images of {self.dice['data']}, "
                         "at each image's own size")
        lines += self.notes
        return "\n".join(lines)


def _fmt_load(load: Sequence[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in load) if load else "-"


def measure_path(name: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
                 warmup: int, repeats: int, reference: torch.Tensor | None, min_seconds: float = 0.0) -> tuple[PathResult, torch.Tensor]:
    """Time ``fn(x)`` on its own; the result's ``rel_l2_vs_eager`` is against ``reference``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        out = fn(x)
        times = time_fn(lambda: fn(x), device, warmup, repeats, min_seconds)
    med = statistics.median(times)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    err = rel_l2(out, reference) if reference is not None else None
    res = PathResult(name, x.shape[0], med * 1000, x.shape[0] / med, mem, err, runs=len(times),
                     min_ms=min(times) * 1000)
    return res, out


# --------------------------------------------------------------------------------------------
# Dice of each path on a dataset


def dice_by_path(fns: dict[str, Callable], config, data: str | os.PathLike, split: str = "test",
                 batch_size: int = 8, limit: int | None = None) -> tuple[dict[str, float], int]:
    """Mean Dice of each path on ``split`` of ``data``, predicted at each image's own size.

    Each path runs through a :class:`segdino.predictor.Predictor`, as :func:`segdino.predict`
    does: images resized to the model's input size, logits resized back (bilinear) and
    thresholded or argmaxed. Dice is averaged over foreground classes, then images. Returns
    ``({path: mean Dice}, number of images)``.
    """
    from .data.dataset import SegmentationDataset
    from .errors import DataError
    from .ops import preprocess
    from .metrics import case_metrics
    from .predictor import Predictor

    ds = SegmentationDataset(data, split=split, num_classes=config.num_classes, image_size=None,
                             mask_threshold=config.mask_threshold)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise DataError(f"{data}: the '{split}' split is empty; no Dice to measure")
    predictors = {name: Predictor(fn, batch_size=batch_size, config=config) for name, fn in fns.items()}
    scores: dict[str, list[float]] = {name: [] for name in fns}
    for start in range(0, n, batch_size):
        items = [ds.load_native(i) for i in range(start, min(n, start + batch_size))]
        x = torch.stack([preprocess(im, config) for im, _ in items])
        for name, predictor in predictors.items():
            with torch.inference_mode():
                preds = predictor.labels_at_sizes(x, [gt.shape for _, gt in items])
            for pred, (_, gt) in zip(preds, items):
                per_class = case_metrics(pred.cpu().numpy(), gt, config.num_classes)
                scores[name].append(float(np.mean([m["dice"] for m in per_class.values()])))
    return {name: float(np.mean(v)) for name, v in scores.items()}, n


# --------------------------------------------------------------------------------------------
# Entry point


def run_benchmark(backbone: str = "vits16", image_size: tuple[int, int] = (256, 256), batches=(1, 32),
                  device: str | torch.device = "cuda", decoder_dim: int = 256, warmup: int = 10,
                  repeats: int = 50, compile_mode: str | None = "auto", extra_paths: dict | None = None,
                  seed: int = 0, paths: Sequence[str] | None = None, threads: int | None = None,
                  model: SegDINO | None = None, data: str | os.PathLike | None = None, split: str = "test",
                  weights_name: str | None = None, wait_quiet: float = 0.0, fp8: bool = False) -> BenchmarkReport:
    """Time eager fp32 against the faster paths for each batch size; see the module docstring.

    Args:
        model: weights to use (its backbone, decoder width and input size win over the arguments);
            default a model built from ``backbone``/``decoder_dim``/``image_size`` with random weights.
        paths: CPU paths among ``eager`` (always first), ``folded``, ``onnx``, ``onnx-int8``,
            ``bf16``, ``compile``, ``compile-bf16``; default ``eager,folded,onnx,onnx-int8`` plus
            ``bf16`` where the CPU has native bf16. Ignored on CUDA (eager fp32 against :func:`segdino.fast.fast_model`).
        threads: CPU threads for every path (default: the physical cores).
        repeats: timed calls per path (CPU: rounds of alternating calls).
        data: a dataset folder; with it, each path's mean Dice on ``split`` is measured.
        fp8: GPU only: also time the fast path with the backbone's linear layers as FP8 products
            (:mod:`segdino.kernels.fp8`; on GPUs of compute capability 8.9 or newer).
        wait_quiet: CPU only: before timing, wait up to this many seconds until other processes
            leave the CPU (almost) idle, and time again (discarding the timing) while they took 10%
            or more of it during the timing; a shared CPU slows PyTorch's threads far more than
            ONNX Runtime's, which would flatter the ratios.

    Returns:
        a :class:`BenchmarkReport` (``to_json()`` for machines, ``table()`` for people).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    if model is None:
        model = randomize_parameters(build_model(backbone, decoder_dim=decoder_dim, image_size=image_size), seed)
        weights = "random"
    else:
        weights = weights_name or "given model"
    cfg = model.config
    image_size = tuple(cfg.image_size)
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    counts = model.count_parameters()
    probe = torch.randn(1, 3, *image_size, device=device)
    if device.type == "cpu":
        threads = int(threads or physical_cores())
        with torch_threads(threads):
            gflops = count_gflops(model, probe)
        dev_name = f"cpu ({cpu_model_name()}, {threads} threads)"
    else:
        gflops = count_gflops(model, probe)
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    report = BenchmarkReport(
        device=dev_name, torch=torch.__version__, backbone=cfg.backbone, image_size=list(image_size),
        decoder_dim=cfg.decoder_dim, params_total=counts["total"], params_decoder=counts["decoder"],
        gflops_per_image=gflops, weights=weights,
    )
    if device.type == "cpu":
        _run_cpu(report, model, image_size, batches, warmup, repeats, compile_mode, extra_paths, seed, paths,
                 threads, data, split, wait_quiet)
    else:
        _run_gpu(report, model, image_size, batches, device, warmup, repeats, compile_mode, extra_paths, seed,
                 fp8, data, split)
    return report


PLAIN_COMPILED = "plain model, compiled"


FP8_PATH = "fast + FP8 backbone products"


def _run_gpu(report, model, image_size, batches, device, warmup, repeats, compile_mode, extra_paths, seed,
             fp8=False, data=None, split="test") -> None:
    from .fast import fast_model, plain_compiled_model
    from .kernels.fp8 import fp8_supported

    fast = fast_model(model, device, compile_mode=compile_mode)
    fns: dict[str, Callable] = {"eager fp32": model}
    precision = {"eager fp32": "fp32"}
    if fast is not model:
        # The peer any user has: our unmodified modules, bf16, channels-last, one line of torch.compile.
        fns[PLAIN_COMPILED], precision[PLAIN_COMPILED] = plain_compiled_model(model, device), "bf16"
        name = f"fast ({getattr(fast, 'compile_mode', None) or 'eager'} bf16)"
        fns[name], precision[name] = fast, "bf16"
        report.notes.append(f"{PLAIN_COMPILED}: the model's own modules in bf16, channels-last, cuDNN autotuning, "
                            "torch.compile(mode='reduce-overhead'); fast: the same plus the fused decoder kernels "
                            "(segdino.fused)")
        if fp8 and fp8_supported(device):
            fns[FP8_PATH], precision[FP8_PATH] = fast_model(model, device, compile_mode=compile_mode, fp8=True), "fp8"
            report.notes.append(f"{FP8_PATH}: the fast path with the backbone's linear layers as row-scaled e4m3 "
                                "products (segdino.kernels.fp8), bf16 elsewhere")
        elif fp8:
            report.notes.append(f"{FP8_PATH}: not run, this GPU has no FP8 tensor cores (compute capability < 8.9)")
    for name, fn in (extra_paths or {}).items():
        fns[name] = fn
    report.timing = f"median of {repeats} calls per path after {warmup} warm-up calls, each path on its own (CUDA events)"
    g = torch.Generator().manual_seed(seed + 1)
    for b in batches:
        x = torch.randn(b, 3, *image_size, generator=g).to(device)
        ref = first = None
        by_name = {}
        for name, fn in fns.items():
            res, out = measure_path(name, fn, x, device, warmup, repeats, ref)
            res.precision = precision.get(name, "?")
            if ref is None:
                ref, first = out.float(), res
                res.rel_l2_vs_eager = 0.0
            res.ratio_vs_eager = first.median_ms / res.median_ms
            report.results.append(res)
            # Each path's line as it is measured (stderr, flushed): a run cut by a time limit keeps them.
            write(f"batch {b}: {name}: {res.median_ms:.3f} ms median, {res.images_per_s:,.0f} images/s, "
                  f"{res.ratio_vs_eager:.2f}x eager fp32", stream=sys.stderr)
            by_name[name] = res
            if res is not first:
                report.ratios[f"{name} vs eager fp32, batch {b}"] = res.ratio_vs_eager
        plain = by_name.get(PLAIN_COMPILED)
        for name, res in by_name.items():
            if plain is not None and name not in ("eager fp32", PLAIN_COMPILED):
                ratio = plain.median_ms / res.median_ms
                report.ratios[f"{name} vs {PLAIN_COMPILED}, batch {b}"] = ratio
                report.notes.append(f"batch {b}: {name} is {ratio:.2f}x {PLAIN_COMPILED}")
    if data is not None:
        dice = _add_dice(report, fns, model.config, data, split, "eager fp32")
        for name, value in dice.items():
            write(f"{split} Dice: {name}: {value:.4f} ({value - dice['eager fp32']:+.4f} vs eager fp32)",
                  stream=sys.stderr)


def _add_dice(report, fns, config, data, split, reference: str) -> dict[str, float]:
    """Each path's mean Dice on ``split`` of ``data`` (returned) into the report's rows, beside the reference's."""
    dice, cases = dice_by_path(fns, config, data, split)
    report.dice = {"data": str(data), "split": split, "cases": cases}
    for res in report.results:
        res.dice = dice[res.name]
        res.dice_delta_vs_eager = dice[res.name] - dice[reference]
    return dice


def _cpu_paths(paths: Sequence[str] | None, compile_mode: str | None) -> tuple[list[str], str]:
    """The CPU paths to run (eager first) and the compile mode for those that compile."""
    if paths is None:
        paths = list(DEFAULT_CPU_PATHS if cpu_has_native_bf16() else [p for p in DEFAULT_CPU_PATHS if p != "bf16"])
        if compile_mode not in (None, "auto"):
            paths.append("compile")
    unknown = [p for p in paths if p not in CPU_PATHS]
    if unknown:
        raise ConfigError(f"unknown CPU path(s) {', '.join(unknown)}; expected some of {', '.join(CPU_PATHS)}")
    paths = ["eager"] + [p for p in dict.fromkeys(paths) if p != "eager"]
    return paths, "default" if compile_mode in (None, "auto") else compile_mode


def _run_cpu(report, model, image_size, batches, warmup, repeats, compile_mode, extra_paths, seed, paths,
             threads, data, split, wait_quiet=0.0) -> None:
    paths, compile_mode = _cpu_paths(paths, compile_mode)
    with contextlib.suppress(ImportError):
        import onnxruntime

        report.onnxruntime = onnxruntime.__version__
    report.threads = threads
    report.cpu = cpu_model_name()
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="segdino-bench-") as tmp:
        calibration = calibration_inputs(data, model.config, seed=seed) if "onnx-int8" in paths else None
        fns, notes = build_cpu_paths(model, paths, Path(tmp), image_size, threads, calibration, compile_mode)
        report.notes.append("every path but eager fp32 computes TPA folded (segdino.export.fold_tpa): the same "
                            "function with the resize + 3x3 conv done at low resolution")
        report.notes += notes
        for name, fn in (extra_paths or {}).items():
            fns[name] = fn
        precision = {PATH_NAMES[k]: PATH_PRECISION[k] for k in paths}
        report.timing = (f"median of {repeats} alternating rounds (one call of every path per round, order rotating) "
                         f"after {warmup} warm-up rounds; {threads} threads for every path; wall clock")
        # Build inputs and run every path once (compiling ones compile here) before waiting and timing.
        g = torch.Generator().manual_seed(seed + 1)
        inputs = [torch.randn(b, 3, *image_size, generator=g) for b in batches]
        outputs = _first_outputs(fns, inputs, report)
        _time_cpu_paths(report, fns, batches, inputs, outputs, precision, warmup, repeats, wait_quiet)
        if data is not None:
            _add_dice(report, fns, model.config, data, split, PATH_NAMES["eager"])


def _first_outputs(fns: dict[str, Callable], inputs: list[torch.Tensor], report) -> list[dict[str, torch.Tensor]]:
    """Every path's logits on each input; a path that fails on the first input is dropped with a note."""
    with torch.inference_mode():
        for name, fn in list(fns.items()):
            if name == PATH_NAMES["eager"]:
                continue
            try:
                fn(inputs[0])
            except Exception as e:  # a compiler or runtime failure drops that path, not the benchmark
                first_line = (str(e).strip().splitlines() or [""])[0][:200]
                report.notes.append(f"{name}: not run ({type(e).__name__}: {first_line})")
                del fns[name]
        return [{name: fn(x).float() for name, fn in fns.items()} for x in inputs]


def _time_cpu_paths(report, fns, batches, inputs, outputs, precision, warmup, repeats, wait_quiet) -> None:
    """Time the paths in alternation; with ``wait_quiet``, again while other processes were busy."""
    deadline = time.perf_counter() + wait_quiet
    waited, attempts = 0.0, 0
    while True:
        attempts += 1
        if wait_quiet > 0:
            waited += wait_for_quiet_cpu(max(0.0, deadline - time.perf_counter()))
        load_before = list(os.getloadavg())
        others = OtherLoad().start()
        results, ratios = [], {}
        for b, x, outs in zip(batches, inputs, outputs):
            with torch.inference_mode():
                times = time_alternating({name: (lambda fn=fn: fn(x)) for name, fn in fns.items()}, warmup, repeats)
            ref = outs[PATH_NAMES["eager"]]
            eager_med = statistics.median(times[PATH_NAMES["eager"]])
            for name, ts in times.items():
                med = statistics.median(ts)
                res = PathResult(name, b, med * 1000, b / med, None, rel_l2(outs[name], ref), eager_med / med,
                                 precision.get(name, "?"), len(ts), min(ts) * 1000)
                results.append(res)
                if name != PATH_NAMES["eager"]:
                    ratios[f"{name} vs eager fp32, batch {b}"] = res.ratio_vs_eager
        share = others.stop()
        # Waiting asked for: time again while others took a real share of the CPU and time is left.
        if wait_quiet <= 0 or share is None or share < QUIET_SHARE or time.perf_counter() >= deadline:
            break
    report.results += results
    report.ratios.update(ratios)
    report.other_cpu_share = share
    report.load_average = {"before": load_before, "after": list(os.getloadavg())}
    if wait_quiet > 0:
        report.waited_for_quiet_s = round(waited, 1)
        if attempts > 1:
            report.notes.append(f"timed {attempts} times: earlier timings, while other processes used "
                                f">= {100 * QUIET_SHARE:.0f}% of the CPU, were discarded")
