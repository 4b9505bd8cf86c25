"""The pose head's last layers and every pose loss run in float32 under autocast (CPU bf16 as the stand-in)."""

from contextlib import nullcontext

import pytest
import torch

from kdbench.methods import create_method
from kdbench.methods.base import GroundTruth, LossContext, PoseLoss
from kdbench.models import PoseNet, PoseOutput

B = 4


def _loss_and_grads(method_name: str, autocast: bool):
    torch.manual_seed(0)
    model = PoseNet("resnet18").eval()  # eval: no dropout noise, so both runs see the same embedding
    with torch.no_grad():
        model.fc_xyz.bias.copy_(torch.tensor([100.0, -100.0, 100.0]))  # 100 m coordinates
    gen = torch.Generator().manual_seed(1)
    embed = torch.rand(B, 1024, generator=gen).requires_grad_()
    # Replace the head's (identity, in eval) dropout output by a fixed float32 embedding: the trunk runs in
    # bf16 under autocast and would differ anyway; what is tested is everything after it.
    model.head[2].register_forward_hook(lambda _m, _i, _o: embed)
    with torch.no_grad():
        xyz0, q0 = model.fc_xyz(embed), torch.nn.functional.normalize(model.fc_q(embed), dim=1)
    # Targets 5 cm (ground truth) and 3 cm (teacher) away, orientations nearly right: xyz dominates the loss.
    gt = GroundTruth(xyz0 + 0.05, q0)
    teacher = PoseOutput(xyz0 - 0.03, torch.nn.functional.normalize(q0 + 0.001, dim=1), {})
    method = create_method(method_name, {"schedule": "two-stage"} if method_name == "attentive" else {})
    if method_name == "attentive":
        method.eta.fill_(1.0)
    ctx = LossContext(PoseLoss(beta=500.0), epoch=9, epochs=10)  # attentive: stage 2 (AIL)
    x = torch.rand(B, 3, 32, 32, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
        out = model(x)
        loss = sum(method.loss(out, teacher, gt, ctx).values())
    loss.backward()
    return out, loss, [embed.grad, model.fc_xyz.weight.grad, model.fc_q.weight.grad]


@pytest.mark.parametrize("method", ["baseline", "vanilla", "attentive"])
def test_pose_head_and_pose_losses_are_float32_under_bf16_autocast(one_thread, method):
    out, loss, grads = _loss_and_grads(method, autocast=True)
    ref_out, ref_loss, ref_grads = _loss_and_grads(method, autocast=False)
    assert out.xyz.dtype == out.q.dtype == loss.dtype == torch.float32
    assert ref_loss.item() > 0.0025  # the 5 cm offset is in the loss (bf16 at 100 m cannot represent it)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-4)
    for got, ref in zip(grads, ref_grads):
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

