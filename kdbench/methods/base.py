"""The method plugin contract: a Method is an nn.Module (its adaptors and state live in its state_dict)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.methods.functional import full_precision
from kdbench.models import ALL_TAPS, TAPS, PoseNet, PoseOutput, canonical_tap

# SCKD's command line numbers the taps 1..6 (stem, layer1, layer2, layer3, layer4, pool). Stage names
# (stage1..stage4) are stored in ResNet's spelling (layer1..layer4), so `sc_layers=stage2` and
# `sc_layers=layer2` are one job with one id.
SCKD_MODULE_NUMBERS = {str(i + 1): name for i, name in enumerate(TAPS[:6])}


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: default, type ("float" | "int" | "bool" | "str" | "layers"), help, choices, search."""

    default: Any
    type: str
    help: str
    choices: tuple[str, ...] = ()
    # True for a parameter added after results were stored: its default must reproduce what the method did
    # before it existed, and at that default it is left out of the job's identity (config.LEGACY_*).
    added_later: bool = False
    # The range `kdbench tune` searches: (low, high, "log" | "linear" | "int"); None: not tuned. Not a value
    # of the method, so never part of a job's identity.
    search: tuple[float, float, str] | None = None

    def __post_init__(self):
        if self.search is not None:
            check_search(self.search, f"hyperparameter ({self.help[:40]!r})", self.type)

    def parse(self, value: Any, where: str) -> Any:
        """Convert a value (often a string from --set) to this parameter's type, or raise a clear error."""
        try:
            if self.type == "float":
                out = float(value)
                if not math.isfinite(out):  # NaN passes every range check (all comparisons are False)
                    raise KdbenchError(f"{where}: {value!r} is not a finite number; give a float such as 0.5")
            elif self.type == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                out = int(value)
            elif self.type == "bool":
                if isinstance(value, bool):
                    out = value
                elif str(value).lower() in ("1", "true", "yes", "on"):
                    out = True
                elif str(value).lower() in ("0", "false", "no", "off"):
                    out = False
                else:
                    raise ValueError(value)
            elif self.type == "layers":
                # "," in --set sckd.sc_layers=2,3; "+" inside a --methods variant, where "," separates methods
                items = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
                out = tuple(canonical_tap(SCKD_MODULE_NUMBERS.get(str(i).strip(), str(i).strip()))
                            for i in items if str(i).strip())
                bad = [i for i in out if i not in ALL_TAPS]
                if bad:
                    raise KdbenchError(f"{where}: unknown layer(s) {', '.join(bad)}; use stem, stage1..stage4 "
                                       f"(ResNet's layer1..layer4), pool, embed, or SCKD's module numbers 1-6")
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise KdbenchError(f"{where}: {value!r} is not a valid {self.type}") from None
        if self.choices and out not in self.choices:
            raise KdbenchError(f"{where}: {out!r} is not one of {', '.join(self.choices)}")
        return out


SEARCH_SCALES = ("log", "linear", "int")


def check_search(search: object, where: str, type_: str = "float") -> tuple[float, float, str]:
    """A search range (low, high, scale) checked: numeric bounds, low < high, a log range above 0."""
    if not (isinstance(search, (tuple, list)) and len(search) == 3 and search[2] in SEARCH_SCALES
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in search[:2])):
        raise KdbenchError(f"{where}: search={search!r} must be (low, high, scale) with scale one of "
                           f"{', '.join(SEARCH_SCALES)}, e.g. search=(1.0, 10000.0, 'log')")
    low, high, scale = search
    if type_ not in ("float", "int"):
        raise KdbenchError(f"{where}: search={search!r} on a {type_} hyperparameter: only float and int ones "
                           "are searched; drop search= or make it numeric")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise KdbenchError(f"{where}: search={search!r} has low >= high: write it as (low, high, {scale!r}) "
                           f"with low < high, e.g. search=({min(low, high)!r}, {max(low, high)!r}, {scale!r})")
    if scale == "log" and low <= 0:
        raise KdbenchError(f"{where}: search={search!r} is a log range through 0: a log range needs low > 0 "
                           f"(e.g. ({high / 1e4!r}, {high!r}, 'log')), or use 'linear'")
    if (scale == "int" or type_ == "int") and not (float(low).is_integer() and float(high).is_integer()):
        raise KdbenchError(f"{where}: search={search!r} on integers needs whole-number bounds")
    return float(low), float(high), scale


class GroundTruth(NamedTuple):
    """Ground-truth poses of a batch: xyz (b, 3), unit sign-canonical q (b, 4)."""

    xyz: torch.Tensor
    q: torch.Tensor


class PoseLoss(nn.Module):
    """PoseNet loss ||x - x'||^2 + beta ||q - q'||^2, or Kendall's learned weighting (s_x, s_q trainable).

    `form="mean"` takes the element mean over the 3 and 4 coordinates instead of the sum, as SCKD's code
    (poselstm-pytorch's nn.MSELoss) does: beta = 500 there equals beta = 375 in the sum form. Every term runs
    in float32 outside autocast (bf16 inputs promoted): a 5 cm error at 100 m is below bf16's resolution.
    """

    def __init__(self, beta: float, learned: bool = False, form: str = "sum"):
        super().__init__()
        if form not in ("sum", "mean"):
            raise KdbenchError(f"pose loss form must be 'sum' or 'mean', got {form!r}")
        self.beta = float(beta)
        self.learned = learned
        self.form = form
        if learned:
            self.s_x = nn.Parameter(torch.tensor(0.0))
            self.s_q = nn.Parameter(torch.tensor(-3.0))

    def _reduce(self, sq: torch.Tensor) -> torch.Tensor:
        return sq.mean(1) if self.form == "mean" else sq.sum(1)

    @full_precision
    def per_sample(self, xyz: torch.Tensor, q: torch.Tensor, xyz_ref: torch.Tensor,
                   q_ref: torch.Tensor) -> torch.Tensor:
        """l(p, p') per sample (b,), always with the fixed beta (KD terms use this form)."""
        return self._reduce((xyz - xyz_ref) ** 2) + self.beta * self._reduce((q - q_ref) ** 2)

    def forward(self, out: PoseOutput, gt: GroundTruth) -> torch.Tensor:
        """L_gt: mean over the batch (fixed beta), or the learned weighting of its two parts."""
        return self._gt_loss(out.xyz, out.q, gt.xyz, gt.q)

    @full_precision
    def _gt_loss(self, xyz: torch.Tensor, q: torch.Tensor, xyz_gt: torch.Tensor,
                 q_gt: torch.Tensor) -> torch.Tensor:
        if not self.learned:
            return self.per_sample(xyz, q, xyz_gt, q_gt).mean()
        l_x = self._reduce((xyz - xyz_gt) ** 2).mean()
        l_q = self._reduce((q - q_gt) ** 2).mean()
        return l_x * torch.exp(-self.s_x) + self.s_x + l_q * torch.exp(-self.s_q) + self.s_q


@dataclass
class LossContext:
    """What a method's loss may know besides the outputs: the pose loss and where training is."""

    pose_loss: PoseLoss
    epoch: int  # 0-based
    epochs: int


class Method(nn.Module):
    """Base class of distillation methods; subclass, set the class attributes, decorate with @register_method.

    A method never touches files, devices, optimisers or data loading: the runner calls these hooks.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}
    needs_teacher: ClassVar[bool] = True

    def __init__(self, **params: Any):
        super().__init__()
        unknown = sorted(set(params) - set(self.hparams))
        if unknown:
            valid = ", ".join(self.hparams) or "(none)"
            raise KdbenchError(f"method {self.name!r} has no hyperparameter {', '.join(unknown)}; valid: {valid}")
        self.params: dict[str, Any] = {
            k: hp.parse(params.get(k, hp.default), f"{self.name}.{k}") for k, hp in self.hparams.items()
        }

    def __getattr__(self, item: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and item in params:
            return params[item]
        return super().__getattr__(item)

    def student_taps(self) -> tuple[str, ...]:
        """Named student features the loss needs."""
        return ()

    def teacher_taps(self) -> tuple[str, ...]:
        """Named teacher features the loss needs."""
        return ()

    def setup(self, student: PoseOutput, teacher: PoseOutput | None) -> None:
        """Build trainable adaptors from the first batch's shapes (they train with the student)."""

    def prepare(self, batches: Iterable[tuple[PoseOutput, GroundTruth]], pose_loss: PoseLoss) -> None:
        """Optional pass over the training set before training: teacher outputs (eval, no augmentation)."""

    needs_prepare: ClassVar[bool] = False

    def prepare_crops(self) -> str:
        """Crops prepare() sees: "centre" (eval crops, no augmentation) or "train" (random training crops)."""
        return "centre"

    def frozen(self, student: PoseNet, epoch: int, epochs: int) -> list[str]:
        """Dotted names of student modules that do not train in this epoch (two-stage schedules)."""
        return []

    def loss(self, student: PoseOutput, teacher: PoseOutput | None, gt: GroundTruth,
             ctx: LossContext) -> dict[str, torch.Tensor]:
        """Named loss terms whose sum is the training loss, the ground-truth term included."""
        raise NotImplementedError


class LayersMethod(Method):
    """A method that taps the same layers, its `layers` hyperparameter, in student and teacher."""

    def student_taps(self) -> tuple[str, ...]:
        return tuple(self.layers)

    def teacher_taps(self) -> tuple[str, ...]:
        return tuple(self.layers)
