"""baseline: the student trained alone on ground truth; teachers train with the same loss."""

from __future__ import annotations

import torch

from kdbench.methods.base import GroundTruth, LossContext, Method
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("baseline")
class Baseline(Method):
    description = "student alone, no teacher: L = L_gt (the reference every method is compared against)"
    hparams = {}
    needs_teacher = False

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        return {"gt": ctx.pose_loss(student, gt)}
