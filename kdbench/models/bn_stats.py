"""BatchNorm statistics recomputed for the trained weights (TrainConfig.bn_stats = "recompute").

During training BatchNorm keeps exponential running averages of its batch statistics; the eval-mode network
uses them. With torchvision's momentum of 0.01 (MobileNetV3) or 0.0003 (MnasNet) those averages lag far
behind the weights of a short schedule (kdbench.models.families.default_bn_stats). Recomputing them once
after the last epoch, over the training frames, is "precise BN" (Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm"; fvcore's update_bn_stats, torch.optim.swa_utils.update_bn).

Unlike torch.optim.swa_utils.update_bn, only the BatchNorm layers switch to training mode: dropout and
stochastic depth stay off, so the statistics describe the network that is scored, and recomputing them is
deterministic (the same weights and frames give the same statistics, so a resumed job recomputes exactly).
Every BatchNorm layer is recomputed, frozen ones included (their weights are the trained ones too).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that track running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running mean and variance by their averages over `batches` (inputs on the
    model's device); the model is left in eval mode. Returns the number of batches seen (0: nothing changed)."""
    layers = batchnorms(model)
    if not layers:
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches instead of an exponential one
        m.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += 1
    finally:
        for m, (_, _, _, momentum) in zip(layers, saved):
            m.momentum = momentum
        model.eval()
    if n == 0:  # no data: keep what training left rather than the reset zeros and ones
        for m, (mean, var, count, _) in zip(layers, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
    return n
