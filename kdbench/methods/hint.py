"""hint: FitNet hint training as RepDistiller runs it: MSE between a trained regressor's output and the teacher's.

FitNets (Romero 2015) through RepDistiller (b84f547, train_student.py --distill hint): the student's middle
stage (its default `--hint_layer 2`, here `layer2`) goes through a trained ConvReg (conv + BatchNorm + ReLU,
models/util.py), and the element-mean MSE to the teacher's feature map is added to the task loss with weight
100 (its scripts/run_cifar_distill.sh: `-b 100`), in one joint stage. adaptor=conv-bn is that ConvReg (its
1x1 conv has no bias: the BatchNorm after it removes one). Equal spatial sizes need only RepDistiller's 1x1
case, which is what resnet18 <- resnet34 gives at every stage.
SCKD's hint-only ablation is another objective and stays where SCKD has it, `sckd:sigma=0` (layer4, the
identity when channels agree: SCKD's Distill_Feature); until issue 18 `hint` defaulted to exactly that
(layer4, adaptor auto), so `--methods all,ablations` trained one objective twice.
`resize` (bilinear, added later): how maps of different sizes meet (kdbench.methods.adaptors).
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.methods.adaptors import ADAPTOR_HELP, ADAPTORS, RESIZE_HPARAM, build_adaptors, hint_mse, require_setup
from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("hint")
class Hint(LayersMethod):
    description = ("FitNet hints as RepDistiller: L_gt + w MSE(r(f_s), f_t) at layer2, r = trained ConvReg "
                   "(conv + BN + ReLU)")
    hparams = {
        "w": HParam(100.0, "float", "weight of the hint term (RepDistiller's -b 100)",
                    search=(1.0, 1e4, "log")),
        "layers": HParam(("layer2",), "layers", "hint layers (names or SCKD's numbers 1-6); RepDistiller's "
                         "hint_layer 2 = layer2"),
        "adaptor": HParam("conv-bn", "str", ADAPTOR_HELP, choices=ADAPTORS),
        "resize": RESIZE_HPARAM,
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.w", self.w)
        check_count(f"{self.name}.layers", self.layers, 1)
        self.adaptors = nn.ModuleDict()

    def setup(self, student: PoseOutput, teacher: PoseOutput | None) -> None:
        if not self.adaptors:  # once: a second call must not replace trained weights
            self.adaptors = build_adaptors(self.layers, student, teacher, self.name, self.adaptor, self.resize)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        adaptors = require_setup(self.adaptors, self.layers, self.name)
        return {"gt": ctx.pose_loss(student, gt), "hint": self.w * hint_mse(adaptors, student, teacher)}
