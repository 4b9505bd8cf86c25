"""Models: PoseNet on any supported torchvision family, its taps, its weights.

Lazy: `kdbench.models.families` (names, taps, errors) is torch-free, so the CLI can read it before torch is
imported; PoseNet and friends import torch on first use.
"""

from __future__ import annotations

from typing import Any

from kdbench.models.families import (
    ALL_TAPS,
    ARCHS,
    FAMILIES,
    RESNETS,
    STAGES,
    TAP_ALIASES,
    TAPS,
    canonical_tap,
    check_arch,
    check_taps,
    family_of,
    parse_archs,
)

_LAZY = {"PoseNet", "PoseOutput", "load_weights", "init_head_sckd"}
__all__ = ["ALL_TAPS", "ARCHS", "FAMILIES", "RESNETS", "STAGES", "TAPS", "TAP_ALIASES", "canonical_tap",
           "check_arch", "check_taps", "family_of", "parse_archs", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kdbench.models import posenet

        return getattr(posenet, name)
    raise AttributeError(f"module 'kdbench.models' has no attribute {name!r}")
