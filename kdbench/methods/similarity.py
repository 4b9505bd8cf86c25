"""similarity: similarity-preserving KD (Tung & Mori, ICCV 2019): match the b x b activation similarities."""

from __future__ import annotations

import torch

from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.functional import similarity_preserving
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("similarity")
class Similarity(LayersMethod):
    description = "similarity-preserving KD (Tung & Mori 2019): L_gt + gamma sum ||G~_t - G~_s||_F^2 / b^2"
    hparams = {
        "gamma": HParam(3000.0, "float", "weight of the SP term (RepDistiller's -b 3000; SCKD has no SP)",
                        search=(10.0, 1e5, "log")),
        "layers": HParam(("layer4",), "layers", "tapped layers (names or SCKD's numbers 1-6)"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.gamma", self.gamma)
        check_count(f"{self.name}.layers", self.layers, 1)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        sp = sum(similarity_preserving(student.features[n], teacher.features[n].detach())
                 for n in self.layers)
        return {"gt": ctx.pose_loss(student, gt), "similarity": self.gamma * sp}
