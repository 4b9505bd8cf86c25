"""Training precision: fp32, bf16 autocast (no loss scaling), or fp16 autocast with a GradScaler.

`auto` is resolved by `resolve_precision` before a TrainConfig is built, so the config hash says what ran:
bf16 on a GPU that supports it, fp16 on a GPU without bf16, fp32 on CPU. With fp16, a step whose gradients
overflowed is skipped by the scaler; `Precision` counts those on the device (no host synchronisation per
step), and train() refuses a run whose every step was skipped.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from kdbench.config import PRECISIONS
from kdbench.errors import KdbenchError

CHOICES = ("auto",) + PRECISIONS
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str | None, device: str | torch.device | None = None) -> str:
    """'auto' (or None) -> 'bf16' | 'fp16' on CUDA by capability, 'fp32' on CPU; others pass through."""
    requested = requested or "auto"
    if requested not in CHOICES:
        raise KdbenchError(f"--precision {requested!r}: use one of {', '.join(CHOICES)}")
    if requested != "auto":
        return requested
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


class Precision:
    """Autocast context, loss scaling and the device-side count of skipped (overflowed) fp16 steps."""

    def __init__(self, precision: str, device: torch.device):
        if precision not in PRECISIONS:
            raise KdbenchError(f"precision must be one of {', '.join(PRECISIONS)} here, got {precision!r} "
                               "(resolve 'auto' with resolve_precision first)")
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)

    def autocast(self) -> AbstractContextManager:
        """The forward pass's autocast (nothing for fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimiser step; with fp16 a skipped step is counted on the device."""
        optimizer.zero_grad(set_to_none=True)
        if not self.scaler.is_enabled():
            loss.backward()
            optimizer.step()
            return
        # The scaler lowers its scale exactly when it skips a step (inf/NaN gradients). Comparing the scale
        # tensor before and after keeps the count on the device; get_scale() would synchronise every step.
        scaled = self.scaler.scale(loss)  # creates the scale tensor on the first step
        before = self.scaler._scale.clone()
        scaled.backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        self.skipped += (self.scaler._scale < before).to(torch.int64)

    def state_dict(self) -> dict:
        """The scaler's state (empty unless fp16)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        """Restore the scaler's state where one was saved."""
        if state:
            self.scaler.load_state_dict(state)
