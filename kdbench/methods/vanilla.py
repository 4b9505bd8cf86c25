"""vanilla: regression KD, the teacher's poses as a second target (Saputra et al. 2019, eq. 3)."""

from __future__ import annotations

import torch

from kdbench.methods.base import GroundTruth, HParam, LossContext, Method
from kdbench.methods.checks import check_unit
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("vanilla")
class Vanilla(Method):
    description = "regression KD: alpha L_gt + (1 - alpha) mean_i l(p_s_i, p_t_i), imitating the teacher"
    hparams = {"alpha": HParam(0.5, "float", "weight of the ground-truth term; 1 - alpha weighs imitation",
                                search=(0.1, 0.9, "linear"))}

    def __init__(self, **params):
        super().__init__(**params)
        check_unit(f"{self.name}.alpha", self.alpha)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        imitation = ctx.pose_loss.per_sample(student.xyz, student.q, teacher.xyz.detach(), teacher.q.detach())
        return {"gt": self.alpha * ctx.pose_loss(student, gt),
                "imitation": (1 - self.alpha) * imitation.mean()}
