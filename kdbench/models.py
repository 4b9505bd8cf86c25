"""PoseNet: a torchvision ResNet trunk plus a regression head, with named feature taps via forward hooks."""

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

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TAPS = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "embed")
# Trunk module whose output each tap is; `embed` is the head's hidden layer and handled in forward().
_TAP_MODULES = {"stem": "relu", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3",
                "layer4": "layer4", "pool": "avgpool"}


class PoseOutput(NamedTuple):
    """Network output: position (b, 3), unit quaternion (b, 4), and the requested named features."""

    xyz: torch.Tensor
    q: torch.Tensor
    features: dict[str, torch.Tensor]


def check_arch(arch: str) -> str:
    """Validate an architecture name."""
    if arch not in ARCHS:
        raise KdbenchError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    return arch


def check_taps(taps) -> tuple[str, ...]:
    """Validate tap names."""
    taps = tuple(taps)
    bad = [t for t in taps if t not in TAPS]
    if bad:
        raise KdbenchError(f"unknown feature tap(s) {', '.join(map(repr, bad))}: use {', '.join(TAPS)}")
    return taps


class PoseNet(nn.Module):
    """ResNet trunk (torchvision, fc removed) -> Linear(feat, 1024) -> ReLU -> Dropout -> xyz (3), q (4)."""

    def __init__(self, arch: str = "resnet18", weights: str | os.PathLike | None = None,
                 hidden: int = 1024, dropout: float = 0.5, head_init: str = "torchvision"):
        super().__init__()
        self.arch = check_arch(arch)
        self.trunk = tvm.get_model(arch, weights=None)
        feat = self.trunk.fc.in_features
        self.trunk.fc = nn.Identity()
        self.head = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc_xyz = nn.Linear(hidden, 3)
        self.fc_q = nn.Linear(hidden, 4)
        if head_init == "sckd":
            init_head_sckd(self)
        elif head_init != "torchvision":
            raise KdbenchError(f"unknown head_init {head_init!r}: use torchvision or sckd")
        if weights not in (None, "none", ""):
            load_weights(self, weights)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | list[str] = ()) -> PoseOutput:
        """Pose of a batch; `taps` names the features to return (hooks exist only while they are asked for)."""
        feats: dict[str, torch.Tensor] = {}
        handles = []
        for name in taps:
            if name == "embed":
                continue
            module = getattr(self.trunk, _TAP_MODULES[name])

            def hook(_m, _inp, out, name=name):
                feats[name] = torch.flatten(out, 1) if name == "pool" else out

            handles.append(module.register_forward_hook(hook))
        try:
            pooled = self.trunk(x)
        finally:
            for h in handles:
                h.remove()
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
        with torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext():
            embed = embed.to(self.fc_xyz.weight.dtype)
            return self.fc_xyz(embed), F.normalize(self.fc_q(embed), dim=1)

    def trunk_modules_up_to(self, tap: str) -> list[str]:
        """Dotted names of the trunk modules that compute `tap` (used by staged training schedules)."""
        order = ["trunk.conv1", "trunk.bn1", "trunk.layer1", "trunk.layer2", "trunk.layer3", "trunk.layer4"]
        stop = {"stem": 2, "layer1": 3, "layer2": 4, "layer3": 5, "layer4": 6, "pool": 6}[tap]
        return order[:stop]


def init_head_sckd(model: PoseNet) -> None:
    """SCKD's (poselstm-pytorch's) head initialisation: weights N(0, 0.01), xyz output N(0, 0.5), biases 0.

    Checked against SCKD's resPoseNet.weight_init_resnet (Regression: "pose" Linear and "WPQR" N(0, 0.01),
    "XYZ" N(0, 0.5), every bias 0) and poselstm-pytorch's weight_init_googlenet, which it copies.
    """
    for layer, std in ((model.head[0], 0.01), (model.fc_q, 0.01), (model.fc_xyz, 0.5)):
        nn.init.normal_(layer.weight, 0.0, std)
        nn.init.zeros_(layer.bias)


def load_weights(model: PoseNet, weights: str | os.PathLike) -> None:
    """Load `imagenet` (torchvision weights API) or a state_dict file (a whole PoseNet or a bare ResNet)."""
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
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith("trunk.") for k in missing):
            raise KdbenchError(f"{path} does not match a {model.arch} PoseNet (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}): was it saved from another architecture?")
    else:
        _load_trunk(model, state, str(path))


def _load_trunk(model: PoseNet, state: dict, source: str) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KdbenchError(f"{source} does not match a torchvision {model.arch} "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
