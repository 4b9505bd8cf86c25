"""attentive: M.U's KD (Saputra et al., ICCV 2019): attentive imitation (AIL) + attentive hints (AHT).

Choices where the paper leaves room or where following it literally breaks the benchmark:

- AHT is the per-sample element mean of (r(f_s) - f_t)^2 over C*H*W, weighted by Phi_i, as the hint and
  sckd terms use. A per-sample sum makes the joint schedule hint-only (measured 5.0e5 against L_ail 1.5).
- `stage2` (all): the paper's stage 2 freezes the layers stage 1 trained (after-hint). With the hint at
  layer4 that leaves only the head to train, and the trunk never sees the pose loss (+41-45% against the
  student alone). The default trains the whole student in stage 2, as FitNets does after its hint stage.
- Epochs: stage 1 takes the rounded fraction `stage1` of the epochs, at least one, and always leaves
  stage 2 at least one. With epochs = 1 there is no room for two stages: stage 1 is skipped (a warning
  says so) and the one epoch trains with L_ail; use schedule=joint to have the hint in a 1-epoch run.
- `phi_clamp` (true): the paper's eta is max - min, so 1 - e_i/eta can go negative; clamped to [0, 1].
- `adaptor` (auto), `resize` (bilinear, added later): see kdbench.methods.adaptors.
- `stage1` (0.2) has no source: the paper trains AHT first and AIL after it without a share kdbench could
  cite. The reason for 0.2: the hint stage only initialises the trunk (FitNets' hint stage is the short
  one), and every other row spends its whole budget on the pose loss, so stage 2 keeps 80% of it.
- `w_aht` (100, joint only; the paper's own schedule is two-stage and needs no weight): the hint weight of
  the other hint rows, RepDistiller's FitNet (`-b 100`, kdbench's hint w) and SCKD's alpha, so that the
  joint schedule's hint term is on the scale kdbench's other hint terms are.
- `eta_crops` (centre): eta comes from the prepare pass over the training set in eval mode on centre crops
  (once, before training, as the paper computes it), while Phi_i in
  training uses the teacher's error on the random crop the student sees, because AIL weights the imitation
  of that very prediction. A random crop whose teacher error exceeds the centre-crop range gets Phi = 0
  (clamped). `train` takes eta from one pass over random training crops (epoch 0's), the kind Phi sees.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.methods.adaptors import ADAPTOR_HPARAM, RESIZE_HPARAM, build_adaptors, require_setup
from kdbench.methods.base import GroundTruth, HParam, LossContext, Method, PoseLoss
from kdbench.methods.checks import check_count, check_nonnegative, check_unit
from kdbench.methods.registry import register_method
from kdbench.models import PoseNet, PoseOutput
from kdbench.models.posenet import has_state


def student_units(student: PoseNet) -> list[str]:
    """The student's stateful modules at the granularity a schedule freezes (trunk blocks, head, fc_*)."""
    return student.trunk_units() + [n for n, m in student.named_children() if n != "trunk" and has_state(m)]


def modules_up_to(student: PoseNet, tap: str) -> list[str]:
    """Student modules that compute `tap` (the part stage 1 trains)."""
    if tap == "embed":  # the head's hidden layer: the whole trunk and the head
        return [u for u in student_units(student) if u.startswith("trunk.")] + ["head"]
    return student.trunk_modules_up_to(tap)


@register_method("attentive")
class Attentive(Method):
    description = ("M.U's KD (Saputra 2019): imitation and hints weighted by the teacher's per-sample "
                   "error, two-stage or joint")
    hparams = {
        "alpha": HParam(0.5, "float", "AIL: weight of L_gt; 1 - alpha weighs the attentive imitation",
                        search=(0.1, 0.9, "linear")),
        "hint_layer": HParam(("layer4",), "layers", "AHT: the one hint layer (stage 1 trains up to it)"),
        "schedule": HParam("two-stage", "str", "two-stage: L_aht then L_ail (the paper); joint: "
                           "L_ail + w_aht L_aht", choices=("two-stage", "joint")),
        "stage1": HParam(0.2, "float", "two-stage: fraction of epochs in stage 1 (at least one; none if "
                         "epochs = 1)"),
        "stage2": HParam("all", "str", "two-stage: what trains in stage 2: all (FitNets) or after-hint "
                         "(the paper: stage 1's layers frozen)", choices=("all", "after-hint")),
        "w_aht": HParam(100.0, "float", "joint: weight of L_aht", search=(1.0, 1e4, "log")),
        "phi_clamp": HParam(True, "bool", "clamp Phi = 1 - e/eta to [0, 1] (the paper's can go negative)"),
        "adaptor": ADAPTOR_HPARAM,
        "eta_crops": HParam("centre", "str", "crops eta is computed on: centre (eval, the prepare pass; Phi in "
                            "training sees random crops) or train (random training crops, as Phi)",
                            choices=("centre", "train"), added_later=True),
        "resize": RESIZE_HPARAM,
    }
    needs_prepare = True

    def __init__(self, **params):
        super().__init__(**params)
        check_unit(f"{self.name}.alpha", self.alpha)
        check_count(f"{self.name}.hint_layer", self.hint_layer, 1, 1)
        check_nonnegative(f"{self.name}.w_aht", self.w_aht)
        if not 0.0 < self.stage1 < 1.0:
            raise KdbenchError(f"{self.name}.stage1 = {self.stage1} must lie strictly between 0 and 1")
        self.adaptors = nn.ModuleDict()
        # A buffer, so it goes into state_dict(): a resumed run keeps the eta it started with.
        self.register_buffer("eta", torch.tensor(float("nan")))

    def student_taps(self) -> tuple[str, ...]:
        return self.hint_layer

    def teacher_taps(self) -> tuple[str, ...]:
        return self.hint_layer

    def setup(self, student: PoseOutput, teacher: PoseOutput | None) -> None:
        if not self.adaptors:  # once: a second call must not replace trained weights
            self.adaptors = build_adaptors(self.hint_layer, student, teacher, self.name, self.adaptor, self.resize)

    def prepare(self, batches: Iterable[tuple[PoseOutput, GroundTruth]], pose_loss: PoseLoss) -> None:
        """eta = max - min of the teacher's per-sample errors over the training set."""
        lo, hi, n = math.inf, -math.inf, 0
        with torch.no_grad():
            for out, gt in batches:
                e = pose_loss.per_sample(out.xyz, out.q, gt.xyz, gt.q)
                lo, hi, n = min(lo, e.min().item()), max(hi, e.max().item()), n + e.numel()
        if not n or not hi > lo:
            raise KdbenchError(f"{self.name}: the teacher's errors over the training set have no spread "
                               f"({n} samples, eta = max - min = 0); Phi = 1 - e/eta is undefined")
        self.eta.fill_(hi - lo)

    def prepare_crops(self) -> str:
        return self.eta_crops

    def stage1_epochs(self, epochs: int) -> int:
        """Epochs in stage 1: the rounded fraction, at least 1, leaving at least 1 for stage 2 (0 if epochs = 1)."""
        if epochs < 2:
            return 0
        return min(max(1, math.floor(self.stage1 * epochs + 0.5)), epochs - 1)

    def in_stage1(self, epoch: int, epochs: int) -> bool:
        """Whether this epoch belongs to stage 1 of the two-stage schedule."""
        return self.schedule == "two-stage" and epoch < self.stage1_epochs(epochs)

    def frozen(self, student: PoseNet, epoch: int, epochs: int) -> list[str]:
        if self.schedule == "joint":
            return []
        if epochs < 2 and epoch == 0:
            warnings.warn(f"{self.name}: a two-stage schedule needs at least 2 epochs; with epochs = 1 stage 1 "
                          "(hints) is skipped and the one epoch trains with L_ail (use schedule=joint to keep "
                          "the hint term)", UserWarning, stacklevel=2)
        hinted = modules_up_to(student, self.hint_layer[0])
        if self.in_stage1(epoch, epochs):
            return [u for u in student_units(student) if u not in hinted]
        return hinted if self.stage2 == "after-hint" else []

    def phi(self, teacher: PoseOutput, gt: GroundTruth, pose_loss: PoseLoss) -> torch.Tensor:
        """Per-sample attention Phi_i = 1 - e_i / eta (clamped to [0, 1] by default)."""
        if not torch.isfinite(self.eta):
            raise RuntimeError(f"method {self.name!r}: prepare() must run before training (it sets eta)")
        e = pose_loss.per_sample(teacher.xyz, teacher.q, gt.xyz, gt.q).detach()
        phi = 1 - e / self.eta.to(e.dtype)
        return phi.clamp(0, 1) if self.phi_clamp else phi

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        phi = self.phi(teacher, gt, ctx.pose_loss)
        stage1 = self.in_stage1(ctx.epoch, ctx.epochs)
        terms: dict[str, torch.Tensor] = {}
        if self.schedule == "joint" or stage1:
            layer = self.hint_layer[0]
            r = require_setup(self.adaptors, self.hint_layer, self.name)[layer]
            diff = r(student.features[layer]) - teacher.features[layer].detach()
            aht = (phi * diff.pow(2).flatten(1).mean(1)).mean()  # element mean per sample
            if stage1:
                return {"aht": aht}
            terms["aht"] = self.w_aht * aht
        imitation = ctx.pose_loss.per_sample(student.xyz, student.q, teacher.xyz.detach(), teacher.q.detach())
        return {"gt": self.alpha * ctx.pose_loss(student, gt),
                "imitation": (1 - self.alpha) * (phi * imitation).mean(), **terms}
