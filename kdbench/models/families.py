"""The backbone families kdbench builds, by torchvision's own names (torch-free: the CLI reads it first).

Every family names where its blocks are (`body`: module paths in forward order, `path.*` for a container's
children) and which classifier module the PoseNet head replaces (`classifier`). The stage taps are found
from the blocks' output strides (kdbench.models.stages), not written here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kdbench.errors import KdbenchError


@dataclass(frozen=True)
class Family:
    """One torchvision family: its members, its blocks in forward order, the classifier the head replaces."""

    name: str
    members: tuple[str, ...]  # torchvision.models.list_models() names, smallest first
    body: tuple[str, ...]  # module paths in forward order; "features.*" = the children of `features`
    classifier: str  # dotted path of the module replaced by nn.Identity (its weights are not loaded)
    # torchvision's BatchNorm momentum in this family (None: no BatchNorm). Below PyTorch's 0.1 the running
    # statistics average over about 1/momentum steps, more than a short schedule has: see default_bn_stats.
    bn_momentum: float | None = 0.1


_RESNET_BODY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
FAMILIES: tuple[Family, ...] = (
    Family("resnet", ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"), _RESNET_BODY, "fc"),
    Family("resnext", ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"), _RESNET_BODY, "fc"),
    Family("wide_resnet", ("wide_resnet50_2", "wide_resnet101_2"), _RESNET_BODY, "fc"),
    Family("regnet", ("regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf", "regnet_y_800mf", "regnet_x_1_6gf",
                      "regnet_y_1_6gf", "regnet_x_3_2gf", "regnet_y_3_2gf", "regnet_x_8gf", "regnet_y_8gf",
                      "regnet_x_16gf", "regnet_y_16gf", "regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf"),
           ("stem", "trunk_output.*"), "fc"),
    Family("mobilenet_v2", ("mobilenet_v2",), ("features.*",), "classifier"),
    Family("mobilenet_v3", ("mobilenet_v3_small", "mobilenet_v3_large"), ("features.*",), "classifier",
           bn_momentum=0.01),
    Family("efficientnet", tuple(f"efficientnet_b{i}" for i in range(8)), ("features.*",), "classifier"),
    Family("efficientnet_v2", ("efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"), ("features.*",),
           "classifier"),
    Family("mnasnet", ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"), ("layers.*",), "classifier",
           bn_momentum=1 - 0.9997),
    Family("shufflenet_v2", ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                             "shufflenet_v2_x2_0"), ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), "fc"),
    # ConvNeXt's classifier is LayerNorm2d, Flatten, Linear: the LayerNorm stays (it is the trunk's last norm).
    Family("convnext", ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"), ("features.*",),
           "classifier.2", bn_momentum=None),
)
ARCHS: tuple[str, ...] = tuple(a for f in FAMILIES for a in f.members)
RESNETS = FAMILIES[0].members  # what kdbench accepted before families (v0.2)

# Tap names. The canonical spelling of the stage taps is ResNet's layer1..layer4 (what every stored result
# says); stage1..stage4 are the architecture-neutral names of the same taps: the last block at stride 4, 8,
# 16 and 32. `stem` is the last block at stride 2 (the first block where a family has none), `pool` the
# pooled features the head reads, `embed` the head's hidden layer.
TAPS = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "embed")
STAGES = ("stage1", "stage2", "stage3", "stage4")
STAGE_STRIDES = {"stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
TAP_ALIASES = {s: f"layer{i}" for i, s in enumerate(STAGES, 1)}  # stageN -> its stored spelling layerN
ALL_TAPS = TAPS + STAGES


def family_of(arch: str) -> Family:
    """The family of a supported architecture name."""
    for fam in FAMILIES:
        if arch in fam.members:
            return fam
    raise KdbenchError(unknown_arch_message(arch))


def default_bn_stats(arch: str) -> str:
    """'recompute' for families whose BatchNorm momentum is below PyTorch's 0.1, else 'running'.

    MobileNetV3 (0.01) and MnasNet (0.0003) keep running statistics that average over about 100 and 3,333
    steps: longer than the quick preset's 96 student steps, and for MnasNet than the paper preset's 1,500 on
    ShopFacade. Their eval-mode statistics then describe the first weights, not the last: a MobileNetV3-Small
    trained 30 epochs on SynthRoom predicted one constant pose (86 deg median error), and 10.9 deg with its
    statistics recomputed. At 0.1 (every other family) the last few dozen steps dominate, as in v0.2.
    """
    fam = family_of(arch)
    return "recompute" if fam.bn_momentum is not None and fam.bn_momentum < 0.1 else "running"


def unknown_arch_message(arch: str) -> str:
    """'unknown architecture X (nearest: Y); supported: ...' with every family's members."""
    # A family's name without its size ("mobilenet_v3") means one of its members, not a neighbour family.
    near = [a for a in ARCHS if a.startswith(str(arch))][:3] or difflib.get_close_matches(str(arch), ARCHS, n=1,
                                                                                          cutoff=0.4)
    hint = f" (nearest: {', '.join(near)})" if near else ""
    listing = "; ".join(f"{f.name}: {', '.join(f.members)}" for f in FAMILIES)
    return f"unknown architecture {arch!r}{hint}; supported: {listing} (`kdbench models` lists their stages)"


def check_arch(arch: str) -> str:
    """Validate an architecture name (torchvision's spelling)."""
    if arch not in ARCHS:
        raise KdbenchError(unknown_arch_message(arch))
    return arch


def parse_archs(text: str, option: str = "--student-arch") -> list[str]:
    """A comma-separated architecture list, each one checked, duplicates dropped, order kept."""
    names = [a.strip() for a in re.split(r"[,\s]+", str(text)) if a.strip()]
    if not names:
        raise KdbenchError(f"{option} {text!r}: name at least one architecture, e.g. resnet18")
    for a in names:
        if a not in ARCHS:
            raise KdbenchError(f"{option}: {unknown_arch_message(a)}")
    return list(dict.fromkeys(names))


def canonical_tap(name: str) -> str:
    """The stored spelling of a tap name: stageN -> layerN, every other name as given."""
    return TAP_ALIASES.get(name, name)


TAP_LISTING = ", ".join(TAPS[:1] + STAGES + TAPS[5:])  # the taps as errors name them (stage names, not layerN)


def unknown_taps(taps, has: Iterable[str] | None = None) -> list[str]:
    """The names in `taps` that are not taps; with `has` (a network's canonical stage taps), also those it lacks."""
    have = None if has is None else set(has) | {"pool", "embed"}
    return [t for t in taps if t not in ALL_TAPS or (have is not None and canonical_tap(t) not in have)]


def check_taps(taps, arch: str | None = None) -> tuple[str, ...]:
    """Validate tap names (canonical spelling, stage aliases accepted); the error names the taps there are."""
    taps = tuple(taps)
    bad = unknown_taps(taps)
    if bad:
        where = f"a {arch} PoseNet" if arch else "a PoseNet"
        raise KdbenchError(f"unknown feature tap(s) {', '.join(map(repr, bad))}: {where} has "
                           f"{TAP_LISTING} (ResNet's layer1..layer4 = stage1..stage4, "
                           f"SCKD's module numbers 1-6 = stem, stage1..stage4, pool)")
    return taps
