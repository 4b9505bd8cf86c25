"""sckd: self-cross similarity KD: match how feature similarities between samples track pose similarities.

Read against e-LENS/SCKD (models/posenet_model.py, models/resPoseNet.py, util/util.py at HEAD d09c783).
Where the published code is ambiguous or does not run, the choice is a hyperparameter:

- `zero_diagonal` (true): S_F and S_P come from torchmetrics' pairwise_cosine_similarity(x), whose
  zero_diagonal defaults to True when only x is given, so S[i, i] = 0 in both. false keeps cos = 1 there.
- `divergence` (kl): HEAD's Distill_CS always takes the KL (its --KLSC flag is read under another name,
  KLCS); an older commit (892beb0) defaults to MSE. mse = MSE(c_s, c_t) is offered.
- `kl_reduction` (batchmean): every version of the code calls kl_div(..., reduction="batchmean") on the
  1-d vector c, which torch divides by its length b; sigma = 100 was tuned with that scale. sum = the KL
  of the two distributions over the batch, b times larger.
- `sp_quat` (canonical): S_P is computed from the raw 7-d pose of the dataset file. kdbench's readers
  give unit quaternions with w >= 0; on Cambridge the files already store w >= 0 (ShopFacade: all 231
  training poses), so canonical reproduces the code there. nearest flips q_j to the sign nearer q_i per
  pair, so that S_P does not depend on the sign convention at all.
- `adaptor` (auto): SCKD matches the hint layer directly when channels agree and uses a 1x1 conv
  (no bias) + ReLU otherwise (see kdbench.methods.adaptors). Unlike the code, the adaptor is trained.
- `resize` (bilinear, added later): maps of different sizes reach the teacher's size inside the adaptor
  (kdbench.methods.adaptors); the SC term compares b x b similarities and needs no resizing.
Measured with these defaults (benchmarks/bench_grad_shares.py, SynthRoom, resnet34 -> resnet18 after 12
baseline epochs): gradient norms on the student trunk gt 14, sigma*SC 0.018, alpha*hint 131; the row is
mostly the hint, as in SCKD's code, so `--methods ablations` adds sigma = 0 and alpha = 0 rows beside it.
The published code's bugs are not copied: its KL call passes lists and probabilities where
log-probabilities are needed, and softmax is called with dim=1 on a 1-d tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.methods.adaptors import ADAPTOR_HPARAM, RESIZE_HPARAM, build_adaptors, hint_mse, require_setup
from kdbench.methods.base import GroundTruth, HParam, LossContext, Method
from kdbench.methods.checks import check_count, check_nonnegative
from kdbench.methods.functional import KL_REDUCTIONS, pose_self_similarity, sc_divergence, self_cross_similarity
from kdbench.methods.registry import register_method
from kdbench.models import PoseOutput


@register_method("sckd")
class SCKD(Method):
    description = ("self-cross similarity KD: L_gt + sigma sum D(c_t, c_s) + alpha sum MSE(r(f_s), f_t), "
                   "c_i = cos(S_F[i], S_P[i])")
    hparams = {
        "sigma": HParam(100.0, "float", "weight of the self-cross similarity term (0: hint only)",
                        search=(1.0, 1e4, "log")),
        "alpha": HParam(100.0, "float", "weight of the hint term (0 or no hint layers: SC only)",
                        search=(1.0, 1e4, "log")),
        "sc_layers": HParam(("layer2",), "layers", "self-cross similarity layers (SCKD's SCmodule: 3)"),
        "hint_layers": HParam(("layer4",), "layers", "hint layers (SCKD's hintmodule: 5)"),
        "divergence": HParam("kl", "str", "kl: KL(softmax(c_t) || softmax(c_s)); mse: MSE(c_s, c_t)",
                             choices=("kl", "mse")),
        "kl_reduction": HParam("batchmean", "str", "batchmean: KL / b, as SCKD's kl_div call on the "
                               "1-d c; sum: the KL itself", choices=KL_REDUCTIONS),
        "zero_diagonal": HParam(True, "bool", "S_F[i, i] = S_P[i, i] = 0 (torchmetrics' default, as in "
                                "SCKD); false: 1"),
        "sp_quat": HParam("canonical", "str", "q in S_P: canonical (w >= 0, as read); nearest: sign "
                          "nearer q_i per pair", choices=("canonical", "nearest")),
        "adaptor": ADAPTOR_HPARAM,
        "resize": RESIZE_HPARAM,
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
            self.adaptors = build_adaptors(self.hint_layers, student, teacher, self.name, self.adaptor, self.resize)

    def sc_term(self, student: PoseOutput, teacher: PoseOutput, gt: GroundTruth) -> torch.Tensor:
        """Sum over the SC layers of D(c_t, c_s), before the weight sigma."""
        s_p = pose_self_similarity(gt.xyz, gt.q, self.sp_quat, self.zero_diagonal)
        z = self.zero_diagonal
        return sum(sc_divergence(self_cross_similarity(student.features[n], s_p, z),
                                 self_cross_similarity(teacher.features[n].detach(), s_p, z),
                                 self.divergence, self.kl_reduction)
                   for n in self.sc_layers)

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        adaptors = require_setup(self.adaptors, self.hint_layers, self.name)
        terms = {"gt": ctx.pose_loss(student, gt), "sc": self.sigma * self.sc_term(student, teacher, gt)}
        if self.hint_layers:
            terms["hint"] = self.alpha * hint_mse(adaptors, student, teacher)
        return terms
