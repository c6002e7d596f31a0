"""GPU: the fused decoder kernels checked and timed, each change on its own, plus a profile.

    python benchmarks/gpu_kernels.py [--quick]

1. Each kernel against its reference (relative L2 to float32) and timed alone at the finest SAD
   level (batch 32, 128x128, D=256) against its memory floor.
2. Whole models at batch 32 (ViT-S/16, D=256, 256x256, random weights), each compiled with
   ``reduce-overhead``: the plain model; the fast path; the fast path with one piece taken out.
   Batch 1 for the plain model and the fast path.
   ``--quick``: the plain model and the fast path only.
3. A kernel profile of the fast path at batch 32.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import segdino.fused as fused_mod  # noqa: E402
from segdino.export import fold_tpa  # noqa: E402
from segdino.benchmark import randomize_parameters, rel_l2, time_fn  # noqa: E402
from segdino.fast import FastModel, fast_model, plain_compiled_model  # noqa: E402
from segdino.kernels import upsample_add  # noqa: E402
from segdino.kernels.resize import resize_bilinear_matmul  # noqa: E402
from segdino.kernels.sad import residual_block  # noqa: E402
from segdino.model import build_model  # noqa: E402
from segdino.sad import ResidualDepthwiseBlock  # noqa: E402

DEV = torch.device("cuda")


def bench(fn, n=50):
    times = time_fn(fn, DEV, 10, n)
    return statistics.median(times) * 1e3


def kernel_checks(rows):
    torch.manual_seed(0)
    b, d = 32, 256
    x = torch.randn(b, d, 64, 64, device=DEV)
    l = torch.randn(b, d, 128, 128, device=DEV)
    ref = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False) + l
    xb = x.bfloat16().contiguous(memory_format=torch.channels_last)
    lb = l.bfloat16().contiguous(memory_format=torch.channels_last)
    y = upsample_add(xb, lb)
    rows.append(("upsample_add 64->128 + l, bf16 kernel", rel_l2(y, ref), bench(lambda: upsample_add(xb, lb))))
    eager = lambda: F.interpolate(xb, size=(128, 128), mode="bilinear", align_corners=False) + lb  # noqa: E731
    rows.append(("  reference: F.interpolate + add, bf16 eager", rel_l2(eager(), ref), bench(eager)))
    mm = lambda: resize_bilinear_matmul(xb, (128, 128)) + lb  # noqa: E731
    rows.append(("  matrix-product resize + add, bf16", rel_l2(mm(), ref), bench(mm)))
    floor = (xb.numel() + 2 * lb.numel()) * 2 / 4.3e12 * 1e3
    rows.append((f"  memory floor at 4.3 TB/s: {floor:.3f} ms", None, None))

    blk = ResidualDepthwiseBlock(d).to(DEV)
    randomize_parameters(blk, 1)
    xs = torch.randn(b, d, 128, 128, device=DEV)
    with torch.no_grad():
        ref = blk(xs)
        bb = ResidualDepthwiseBlock(d).to(DEV).bfloat16().to(memory_format=torch.channels_last)
        bb.load_state_dict(blk.state_dict())
        xsb = xs.bfloat16().contiguous(memory_format=torch.channels_last)
        y = residual_block(xsb, bb)
        rows.append(("SAD block fused (dw+pw+stats kernel, rest eager), bf16", rel_l2(y, ref),
                     bench(lambda: residual_block(xsb, bb))))
        from segdino.kernels.sad import dw_pw_stats

        rows.append(("  dw_pw_stats kernel alone", None,
                     bench(lambda: dw_pw_stats(xsb, bb.depthwise.weight, bb.pointwise.weight, 32))))
        dwc = torch.compile(lambda x: bb.pointwise(bb.depthwise(x)))
        dwc(xsb)
        rows.append(("  reference dw + pw convs, compiled", None, bench(lambda: dwc(xsb))))
        rows.append(("  reference block, bf16 eager", rel_l2(bb(xsb), ref), bench(lambda: bb(xsb))))
        cb = torch.compile(bb)
        cb(xsb)
        rows.append(("  reference block, bf16 compiled", rel_l2(cb(xsb), ref), bench(lambda: cb(xsb))))
        cf = torch.compile(lambda x: residual_block(x, bb))
        cf(xsb)
        rows.append(("  fused block, compiled", rel_l2(cf(xsb), ref), bench(lambda: cf(xsb))))
    floor = 2 * xsb.numel() * 2 / 4.3e12 * 1e3
    rows.append((f"  dw_pw_stats memory floor (read x, write t): {floor:.3f} ms", None, None))


def variant(model, name, rope=True, **fuse):
    """A compiled fused model built with ``segdino.fused.fuse_model(model, **fuse)``."""
    m = FastModel(fused_mod.fuse_model(model, rope_cache=rope, **fuse), DEV, torch.bfloat16, True,
                  "reduce-overhead", fused=False, cudnn_benchmark=True)
    fused_mod.prime_rope(m.inner, (256, 256), DEV)
    return name, m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the ablations")
    args = ap.parse_args()
    import timm
    import triton

    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, "timm",
          timm.__version__, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), flush=True)
    rows = []
    kernel_checks(rows)
    for r in rows:
        print(r, flush=True)

    model = randomize_parameters(build_model("vits16")).eval().to(DEV)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    xs = {b: torch.randn(b, 3, 256, 256, generator=g).to(DEV) for b in (32, 1)}
    with torch.no_grad():
        refs = {b: model(x).float() for b, x in xs.items()}
    paths = [("plain model, compiled", plain_compiled_model(model, DEV)),
             ("fast (default)", fast_model(model, DEV))]
    if not args.quick:
        paths += [
            ("plain + TPA folded (export.fold_tpa)",
             FastModel(fold_tpa(model), DEV, torch.bfloat16, True, "reduce-overhead", cudnn_benchmark=True)),
            variant(model, "fast, up+add as Triton kernel", resize="kernel"),
            variant(model, "fast + fused SAD blocks (Triton)", fused_blocks=True),
            variant(model, "fast - RoPE cache", rope=False),
        ]
    table = []
    for name, m in paths:
        try:
            for b in ((32, 1) if name in ("plain model, compiled", "fast (default)") else (32,)):
                t0 = time.perf_counter()
                y = m(xs[b])
                first = time.perf_counter() - t0
                ms = bench(lambda: m(xs[b]))
                table.append((name, b, ms, b / ms * 1e3, rel_l2(y, refs[b]), first))
                print(table[-1], flush=True)
        except Exception as e:  # one broken variant must not lose the others
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)

    # Kernel profile of the fast path at batch 32 (graph replays: CUPTI records the kernels inside).
    fast = paths[1][1]
    for _ in range(3):
        fast(xs[32])
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            fast(xs[32])
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))

    print("\nkernel checks: name, rel L2 vs fp32, ms")
    for r in rows:
        print(f"  {r[0]:<60} {'' if r[1] is None else f'{r[1]:.1e}':>9} {'' if r[2] is None else f'{r[2]:.3f}':>8}")
    print("models: name, batch, median ms, images/s, rel L2 vs eager fp32, first call s")
    plain = {b: ms for n, b, ms, *_ in table if n == "plain model, compiled"}
    for n, b, ms, ips, err, first in table:
        ratio = f"{plain[b] / ms:.2f}x plain" if b in plain else ""
        print(f"  {n:<44} {b:>3} {ms:8.3f} {ips:9.0f} {err:9.1e} {first:6.1f}s  {ratio}")


if __name__ == "__main__":
    main()
