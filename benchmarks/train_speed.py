"""Where training time goes: the step alone (eager fp32 batch 4, the authors' way, our compiled
bf16 step, and the same on the fused decoder), the DataLoader alone, side by side in one process.

    python benchmarks/train_speed.py --data .data/kvasir-seg --batch 32 --workers 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdino.fused import fuse_model, prime_rope  # noqa: E402
from segdino.losses import segmentation_loss  # noqa: E402
from segdino.model import build_model  # noqa: E402
from segdino.train_config import resolve_config  # noqa: E402
from segdino.training import Trainer, build_datasets, make_transform  # noqa: E402


def step_speed(batch: int, fast: bool, compile_: bool, steps: int, device: torch.device, fused: bool = False) -> float:
    """Images/s of forward + backward + AdamW on one fixed random batch.

    ``fused``: the model with the fused decoder (``segdino.fused.fuse_model``: TPA folded, resizes
    as matrix products with matrix-product backward, RoPE tables cached).
    """
    torch.manual_seed(0)
    model = build_model("vits16")
    if fused:
        model = fuse_model(model)
    model = model.to(device).train()
    if fused:
        prime_rope(model, (256, 256), device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 256, 256, device=device)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 256, 256, device=device) > 0.7).long()

    def one():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            logits = fwd(x)
        loss = segmentation_loss(logits.float(), y, "bce_dice" if fast else "bce")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        one()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def loader_speed(cfg, epochs: int = 2) -> float:
    """Images/s the DataLoader delivers (decode cache + augmentation + collate), no GPU work."""
    data = build_datasets(cfg)
    data.configure(cfg)  # volumes: the class count and augmentation the data decides
    trainer = Trainer(cfg, data.train, None, make_transform(cfg), out=Path("/tmp/loader-probe"),
                      foreground=data.foreground)
    loader = trainer.train_loader()
    rates = []
    for e in range(epochs):
        trainer.sampler.set_epoch(e)
        n, t = 0, time.perf_counter()
        for b in loader:
            n += len(b["case_id"])
        rates.append(n / (time.perf_counter() - t))
    return rates[-1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json")
    a = p.parse_args()
    dev = torch.device("cuda")
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": a.batch, "workers": a.workers}
    cfg = resolve_config(dict(data=a.data, out="/tmp/loader-probe", batch_size=a.batch, num_workers=a.workers,
                              device="cuda", quiet=True))
    out["loader_img_s"] = loader_speed(cfg)
    print(json.dumps(out), flush=True)
    out["step_eager_fp32_b4_img_s"] = step_speed(4, False, False, a.steps * 2, dev)
    print(json.dumps(out), flush=True)
    out["step_eager_bf16_img_s"] = step_speed(a.batch, True, False, a.steps, dev)
    print(json.dumps(out), flush=True)
    t = time.perf_counter()
    out["step_compiled_bf16_img_s"] = step_speed(a.batch, True, True, a.steps, dev)
    out["compile_seconds"] = time.perf_counter() - t
    print(json.dumps(out), flush=True)
    t = time.perf_counter()
    out["step_compiled_bf16_fused_img_s"] = step_speed(a.batch, True, True, a.steps, dev, fused=True)
    out["compile_seconds_fused"] = time.perf_counter() - t
    print(json.dumps(out), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
