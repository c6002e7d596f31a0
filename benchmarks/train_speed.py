"""Where training time goes: ``segdino benchmark --train`` (the step alone per path, whole epochs
through the DataLoader, the DataLoader alone), kept under its old name and options.

    python benchmarks/train_speed.py --data .data/kvasir-seg --batch 32 --workers 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdino.cli import main as cli_main  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    argv = ["benchmark", "--train", "--data", a.data, "--batch", str(a.batch), "--num-workers", str(a.workers),
            "--steps", str(a.steps), "--epochs", str(a.epochs)]
    return cli_main(argv + (["--json", a.json] if a.json else []))


if __name__ == "__main__":
    raise SystemExit(main())
