"""`kdbench models`: the supported families, with each stage tap's module, channels and stride."""

from __future__ import annotations

import argparse

from kdbench.errors import KdbenchError
from kdbench.models.families import FAMILIES, STAGES, canonical_tap, default_bn_stats, family_of, parse_archs


def stage_rows(archs: list[str], crop: int = 224) -> list[dict]:
    """One row per architecture: family, pooled width, and per tap (stem, stage1..4) its channels, stride, map."""
    from kdbench.models.posenet import PoseNet

    rows = []
    for arch in archs:
        plan = PoseNet(arch).stages
        row = {"family": family_of(arch).name, "arch": arch, "pool": plan.pooled}
        for name in ("stem", *STAGES):
            tap = plan.taps.get(canonical_tap(name))
            row[name] = (f"{tap.channels} ch /{tap.stride} ({-(-crop // tap.stride)} px) {tap.module}"
                         if tap else "-")
        rows.append(row)
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    """Print the families table (each family's smallest member unless --archs names others)."""
    from tabulate import tabulate

    if args.crop < 32:
        raise KdbenchError(f"--crop {args.crop}: the stage4 tap downsamples by 32, use 32 or more")
    archs = parse_archs(args.archs, "--archs") if args.archs else [f.members[0] for f in FAMILIES]
    rows = stage_rows(archs, args.crop)
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"\ntaps: stem, stage1..stage4 (= ResNet's layer1..layer4; SCKD's modules 1-6 = stem, stage1..4, pool), "
          f"pool, embed; map sizes at {args.crop} px. Members of each family:")
    for f in FAMILIES:
        print(f"  {f.name}: {', '.join(f.members)}")
    slow = [f for f in FAMILIES if default_bn_stats(f.members[0]) == "recompute"]
    print("BatchNorm statistics (--bn-stats auto): recomputed over the training frames after the last epoch for "
          f"{', '.join(f'{f.name} (momentum {f.bn_momentum:.2g})' for f in slow)}; training's running averages "
          "for the others (kdbench/models/bn_stats.py)")
    return 0
