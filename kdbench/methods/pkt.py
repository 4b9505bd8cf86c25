"""pkt: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): match cosine-kernel densities."""

from __future__ import annotations

import torch

from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.functional import pkt
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("pkt")
class PKT(LayersMethod):
    description = "probabilistic KT (Passalis 2018): L_gt + w KL of row-normalised [0, 1] cosine kernels"
    hparams = {
        "w": HParam(30000.0, "float", "weight of the PKT term (the reference code's)",
                    search=(100.0, 1e6, "log")),
        "layers": HParam(("pool",), "layers", "tapped layers, flattened per sample"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.w", self.w)
        check_count(f"{self.name}.layers", self.layers, 1)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        term = sum(pkt(student.features[n], teacher.features[n].detach()) for n in self.layers)
        return {"gt": ctx.pose_loss(student, gt), "pkt": self.w * term}
