"""at: attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention maps.

As RepDistiller's Attention (b84f547): maps of different sizes are compared after adaptive average pooling
of the larger to the smaller (kdbench.methods.functional.attention_transfer).
"""

from __future__ import annotations

import torch

from kdbench.errors import KdbenchError
from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.functional import attention_transfer
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("at")
class AT(LayersMethod):
    description = "attention transfer (Zagoruyko 2017): L_gt + w sum MSE(normalize(mean_c f_s^2), ... f_t^2)"
    hparams = {
        "w": HParam(1000.0, "float", "weight of the attention term", search=(10.0, 1e5, "log")),
        "layers": HParam(("layer1", "layer2", "layer3", "layer4"), "layers", "feature-map layers (not pool/embed)"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.w", self.w)
        check_count(f"{self.name}.layers", self.layers, 1)
        flat = [n for n in self.layers if n in ("pool", "embed")]
        if flat:
            raise KdbenchError(f"{self.name}.layers: {', '.join(flat)} has no spatial map; use stem or layer1-4")

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        term = sum(attention_transfer(student.features[n], teacher.features[n].detach()) for n in self.layers)
        return {"gt": ctx.pose_loss(student, gt), "attention": self.w * term}
