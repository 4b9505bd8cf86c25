"""Adaptors r from student features to teacher features (FitNet's regressor), chosen per method.

Kinds (the `adaptor` hyperparameter of hint, sckd and attentive):

- `auto` (default): identity when student and teacher features have the same shape, else a 1x1 conv
  (no bias) + ReLU. This is SCKD's rule: its Distill_Feature matches the hint layer directly when the
  channel counts agree (resnet34 -> resnet18 at layer4: 512 = 512) and goes through Trans_Student
  (conv1x1, bias=False, then ReLU) when they differ.
- `identity`: no adaptor; the shapes must match.
- `conv`: always the 1x1 conv (no bias) + ReLU, trained with the student.
- `conv-bn`: 1x1 conv (no bias) + BatchNorm + ReLU, RepDistiller's ConvReg for FitNets.

Every adaptor that has weights ends in a ReLU: every tap (stem, layer1-4, pool, embed) is post-ReLU, so
the regressor shares the teacher's non-linearity (FitNets; RepDistiller's ConvReg; SCKD's Trans_Student).
Flattened features (pool, embed) use a Linear layer (no bias) where a map uses the 1x1 conv.
Unlike SCKD's code, which re-creates its Trans_Student at random on every step and never trains it, an
adaptor here is built once from the first batch's shapes and trained with the student.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.methods.base import HParam
from kdbench.models import PoseOutput

ADAPTORS = ("auto", "identity", "conv", "conv-bn")
ADAPTOR_HELP = ("auto: identity if shapes match, else 1x1 conv + ReLU (SCKD); conv: always that; conv-bn: "
                "conv + BatchNorm + ReLU (RepDistiller's ConvReg)")
# The `adaptor` hyperparameter of every method with a hint path (frozen, so one instance serves them all).
ADAPTOR_HPARAM = HParam("auto", "str", ADAPTOR_HELP, choices=ADAPTORS)


def _check_shapes(f_s: torch.Tensor, f_t: torch.Tensor, where: str) -> None:
    if f_s.dim() != f_t.dim():
        raise KdbenchError(f"{where}: student features {tuple(f_s.shape)} and teacher features "
                           f"{tuple(f_t.shape)} differ in rank; tap the same layer in both")
    if f_s.dim() not in (2, 4):
        raise KdbenchError(f"{where}: cannot adapt features of shape {tuple(f_s.shape)}")
    if f_s.dim() == 4 and f_s.shape[2:] != f_t.shape[2:]:
        raise KdbenchError(f"{where}: student map {tuple(f_s.shape[2:])} and teacher map "
                           f"{tuple(f_t.shape[2:])} differ in size; a 1x1 adaptor cannot match them")


def make_adaptor(f_s: torch.Tensor, f_t: torch.Tensor, where: str, kind: str = "auto") -> nn.Module:
    """The adaptor of `kind` from features shaped like f_s to features shaped like f_t (one batch)."""
    if kind not in ADAPTORS:
        raise KdbenchError(f"{where}: unknown adaptor {kind!r}; use one of {', '.join(ADAPTORS)}")
    _check_shapes(f_s, f_t, where)
    same = f_s.shape[1:] == f_t.shape[1:]
    if kind == "identity" and not same:
        raise KdbenchError(f"{where}: adaptor=identity needs equal shapes, but the student gives "
                           f"{tuple(f_s.shape[1:])} and the teacher {tuple(f_t.shape[1:])}; use adaptor=auto or conv")
    if kind == "identity" or (kind == "auto" and same):
        return nn.Identity()
    c_s, c_t = f_s.shape[1], f_t.shape[1]
    if f_s.dim() == 4:
        layers: list[nn.Module] = [nn.Conv2d(c_s, c_t, 1, bias=False)]
        if kind == "conv-bn":
            layers.append(nn.BatchNorm2d(c_t))
    else:
        layers = [nn.Linear(c_s, c_t, bias=False)]
        if kind == "conv-bn":
            layers.append(nn.BatchNorm1d(c_t))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device=f_s.device, dtype=f_s.dtype)


def build_adaptors(layers: Iterable[str], student: PoseOutput, teacher: PoseOutput, where: str,
                   kind: str = "auto") -> nn.ModuleDict:
    """One adaptor per layer, keyed by tap name."""
    return nn.ModuleDict({
        name: make_adaptor(student.features[name], teacher.features[name], f"{where}, layer {name}", kind)
        for name in layers
    })


def hint_mse(adaptors: nn.ModuleDict, student: PoseOutput, teacher: PoseOutput) -> torch.Tensor:
    """Sum over the adapted layers of MSE(r(f_s), f_t) (the element mean), teacher features detached."""
    if not adaptors:
        return student.xyz.new_zeros(())
    return sum(F.mse_loss(r(student.features[name]), teacher.features[name].detach())
               for name, r in adaptors.items())


def require_setup(adaptors: nn.ModuleDict, layers: tuple[str, ...], method: str) -> nn.ModuleDict:
    """The adaptors, or a clear error if setup() was not called before loss()."""
    if set(adaptors) != set(layers):
        raise RuntimeError(f"method {method!r}: call setup(student_out, teacher_out) on the first batch "
                           "before loss() (it builds the trainable adaptors)")
    return adaptors
