"""Whole training epochs through the real DataLoader, alone: the epoch rows of ``segdino benchmark
--train`` (``segdino.train_benchmark.measure_epochs``) without the step paths before them, for a
short GPU call. Prints the rows and writes them as JSON.

    python benchmarks/train_epochs.py --data .data/kvasir-seg --workers 12 --json $OUT/epochs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdino.train_benchmark import measure_epochs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="vits16")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segdino-epochs-") as tmp:
        rows, notes = measure_epochs(a.data, a.backbone, (a.image_size, a.image_size), 256, a.batch, a.epochs,
                                     device, device.type == "cuda", Path(tmp) / "run", a.workers)
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "command": "python benchmarks/train_epochs.py " + " ".join(sys.argv[1:]),
           "seconds": round(time.perf_counter() - t0, 1), "rows": [asdict(r) for r in rows], "notes": notes}
    for r in rows:
        print(f"{r.name}: {r.median_ms:.0f} ms, {r.images_per_s:.1f} images/s")
    print("\n".join(notes))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
