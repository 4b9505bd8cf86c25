"""Trainable adaptors from student features to teacher features (FitNet's regressor r)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.models import PoseOutput


def make_adaptor(f_s: torch.Tensor, f_t: torch.Tensor, where: str) -> nn.Module:
    """1x1 conv + BatchNorm for feature maps, Linear for flattened features; shapes from one batch."""
    if f_s.dim() != f_t.dim():
        raise KdbenchError(f"{where}: student features {tuple(f_s.shape)} and teacher features "
                           f"{tuple(f_t.shape)} differ in rank; tap the same layer in both")
    if f_s.dim() == 4:
        if f_s.shape[2:] != f_t.shape[2:]:
            raise KdbenchError(f"{where}: student map {tuple(f_s.shape[2:])} and teacher map "
                               f"{tuple(f_t.shape[2:])} differ in size; a 1x1 adaptor cannot match them")
        r = nn.Sequential(nn.Conv2d(f_s.shape[1], f_t.shape[1], 1, bias=False), nn.BatchNorm2d(f_t.shape[1]))
    elif f_s.dim() == 2:
        r = nn.Linear(f_s.shape[1], f_t.shape[1])
    else:
        raise KdbenchError(f"{where}: cannot adapt features of shape {tuple(f_s.shape)}")
    return r.to(device=f_s.device, dtype=f_s.dtype)


def build_adaptors(layers: Iterable[str], student: PoseOutput, teacher: PoseOutput,
                   where: str) -> nn.ModuleDict:
    """One adaptor per layer, keyed by tap name."""
    return nn.ModuleDict({
        name: make_adaptor(student.features[name], teacher.features[name], f"{where}, layer {name}")
        for name in layers
    })


def hint_mse(adaptors: nn.ModuleDict, student: PoseOutput, teacher: PoseOutput) -> torch.Tensor:
    """Sum over the adapted layers of MSE(r(f_s), f_t), teacher features detached."""
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
