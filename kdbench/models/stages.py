"""Stage taps of any family, found from its blocks' output strides on one small probe input.

For each architecture, once per process: run a 64 px probe through the trunk with a forward hook on every
block of the family's body (kdbench.models.families), read each block's output stride (probe size / map
size), and name the last block at stride 4, 8, 16 and 32 stage1..stage4 (stored spelling layer1..layer4)
and the last block at stride 2 `stem` (the first block where none has stride 2, as ConvNeXt's stride-4
patchify stem). For ResNets this gives torchvision's relu, layer1..layer4: the taps v0.2 hooked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.models.families import STAGE_STRIDES, TAP_ALIASES, Family

PROBE = 64  # px: every stride up to 32 divides it, and it costs a few ms per architecture


@dataclass(frozen=True)
class Tap:
    """Where a tap is: the trunk module (dotted path), its output stride and channel count."""

    module: str
    stride: int
    channels: int


@dataclass(frozen=True)
class StagePlan:
    """An architecture's blocks (forward order), its map taps by stored name, and its pooled width."""

    arch: str
    blocks: tuple[str, ...]
    taps: dict[str, Tap]  # stem, layer1..layer4 (those the backbone has)
    pooled: int


_PLANS: dict[str, StagePlan] = {}


def body_blocks(trunk: nn.Module, family: Family) -> list[str]:
    """Dotted paths (in the trunk) of the family's blocks in forward order; `path.*` expands to children."""
    blocks = []
    for path in family.body:
        if path.endswith(".*"):
            parent = path[:-2]
            blocks += [f"{parent}.{name}" for name, _ in trunk.get_submodule(parent).named_children()]
        else:
            blocks.append(path)
    return blocks


def stage_plan(trunk: nn.Module, arch: str, family: Family) -> StagePlan:
    """The StagePlan of `arch` (computed on the first call from `trunk`, whose classifier is already gone)."""
    if arch not in _PLANS:
        _PLANS[arch] = _discover(trunk, arch, family)
    return _PLANS[arch]


def _discover(trunk: nn.Module, arch: str, family: Family) -> StagePlan:
    blocks = body_blocks(trunk, family)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [trunk.get_submodule(b).register_forward_hook(
        lambda _m, _i, out, b=b: shapes.__setitem__(b, tuple(out.shape))) for b in blocks]
    was_training = trunk.training
    try:
        trunk.eval()  # no BatchNorm statistics move
        with torch.no_grad():
            pooled = trunk(torch.zeros(1, 3, PROBE, PROBE))
    finally:
        trunk.train(was_training)
        for h in handles:
            h.remove()
    strides = {b: PROBE // shapes[b][2] for b in blocks if len(shapes.get(b, ())) == 4}
    taps: dict[str, Tap] = {}
    at_two = [b for b in strides if strides[b] == 2]
    stem = at_two[-1] if at_two else next(iter(strides))
    taps["stem"] = Tap(stem, strides[stem], shapes[stem][1])
    for stage, stride in STAGE_STRIDES.items():
        at = [b for b in strides if strides[b] == stride]
        if at:
            taps[TAP_ALIASES[stage]] = Tap(at[-1], stride, shapes[at[-1]][1])
    if pooled.dim() != 2:
        raise KdbenchError(f"{arch}: the trunk without its classifier gives {tuple(pooled.shape)}, not pooled "
                           f"features (b, c); this family is not supported")
    return StagePlan(arch, tuple(blocks), taps, int(pooled.shape[1]))
