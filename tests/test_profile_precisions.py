"""Profile on CUDA: torch fp16/bf16 latency rows beside fp32 (the cast path is exercised on CPU too)."""

import pytest
import torch

from kdbench.models import PoseNet
from kdbench.profile import profile_arch, torch_latency, torch_precisions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reduced_precision_latency_runs_the_cast_model():
    assert torch_precisions("cpu") == ("fp32",)
    assert torch_precisions("cuda") == ("fp32", "fp16", "bf16")
    model = PoseNet("resnet18").eval()
    median, p90 = torch_latency(model, "cpu", 1, 32, 50, precision="bf16")
    assert 0 < median <= p90
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast in place


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_profile_has_fp16_and_bf16_rows():
    rows = profile_arch("resnet18", ("torch",), device="cuda", crop=64, runs=50)
    by_backend = {r["backend"]: r for r in rows}
    assert set(by_backend) == {"torch", "torch-fp16", "torch-bf16"}
    assert all("(cuda)" in r["device"] and r["latency_median_ms"] > 0 for r in rows)
    assert by_backend["torch-fp16"]["note"].startswith("fp16")
