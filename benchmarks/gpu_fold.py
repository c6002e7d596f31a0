"""GPU: the fast path with and without the exactly folded TPA, side by side, plus a kernel profile.

    python benchmarks/gpu_fold.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdino.benchmark import randomize_parameters  # noqa: E402
from segdino.export import fold_tpa  # noqa: E402
from segdino.fast import fast_model  # noqa: E402
from segdino.model import build_model  # noqa: E402


def timed(fn, x, n=50):
    for _ in range(10):
        fn(x)
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(x)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    model = randomize_parameters(build_model("vits16")).eval()
    ref_model = model.to(dev)
    paths = {"fast": fast_model(model, dev), "fast+folded TPA": fast_model(fold_tpa(model), dev)}
    for batch in (32, 1):
        x = torch.randn(batch, 3, 256, 256, device=dev)
        with torch.no_grad():
            ref = ref_model(x).float()
            t_ref = timed(ref_model, x, 20)
        print(f"b={batch} eager fp32 {t_ref:.3f} ms {batch / t_ref * 1e3:.0f} img/s", flush=True)
        for name, m in paths.items():
            t0 = time.perf_counter()
            y = m(x)
            c = time.perf_counter() - t0
            t = timed(m, x)
            err = ((y - ref).norm() / ref.norm()).item()
            print(f"b={batch} {name:18s} {t:.3f} ms {batch / t * 1e3:.0f} img/s relL2 {err:.1e} "
                  f"(first call {c:.0f} s)", flush=True)
    # Where the time goes at batch 32 (Triton kernels, no CUDA graphs so the profiler sees them).
    m = torch.compile(fold_tpa(model).to(dev).to(torch.bfloat16).to(memory_format=torch.channels_last))
    x = torch.randn(32, 3, 256, 256, device=dev, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):
            m(x)
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                m(x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
