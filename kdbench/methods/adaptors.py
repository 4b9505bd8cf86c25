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

Across families (a MobileNetV3 student of a ResNet34 teacher) the widths differ at every stage tap, so
`auto` gives the 1x1 conv; the maps have the same size wherever both nets downsample by the tap's stride.
Where they do not (odd crops, a student tapped at another stride), the `resize` hyperparameter (added
later, HParam(added_later=True)) says how the adapted student map reaches the teacher's size:

- `bilinear` (default): F.interpolate(bilinear, align_corners=False) of the adapted student map to the
  teacher's size. Equal sizes (every job v0.2 could run) are untouched, so the default changes no result.
- `pool`: adaptive average pooling of the adapted student map to the teacher's size (`at` pools the larger
  of its two maps to the smaller, RepDistiller's rule, in kdbench.methods.functional).
- `none`: sizes must match (v0.2's behaviour: an error naming this fix).

The ReLU at the end of an adaptor assumes post-ReLU teacher taps, which every ResNet tap is; a teacher of
another family (MobileNet blocks end in a linear projection) keeps the ReLU too, a deviation only where
such a teacher is chosen.
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
RESIZES = ("bilinear", "pool", "none")
RESIZE_HELP = "maps of unequal size: bilinear or pool to the teacher's; none: error"
RESIZE_HPARAM = HParam("bilinear", "str", RESIZE_HELP, choices=RESIZES, added_later=True)


class Resize(nn.Module):
    """A map to a fixed spatial size (bilinear, or adaptive average pooling); no weights."""

    def __init__(self, size: tuple[int, int], mode: str):
        super().__init__()
        self.size, self.mode = tuple(size), mode

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if tuple(f.shape[2:]) == self.size:
            return f
        if self.mode == "pool":
            return F.adaptive_avg_pool2d(f, self.size)
        return F.interpolate(f, size=self.size, mode="bilinear", align_corners=False)


def _check_shapes(f_s: torch.Tensor, f_t: torch.Tensor, where: str, resize: str = "none") -> None:
    if f_s.dim() != f_t.dim():
        raise KdbenchError(f"{where}: student features {tuple(f_s.shape)} and teacher features "
                           f"{tuple(f_t.shape)} differ in rank; tap the same layer in both")
    if f_s.dim() not in (2, 4):
        raise KdbenchError(f"{where}: cannot adapt features of shape {tuple(f_s.shape)}")
    if f_s.dim() == 4 and f_s.shape[2:] != f_t.shape[2:] and resize == "none":
        raise KdbenchError(f"{where}: student map {tuple(f_s.shape[2:])} and teacher map "
                           f"{tuple(f_t.shape[2:])} differ in size and resize=none; set resize=bilinear (or "
                           f"pool), or tap layers at the same stride")


def make_adaptor(f_s: torch.Tensor, f_t: torch.Tensor, where: str, kind: str = "auto",
                 resize: str = "none") -> nn.Module:
    """The adaptor of `kind` from features shaped like f_s to features shaped like f_t (one batch).

    Where the maps differ in size, `resize` (bilinear or pool) ends the adaptor with a Resize to the teacher's.
    """
    if kind not in ADAPTORS:
        raise KdbenchError(f"{where}: unknown adaptor {kind!r}; use one of {', '.join(ADAPTORS)}")
    _check_shapes(f_s, f_t, where, resize)
    c_s, c_t = f_s.shape[1], f_t.shape[1]
    if kind == "identity" and c_s != c_t:
        raise KdbenchError(f"{where}: adaptor=identity needs equal widths, but the student gives {c_s} channels "
                           f"({tuple(f_s.shape[1:])}) and the teacher {c_t} ({tuple(f_t.shape[1:])}); use "
                           f"adaptor=auto or conv (a trained 1x1 conv), or tap a layer of equal width")
    sized = [Resize(tuple(f_t.shape[2:]), resize)] if f_s.dim() == 4 and f_s.shape[2:] != f_t.shape[2:] else []
    if kind == "identity" or (kind == "auto" and c_s == c_t):
        return nn.Sequential(*sized) if sized else nn.Identity()
    if f_s.dim() == 4:
        layers: list[nn.Module] = [nn.Conv2d(c_s, c_t, 1, bias=False)]
        if kind == "conv-bn":
            layers.append(nn.BatchNorm2d(c_t))
    else:
        layers = [nn.Linear(c_s, c_t, bias=False)]
        if kind == "conv-bn":
            layers.append(nn.BatchNorm1d(c_t))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers, *sized).to(device=f_s.device, dtype=f_s.dtype)


def build_adaptors(layers: Iterable[str], student: PoseOutput, teacher: PoseOutput, where: str,
                   kind: str = "auto", resize: str = "none") -> nn.ModuleDict:
    """One adaptor per layer, keyed by tap name."""
    return nn.ModuleDict({
        name: make_adaptor(student.features[name], teacher.features[name], f"{where}, layer {name}", kind, resize)
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
