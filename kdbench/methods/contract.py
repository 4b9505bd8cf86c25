"""The plugin contract, checked where the runner calls a method: errors say what the contract is.

A method's taps must be PoseNet's named features; `loss()` returns a non-empty dict of named loss terms,
each a scalar floating-point tensor, whose sum the student learns from (so it must carry a gradient).
"""

from __future__ import annotations

from typing import Any

import torch

from kdbench.errors import KdbenchError
from kdbench.models.families import TAP_LISTING, unknown_taps

CONTRACT = ("loss() must return a non-empty dict of named loss terms, each a scalar tensor computed from the "
            "outputs, whose sum is the training loss, e.g. {'gt': ctx.pose_loss(student, gt), 'kd': ...}")


def check_taps(method: Any) -> None:
    """Every tap a method asks for exists (before any batch: a typo is not a KeyError deep in a forward hook)."""
    for side in ("student", "teacher"):
        taps = getattr(method, f"{side}_taps")()
        bad = unknown_taps(taps)  # stage1..stage4 are the family-neutral layer1..layer4
        if bad:
            raise KdbenchError(f"method {method.name!r}: {side}_taps() names {', '.join(map(repr, bad))}, which "
                               f"PoseNet does not have; its taps are {TAP_LISTING} "
                               "(ResNet's layer1..layer4 = stage1..stage4)")


def check_terms(name: str, terms: Any) -> torch.Tensor:
    """The training loss (sum of the terms) after checking `terms` against the contract."""
    if not isinstance(terms, dict) or not terms:
        raise KdbenchError(f"method {name!r}: loss() returned {type(terms).__name__}, but {CONTRACT}")
    for key, value in terms.items():
        if not isinstance(value, torch.Tensor):
            raise KdbenchError(f"method {name!r}: loss term {key!r} is a {type(value).__name__} ({value!r:.40}), not "
                               f"a tensor: {CONTRACT} (a Python number has no gradient)")
        if value.numel() != 1 or value.dim() > 1:
            raise KdbenchError(f"method {name!r}: loss term {key!r} has shape {tuple(value.shape)}, not a scalar: "
                               f"reduce it (e.g. .mean()); {CONTRACT}")
        if not value.is_floating_point():
            raise KdbenchError(f"method {name!r}: loss term {key!r} is a {value.dtype} tensor: {CONTRACT}")
    loss = sum(v.reshape(()) for v in terms.values())
    if not loss.requires_grad:
        detached = [k for k, v in terms.items() if not v.requires_grad]
        raise KdbenchError(f"method {name!r}: the loss carries no gradient (terms {', '.join(detached)} are detached: "
                           f".detach(), .item(), torch.no_grad() or new tensors); {CONTRACT}")
    return loss
