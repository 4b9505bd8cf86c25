"""hint: FitNet hint training, MSE between adapted student features and the teacher's.

FitNets (Romero 2015) and RepDistiller's HintLoss: the element-mean MSE between r(f_s) and f_t. The
adaptor r defaults to `auto` (identity when the shapes match, else 1x1 conv + ReLU, as SCKD's hint
path); RepDistiller always trains a ConvReg (conv + BatchNorm + ReLU): adaptor=conv-bn.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.methods.adaptors import ADAPTOR_HPARAM, build_adaptors, hint_mse, require_setup
from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("hint")
class Hint(LayersMethod):
    description = "FitNet hints: L_gt + w sum MSE(r(f_s), f_t), r = adaptor (identity or trained 1x1 conv + ReLU)"
    hparams = {
        "w": HParam(100.0, "float", "weight of the hint term"),
        "layers": HParam(("layer4",), "layers", "hint layers (names or SCKD's numbers 1-6)"),
        "adaptor": ADAPTOR_HPARAM,
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.w", self.w)
        check_count(f"{self.name}.layers", self.layers, 1)
        self.adaptors = nn.ModuleDict()

    def setup(self, student: PoseOutput, teacher: PoseOutput | None) -> None:
        if not self.adaptors:  # once: a second call must not replace trained weights
            self.adaptors = build_adaptors(self.layers, student, teacher, self.name, self.adaptor)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        adaptors = require_setup(self.adaptors, self.layers, self.name)
        return {"gt": ctx.pose_loss(student, gt), "hint": self.w * hint_mse(adaptors, student, teacher)}
