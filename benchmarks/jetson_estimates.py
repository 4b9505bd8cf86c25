"""Add Jetson Nano latency ESTIMATES (not measurements) to a results store or a JSON file for `kdbench import`.

Each row is the published torch2trt batch-1 224x224 FP16 figure of the torchvision ResNet (DATASETS.md) scaled
by the PoseNet/ResNet GFLOPs ratio; rows carry estimated=1 and the formula in their note, and the leaderboard
shows them as "(estimated: ...)". Measure on a real board instead with
`kdbench profile --export DIR` here, then `kdbench profile --onnx FILE --out rows.json` there.

    python benchmarks/jetson_estimates.py --runs-dir runs
"""

from __future__ import annotations

import argparse

from kdbench.profile import jetson_nano_estimates
from kdbench.profile_onnx import emit_rows


def main() -> None:
    """Parse options, compute the estimates, print and record them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet18,resnet34,resnet50")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--no-store", action="store_true")
    args = p.parse_args()
    emit_rows(jetson_nano_estimates(tuple(args.archs.split(",")), args.crop), args)


if __name__ == "__main__":
    main()
