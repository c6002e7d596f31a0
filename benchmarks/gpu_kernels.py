"""GPU: the fast path's variants timed side by side in one process, plus a kernel profile.

    python benchmarks/gpu_kernels.py --log results/gpu/gpu_kernels_DATE.log [--kernels] [--budget 200]

ViT-S/16, D=256, 256x256, random weights, bf16, channels-last, every model compiled with
``reduce-overhead`` (CUDA graphs). Variants (``segdino.fused.fuse_model`` options):

- ``plain model, compiled``: the model's own modules (the peer any user has);
- ``fast, 1x1 as cuDNN convs (default)``: :func:`segdino.fast.fast_model` as it is;
- ``fast + linear 1x1``: the decoder's 1x1 convs as GEMMs on the channels-last view
  (``pointwise="linear"``, what training runs);
- ``fast + linear 1x1 + tiled SAD blocks`` (batch 32): also SAD's depthwise + pointwise + GroupNorm
  statistics in one Triton kernel, output channels split over programs
  (``fused_blocks="tiled"``);
- ``fast, 1x1 convs, tables from numpy`` (batch 1): the cuDNN-conv variant with the interpolation matrices
  built as they were before they were cached on the device (numpy inside the compiled region: host
  work and a host-to-device copy per call, which also make Inductor skip CUDA graphs): what the
  cache changed;
- ``fast + two-pass SAD blocks``: SAD's residual blocks whole in the two-pass Triton kernel
  (``fused_blocks="twopass"``);
- ``fast + FP8 backbone products``: the default fast path with the ViT blocks' linear layers as
  row-scaled e4m3 products (``fast_model(..., fp8=True)``, :mod:`segdino.kernels.fp8`);
- ``fast + linear 1x1 + up-add kernel`` (batch 32): linear 1x1 convs and SAD's ``up(x) + l`` as the
  Triton kernel.

Before the models: the fused SAD block kernels alone at the finest level (batch 32, 128x128,
D=256), against cuDNN's depthwise conv + the pointwise GEMM, each checked against float32; and the
whole block as the two-pass kernel (``fused_blocks="twopass"``, and ``"twopass_dw"`` after a
cuDNN depthwise pass) in a sweep of tiles, against the reference block compiled. ``--only WORD ...`` compiles only the variants whose names contain a word
(the plain model always), e.g. ``--only default two-pass``. ``--no-block-kernels`` skips the
one-pass block kernels and ``--no-sweep`` the tile sweep; with both, the models are timed at once.

Batch 32 and batch 1; all variants are compiled first, then timed in alternating rounds (each
round: every variant, starting variant rotating) so that drifts of the machine hit all alike. Per
variant: CUDA graph skips and graphs compiled (both from Inductor's counters). Then a kernel
profile (torch.profiler, top CUDA kernels) of the fastest variant at batch 32 and at batch 1.
``--kernels``: also each kernel alone against its reference at the finest SAD level.
``--budget``: seconds after which no further variant is compiled (the profile still runs).
Everything printed also goes to ``--log``, line by line as it comes.
"""

import argparse
import contextlib
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdino.benchmark import randomize_parameters, rel_l2, time_fn  # noqa: E402
from segdino.fast import fast_model, plain_compiled_model  # noqa: E402
from segdino.kernels import upsample_add  # noqa: E402
from segdino.kernels.resize import resize_bilinear_matmul  # noqa: E402
from segdino.kernels.sad import residual_block  # noqa: E402
from segdino.model import build_model  # noqa: E402
from segdino.sad import ResidualDepthwiseBlock  # noqa: E402

DEV = torch.device("cuda")
LOG = None


def log(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG is not None:
        with open(LOG, "a") as f:
            f.write(line + "\n")


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def bench(fn, n=50):
    return statistics.median(time_fn(fn, DEV, 10, n)) * 1e3


def block_kernels():
    """The SAD block's first half alone at the finest level: both fused kernels and cuDNN + cuBLAS."""
    from segdino.kernels.pointwise import pointwise_linear
    from segdino.kernels.sad import combine_stats, dw_pw_stats

    torch.manual_seed(0)
    b, d, n = 32, 256, 128
    blk = randomize_parameters(ResidualDepthwiseBlock(d), 1).to(DEV)
    xs = torch.randn(b, d, n, n, device=DEV)
    xb = xs.bfloat16().contiguous(memory_format=torch.channels_last)
    dw, pw = blk.depthwise.weight.bfloat16(), blk.pointwise.weight.bfloat16()
    with torch.no_grad():
        ref = blk.pointwise(blk.depthwise(xs))
        mean_ref = ref.view(b, 32, -1).mean(-1)
        rows = []
        for name, tiled in (("wide", False), ("tiled", True)):
            try:
                t, st = dw_pw_stats(xb, dw, pw, 32, tiled)
                mean, _ = combine_stats(st, n, d // 32)
                rows.append((f"dw_pw_stats, {name} kernel", rel_l2(t, ref), rel_l2(mean, mean_ref),
                             bench(lambda: dw_pw_stats(xb, dw, pw, 32, tiled))))
            except Exception as e:  # a kernel that fails to build must not stop the run
                log(f"  dw_pw_stats {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
        ref_fn = lambda: pointwise_linear(F.conv2d(xb, dw, padding=1, groups=d), pw)  # noqa: E731
        rows.append(("cuDNN depthwise + pointwise GEMM, eager", rel_l2(ref_fn(), ref), None, bench(ref_fn)))
    log("\nSAD block first half at 128x128, batch 32: name, rel L2 of t, rel L2 of group means, ms")
    for name, e1, e2, ms in rows:
        log(f"  {name:<44} {e1:9.1e} {'' if e2 is None else f'{e2:9.1e}':>9} {ms:8.3f}")
    log(f"  memory floor (read x, write t) at 4.3 TB/s: {2 * xb.numel() * 2 / 4.3e12 * 1e3:.3f} ms")


# Tiles tried for the two-pass block kernel: (BM pixels, BN output channels, BK input channels per
# step, warps, pipeline stages).
TWOPASS_SWEEP = [(128, 128, 64, 8, 3), (128, 128, 32, 8, 3), (64, 256, 64, 8, 3), (64, 256, 32, 8, 2),
                 (128, 256, 32, 8, 2), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (256, 128, 32, 8, 2)]


# Tiles for the two-pass kernel after a cuDNN depthwise pass (plain matrix products: wider BK fits).
TWOPASS_DW_SWEEP = [(128, 256, 64, 8, 3), (128, 128, 64, 8, 3), (64, 256, 64, 4, 3), (128, 256, 32, 8, 4),
                    (256, 128, 64, 8, 3), (64, 256, 32, 4, 2)]


def block_twopass():
    """The whole SAD block at the finest level (batch 32, 128x128, D=256): the two-pass kernel in
    each tile of the sweep against the reference block compiled, bf16, each checked against float32."""
    import segdino.kernels.sad as sad_kernels

    torch.manual_seed(0)
    b, d, n = 32, 256, 128
    blk = randomize_parameters(ResidualDepthwiseBlock(d), 1).to(DEV)
    with torch.no_grad():
        blk.gain.fill_(0.7)
    xs = torch.randn(b, d, n, n, device=DEV)
    bb = ResidualDepthwiseBlock(d).to(DEV).bfloat16().to(memory_format=torch.channels_last)
    bb.load_state_dict(blk.state_dict())
    xb = xs.bfloat16().contiguous(memory_format=torch.channels_last)
    saved = dict(sad_kernels.TWOPASS)
    rows = []
    with torch.no_grad():
        ref = blk(xs) - xs  # the residual branch: the identity part would hide errors
        cb = torch.compile(bb)
        cb(xb)
        rows.append(("reference block, bf16, torch.compile", rel_l2(cb(xb) - xb, ref), bench(lambda: cb(xb))))
        saved_dw = dict(sad_kernels.TWOPASS_DW)
        for kernel, sweep, table in (("twopass", TWOPASS_SWEEP, sad_kernels.TWOPASS),
                                     ("twopass_dw", TWOPASS_DW_SWEEP, sad_kernels.TWOPASS_DW)):
            for bm, bn, bk, warps, stages in sweep:
                table.update(BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages)
                name = f"{kernel} BM={bm} BN={bn} BK={bk} warps={warps} stages={stages}"
                try:
                    y = residual_block(xb, bb, kernel)
                    rows.append((name, rel_l2(y - xb, ref), bench(lambda: residual_block(xb, bb, kernel))))
                except Exception as e:  # a tile that fails to build must not stop the sweep
                    log(f"  {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
        for table, old in ((sad_kernels.TWOPASS, saved), (sad_kernels.TWOPASS_DW, saved_dw)):
            table.clear()
            table.update(old)
    log("\nSAD block at 128x128, batch 32, D=256: name, rel L2 of the residual branch vs fp32, ms")
    for name, err, ms in rows:
        log(f"  {name:<60} {err:9.1e} {ms:8.3f}")
    log(f"  memory floor of the two passes (read x twice, write y) at 4.3 TB/s: "
        f"{3 * xb.numel() * 2 / 4.3e12 * 1e3:.3f} ms; pointwise products (2 x {2 * b * n * n * d * d / 1e9:.0f} "
        f"GFLOP) at 700 TFLOP/s: {2 * 2 * b * n * n * d * d / 700e12 * 1e3:.3f} ms")


def kernel_checks():
    torch.manual_seed(0)
    b, d = 32, 256
    rows = []
    x = torch.randn(b, d, 64, 64, device=DEV)
    l = torch.randn(b, d, 128, 128, device=DEV)
    ref = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False) + l
    xb = x.bfloat16().contiguous(memory_format=torch.channels_last)
    lb = l.bfloat16().contiguous(memory_format=torch.channels_last)
    rows.append(("upsample_add 64->128 + l, bf16 kernel", rel_l2(upsample_add(xb, lb), ref),
                 bench(lambda: upsample_add(xb, lb))))
    mm = lambda: resize_bilinear_matmul(xb, (128, 128)) + lb  # noqa: E731
    rows.append(("  matrix-product resize + add, bf16", rel_l2(mm(), ref), bench(mm)))
    rows.append((f"  memory floor at 4.3 TB/s: {(xb.numel() + 2 * lb.numel()) * 2 / 4.3e12 * 1e3:.3f} ms", None, None))
    blk = randomize_parameters(ResidualDepthwiseBlock(d), 1).to(DEV)
    xs = torch.randn(b, d, 128, 128, device=DEV)
    with torch.no_grad():
        ref = blk(xs)
        bb = ResidualDepthwiseBlock(d).to(DEV).bfloat16().to(memory_format=torch.channels_last)
        bb.load_state_dict(blk.state_dict())
        xsb = xs.bfloat16().contiguous(memory_format=torch.channels_last)
        rows.append(("SAD block fused (dw+pw+stats kernel, rest eager), bf16", rel_l2(residual_block(xsb, bb), ref),
                     bench(lambda: residual_block(xsb, bb))))
        cb = torch.compile(bb)
        cb(xsb)
        rows.append(("  reference block, bf16 compiled", rel_l2(cb(xsb), ref), bench(lambda: cb(xsb))))
    log("\nkernel checks: name, rel L2 vs fp32, ms")
    for r in rows:
        log(f"  {r[0]:<60} {'' if r[1] is None else f'{r[1]:.1e}':>9} {'' if r[2] is None else f'{r[2]:.3f}':>8}")


class _CudagraphSkips(logging.Handler):
    """Collects Inductor's "skipping cudagraphs due to ..." messages (the reason for a skip)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage()[:300])


def _numpy_table(name, host, on_device, device, dtype):
    """A table built from numpy on every call, as before the device cache (one function object:
    Dynamo guards on its identity)."""
    return torch.from_numpy(host()).to(device, dtype)


@contextlib.contextmanager
def numpy_tables():
    """Interpolation matrices from :func:`_numpy_table` while inside."""
    import segdino.kernels.fold as fold
    import segdino.kernels.resize as resize

    saved = fold.device_table, resize.device_table
    fold.device_table = resize.device_table = _numpy_table
    try:
        yield
    finally:
        fold.device_table, resize.device_table = saved


class WithNumpyTables:
    """Calls a model with :func:`numpy_tables` active on every call, so that the guards of the graph
    compiled that way keep holding (outside it, Dynamo would recompile with the cached tables)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        with numpy_tables():
            return self.model(x)


def variants(model):
    """(name, build, batches)."""
    return [
        ("plain model, compiled", lambda: plain_compiled_model(model, DEV), (32, 1)),
        ("fast, 1x1 as cuDNN convs (default)", lambda: fast_model(model, DEV), (32, 1)),
        ("fast + linear 1x1", lambda: fast_model(model, DEV, fused={"pointwise": "linear"}), (32, 1)),
        ("fast + linear 1x1 + tiled SAD blocks",
         lambda: fast_model(model, DEV, fused={"pointwise": "linear", "fused_blocks": "tiled"}), (32,)),
        ("fast, 1x1 convs, tables from numpy",
         lambda: WithNumpyTables(fast_model(model, DEV, fused={"pointwise": "conv"})), (1,)),
        ("fast + two-pass SAD blocks",
         lambda: fast_model(model, DEV, fused={"fused_blocks": "twopass"}), (32, 1)),
        ("fast + two-pass SAD blocks after cuDNN depthwise",
         lambda: fast_model(model, DEV, fused={"fused_blocks": "twopass_dw"}), (32, 1)),
        ("fast + FP8 backbone products", lambda: fast_model(model, DEV, fp8=True), (32, 1)),
        ("fast + linear 1x1 + up-add kernel",
         lambda: fast_model(model, DEV, fused={"pointwise": "linear", "resize": "kernel"}), (32,)),
    ]


def profile(name, m, x, calls=10):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(3):
        m(x)
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        for _ in range(calls):
            m(x)
        sync()
    log(f"\nprofile: {name}, batch {x.shape[0]}, {calls} calls (totals over all calls)")
    key = "cuda_time_total" if DEV.type == "cuda" else "cpu_time_total"
    log(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))


def main():
    global LOG, DEV
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", type=Path, required=True, help="file the output is written to (appended)")
    ap.add_argument("--kernels", action="store_true", help="also time each kernel alone")
    ap.add_argument("--budget", type=float, default=200.0, help="seconds after which no variant is compiled")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    ap.add_argument("--backbone", default="vits16")
    ap.add_argument("--size", type=int, default=256, help="image size")
    ap.add_argument("--device", default="cuda", help="cpu only to check the script itself (no compiling)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="compile only the variants whose names contain one of these words (plain always)")
    ap.add_argument("--no-block-kernels", action="store_true", help="skip the one-pass block kernels' section")
    ap.add_argument("--no-sweep", action="store_true",
                    help="skip the two-pass kernels' tile sweep (with --no-block-kernels: straight to the models)")
    ap.add_argument("--sweep", default=None,
                    help="two-pass tiles to try instead of TWOPASS_SWEEP: 'BM,BN,BK,warps,stages;...'")
    ap.add_argument("--sweep-dw", default=None, help="the same for TWOPASS_DW_SWEEP (after cuDNN's depthwise)")
    ap.add_argument("--blocks-only", action="store_true", help="stop after the block sections (no models)")
    args = ap.parse_args()
    LOG, DEV = args.log, torch.device(args.device)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    import timm
    import triton
    from torch._dynamo.utils import counters
    import torch._inductor.cudagraph_utils as cgu

    # Every variant compiles the same forward functions again (other modules, other options):
    # more than Dynamo's default of 8 recompilations per function.
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    skips = _CudagraphSkips()
    if hasattr(cgu, "cudagraphs_log"):
        cgu.cudagraphs_log.addHandler(skips)
    log(torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", "torch", torch.__version__,
        "triton", triton.__version__, "timm",
        timm.__version__, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    for given, sweep in ((args.sweep, TWOPASS_SWEEP), (args.sweep_dw, TWOPASS_DW_SWEEP)):
        if given:
            sweep[:] = [tuple(int(v) for v in t.split(",")) for t in given.split(";") if t]
    cuda_sections = ([] if args.no_block_kernels else [block_kernels]) + ([] if args.no_sweep else [block_twopass])
    for section in (cuda_sections if DEV.type == "cuda" else []) + ([kernel_checks] if args.kernels else []):
        try:
            section()
        except Exception as e:  # the model timings matter more than any one kernel check
            log(f"{section.__name__}: FAILED {type(e).__name__}: {str(e)[:300]}")

    if args.blocks_only:
        log(f"\ntotal {time.perf_counter() - start:.0f} s")
        return
    model = randomize_parameters(build_model(args.backbone)).eval().to(DEV)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    xs = {b: torch.randn(b, 3, args.size, args.size, generator=g).to(DEV) for b in (32, 1)}
    with torch.no_grad():
        refs = {b: model(x).float() for b, x in xs.items()}

    built = {}  # (name, batch) -> (model, rel L2, first call s)
    log("\ncompiling: name, batch, first call s, rel L2 vs eager fp32, CUDA graph skips, graphs compiled")
    for name, build, batches in variants(model):
        if args.only is not None and name != "plain model, compiled" and not any(w in name for w in args.only):
            continue
        if time.perf_counter() - start > args.budget:
            log(f"  {name}: skipped (past the {args.budget:.0f} s budget)")
            continue
        try:
            m = build()
            for b in batches:
                if time.perf_counter() - start > args.budget:
                    log(f"  {name}, batch {b}: skipped (past the {args.budget:.0f} s budget)")
                    continue
                sk, graphs = counters["inductor"]["cudagraph_skips"], counters["stats"]["unique_graphs"]
                n_msgs = len(skips.messages)
                t0 = time.perf_counter()
                y = m(xs[b])
                m(xs[b])  # a second call: CUDA graph trees record on it
                sync()
                first = time.perf_counter() - t0
                built[name, b] = (m, rel_l2(y, refs[b]), first)
                log(f"  {name:<40} {b:>3} {first:6.1f}s {built[name, b][1]:8.1e} "
                    f"{counters['inductor']['cudagraph_skips'] - sk:>3} "
                    f"{counters['stats']['unique_graphs'] - graphs:>3}")
                for msg in skips.messages[n_msgs:]:
                    log(f"      {msg}")
        except Exception as e:  # one broken variant must not lose the others
            log(f"  {name}: FAILED {type(e).__name__}: {str(e)[:300]}")

    log(f"\ntiming: {args.rounds} alternating rounds of {args.calls} calls per variant (CUDA events, "
        "synchronised per call); median over all calls, range of the round medians; host ms: wall time "
        "per call without synchronising (launch-bound when close to the median)")
    results = {}
    graphs_before = counters["stats"]["unique_graphs"]
    for b in (32, 1):
        names = [n for (n, bb) in built if bb == b]
        per = {n: [] for n in names}
        for r in range(args.rounds):
            k = r % max(1, len(names))
            for n in names[k:] + names[:k]:
                if n not in per:
                    continue
                m = built[n, b][0]
                try:
                    per[n].append(time_fn(lambda: m(xs[b]), DEV, 2, args.calls))
                except Exception as e:  # one broken variant must not lose the others
                    log(f"  {n}, batch {b}: FAILED while timing {type(e).__name__}: {str(e)[:300]}")
                    del per[n]
        for n in per:
            m = built[n, b][0]
            sync()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                m(xs[b])
            host = (time.perf_counter() - t0) / args.calls * 1e3
            sync()
            all_ms = [t * 1e3 for rnd in per[n] for t in rnd]
            rounds = [statistics.median(rnd) * 1e3 for rnd in per[n]]
            results[n, b] = (statistics.median(all_ms), min(rounds), max(rounds), host)

    log(f"graphs compiled while timing (0 expected): {counters['stats']['unique_graphs'] - graphs_before}")
    log("\nmodels: name, batch, median ms, images/s, round medians min-max, host ms, vs plain, rel L2, first call s")
    for b in (32, 1):
        plain = results.get(("plain model, compiled", b))
        for (n, bb), (ms, lo, hi, host) in results.items():
            if bb != b:
                continue
            ratio = f"{plain[0] / ms:.2f}x" if plain else ""
            log(f"  {n:<40} {b:>3} {ms:8.3f} {b / ms * 1e3:8.0f}  {lo:.3f}-{hi:.3f} {host:7.3f} {ratio:>6} "
                f"{built[n, b][1]:8.1e} {built[n, b][2]:6.1f}s")

    for b in (32, 1):
        timed = {n: r[0] for (n, bb), r in results.items() if bb == b and n != "plain model, compiled"}
        if timed:
            best = min(timed, key=timed.get)
            try:
                profile(best, built[best, b][0], xs[b])
            except Exception as e:
                log(f"profile of {best}: FAILED {type(e).__name__}: {str(e)[:300]}")
    log(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
