"""sckd: self-cross similarity KD: match how feature similarities between samples track pose similarities."""

from __future__ import annotations

import torch
from torch import nn

from kdbench.methods.adaptors import build_adaptors, hint_mse, require_setup
from kdbench.methods.base import GroundTruth, HParam, LossContext, Method
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.functional import cosine_self_similarity as self_sim
from kdbench.methods.functional import pose_vector, sc_divergence, self_cross_similarity
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("sckd")
class SCKD(Method):
    description = ("self-cross similarity KD: L_gt + sigma sum D(c_t, c_s) + alpha sum MSE(r(f_s), f_t), "
                   "c_i = cos(S_F[i], S_P[i])")
    hparams = {
        "sigma": HParam(100.0, "float", "weight of the self-cross similarity term"),
        "alpha": HParam(100.0, "float", "weight of the hint term (0 or no hint layers: none)"),
        "sc_layers": HParam(("layer2",), "layers", "self-cross similarity layers (SCKD's SCmodule: 3)"),
        "hint_layers": HParam(("layer4",), "layers", "hint layers, trained adaptor (SCKD's hintmodule: 5)"),
        "divergence": HParam("kl", "str", "kl: KL(softmax(c_t) || softmax(c_s)); mse: MSE(c_s, c_t)",
                             choices=("kl", "mse")),
    }

    def __init__(self, **params):
        super().__init__(**params)
        check_nonnegative(f"{self.name}.sigma", self.sigma)
        check_nonnegative(f"{self.name}.alpha", self.alpha)
        check_count(f"{self.name}.sc_layers", self.sc_layers, 1)
        self.adaptors = nn.ModuleDict()

    def student_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.sc_layers + self.hint_layers))

    def teacher_taps(self) -> tuple[str, ...]:
        return self.student_taps()

    def setup(self, student: PoseOutput, teacher: PoseOutput | None) -> None:
        # Built once and trained with the student (the published code re-creates it at random every step).
        if not self.adaptors:
            self.adaptors = build_adaptors(self.hint_layers, student, teacher, self.name)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        adaptors = require_setup(self.adaptors, self.hint_layers, self.name)
        s_p = self_sim(pose_vector(gt))
        sc = sum(sc_divergence(self_cross_similarity(student.features[n], s_p),
                               self_cross_similarity(teacher.features[n].detach(), s_p), self.divergence)
                 for n in self.sc_layers)
        terms = {"gt": ctx.pose_loss(student, gt), "sc": self.sigma * sc}
        if self.hint_layers:
            terms["hint"] = self.alpha * hint_mse(adaptors, student, teacher)
        return terms
