"""rkd: relational KD (Park et al., CVPR 2019): match pairwise distances and triplet angles."""

from __future__ import annotations

import torch

from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.functional import rkd_angle, rkd_distance
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("rkd")
class RKD(LayersMethod):
    description = "relational KD (Park 2019): L_gt + w_d smooth-L1(distances) + w_a smooth-L1(angles)"
    hparams = {
        "w_d": HParam(25.0, "float", "weight of the distance term", search=(1.0, 1000.0, "log")),
        "w_a": HParam(50.0, "float", "weight of the angle term", search=(1.0, 1000.0, "log")),
        "layers": HParam(("pool",), "layers", "tapped layers, flattened per sample"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.w_d", self.w_d)
        check_nonnegative(f"{self.name}.w_a", self.w_a)
        check_count(f"{self.name}.layers", self.layers, 1)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        pairs = [(student.features[n], teacher.features[n].detach()) for n in self.layers]
        return {"gt": ctx.pose_loss(student, gt),
                "distance": self.w_d * sum(rkd_distance(s, t) for s, t in pairs),
                "angle": self.w_a * sum(rkd_angle(s, t) for s, t in pairs)}
