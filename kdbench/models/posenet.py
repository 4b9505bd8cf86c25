"""PoseNet: a torchvision trunk of any supported family plus a regression head, with named taps via hooks."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from kdbench.errors import KdbenchError
from kdbench.fileio import read_torch_file
from kdbench.models.families import STAGES, TAPS, canonical_tap, check_arch, family_of, unknown_taps
from kdbench.models.stages import StagePlan, stage_plan


class PoseOutput(NamedTuple):
    """Network output: position (b, 3), unit quaternion (b, 4), and the requested named features."""

    xyz: torch.Tensor
    q: torch.Tensor
    features: dict[str, torch.Tensor]


def has_state(m: nn.Module) -> bool:
    """Whether a module holds parameters or buffers (what freezing or saving it concerns)."""
    return any(True for _ in m.parameters()) or any(True for _ in m.buffers())


class PoseNet(nn.Module):
    """Trunk (torchvision, classifier removed) -> Linear(feat, 1024) -> ReLU -> Dropout -> xyz (3), q (4).

    `feat` is the width of the trunk's pooled features (512 for resnet18, 576 for mobilenet_v3_small, ...).
    """

    def __init__(self, arch: str = "resnet18", weights: str | os.PathLike | None = None,
                 hidden: int = 1024, dropout: float = 0.5, head_init: str = "torchvision"):
        super().__init__()
        self.arch = check_arch(arch)
        self.family = family_of(arch)
        self.trunk = tvm.get_model(arch, weights=None)
        parent, _, leaf = self.family.classifier.rpartition(".")
        setattr(self.trunk.get_submodule(parent) if parent else self.trunk, leaf, nn.Identity())
        self.stages: StagePlan = stage_plan(self.trunk, arch, self.family)
        feat = self.stages.pooled
        self.head = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc_xyz = nn.Linear(hidden, 3)
        self.fc_q = nn.Linear(hidden, 4)
        if head_init == "sckd":
            init_head_sckd(self)
        elif head_init != "torchvision":
            raise KdbenchError(f"unknown head_init {head_init!r}: use torchvision or sckd")
        if weights not in (None, "none", ""):
            load_weights(self, weights)

    def taps(self) -> tuple[str, ...]:
        """The tap names this network has (stage aliases included)."""
        maps = [t for t in TAPS if t in self.stages.taps]
        stages = [s for s in STAGES if canonical_tap(s) in self.stages.taps]
        return tuple(maps[:1] + stages + maps[1:] + ["pool", "embed"])

    def _check_taps(self, taps) -> None:
        bad = unknown_taps(taps, self.stages.taps)
        if bad:
            raise KdbenchError(f"tap(s) {', '.join(map(repr, bad))}: a {self.arch} PoseNet has "
                               f"{', '.join(self.taps())} (ResNet's layer1..layer4 name stage1..stage4)")

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | list[str] = ()) -> PoseOutput:
        """Pose of a batch; `taps` names the features to return (hooks exist only while they are asked for)."""
        feats: dict[str, torch.Tensor] = {}
        handles = []
        for name in taps:
            canon = canonical_tap(name)
            if canon in ("embed", "pool"):
                continue
            tap = self.stages.taps.get(canon)
            if tap is None:
                self._check_taps(taps)
            module = self.trunk.get_submodule(tap.module)

            def hook(_m, _inp, out, name=name):
                feats[name] = out

            handles.append(module.register_forward_hook(hook))
        try:
            pooled = self.trunk(x)
        finally:
            for h in handles:
                h.remove()
        if "pool" in taps:
            feats["pool"] = pooled
        linear, relu, dropout = self.head
        hidden = relu(linear(pooled))
        if "embed" in taps:  # before Dropout: student and teacher features are both un-noised
            feats["embed"] = hidden
        xyz, q = self.pose_head(dropout(hidden))
        return PoseOutput(xyz, q, feats)

    def pose_head(self, embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fc_xyz and fc_q outside any autocast, in the weights' dtype (float32 in training).

        Why: bf16 has 8 significant bits, so at Cambridge's 32-64 m coordinates an xyz out of a bf16 fc_xyz
        sits on a 0.25 m grid, coarser than the errors being compared.
        """
        device = embed.device.type
        # Only when autocast is on: an exported (ONNX) graph then stays free of an autocast region.
        # (The meta device, used for shape checks before training, has no autocast.)
        on = device != "meta" and torch.is_autocast_enabled(device)
        with torch.autocast(device, enabled=False) if on else nullcontext():
            embed = embed.to(self.fc_xyz.weight.dtype)
            return self.fc_xyz(embed), F.normalize(self.fc_q(embed), dim=1)

    def trunk_units(self) -> list[str]:
        """Dotted names of the trunk's stateful blocks in forward order, then its other stateful modules."""
        blocks = [b for b in self.stages.blocks if has_state(self.trunk.get_submodule(b))]
        roots = {b.split(".")[0] for b in self.stages.blocks}
        rest = [n for n, m in self.trunk.named_children() if n not in roots and has_state(m)]
        return [f"trunk.{n}" for n in blocks + rest]

    def trunk_modules_up_to(self, tap: str) -> list[str]:
        """Dotted names of the trunk modules that compute `tap` (used by staged training schedules)."""
        canon = canonical_tap(tap)
        if canon in ("pool", "embed"):
            return self.trunk_units()
        if canon not in self.stages.taps:
            self._check_taps([tap])
        last = self.stages.blocks.index(self.stages.taps[canon].module)
        upto = self.stages.blocks[:last + 1]
        return [f"trunk.{b}" for b in upto if has_state(self.trunk.get_submodule(b))]


def init_head_sckd(model: PoseNet) -> None:
    """SCKD's (poselstm-pytorch's) head initialisation: weights N(0, 0.01), xyz output N(0, 0.5), biases 0.

    Checked against SCKD's resPoseNet.weight_init_resnet (Regression: "pose" Linear and "WPQR" N(0, 0.01),
    "XYZ" N(0, 0.5), every bias 0) and poselstm-pytorch's weight_init_googlenet, which it copies.
    """
    for layer, std in ((model.head[0], 0.01), (model.fc_q, 0.01), (model.fc_xyz, 0.5)):
        nn.init.normal_(layer.weight, 0.0, std)
        nn.init.zeros_(layer.bias)


def load_weights(model: PoseNet, weights: str | os.PathLike) -> None:
    """Load `imagenet` (torchvision weights API) or a state_dict file (a whole PoseNet or a bare trunk)."""
    if str(weights) == "imagenet":
        try:
            w = tvm.get_model_weights(model.arch).DEFAULT
            state = w.get_state_dict(progress=False)
        except Exception as exc:  # offline: URLError, HTTPError, RuntimeError, depending on where it fails
            raise KdbenchError(
                f"could not fetch the ImageNet weights of {model.arch} ({type(exc).__name__}: {exc}). "
                f"Offline? Download them elsewhere and pass --weights PATH (a .pth state_dict), "
                f"or train from scratch with --weights none."
            ) from None
        _load_trunk(model, state, "torchvision ImageNet weights")
        return
    path = Path(weights).expanduser()
    state = read_torch_file(path, "weights file", ": pass --weights imagenet, none, or an existing PATH")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a kdbench checkpoint
    if any(k.startswith("trunk.") for k in state):
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError:  # same names, other shapes: another member of the family
            missing, unexpected = ["(shapes differ)"], []
        if unexpected or any(str(k).startswith(("trunk.", "(")) for k in missing):
            raise KdbenchError(f"{path} does not match a {model.arch} PoseNet (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}): was it saved from another architecture?")
    else:
        _load_trunk(model, state, str(path))


def _load_trunk(model: PoseNet, state: dict, source: str) -> None:
    drop = model.family.classifier + "."
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    try:
        missing, unexpected = model.trunk.load_state_dict(state, strict=False)
    except RuntimeError:  # same names, other shapes (resnet50 weights for a resnet101, ...)
        missing, unexpected = ["(shapes differ)"], []
    if missing or unexpected:
        raise KdbenchError(f"{source} does not match a torchvision {model.arch} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
