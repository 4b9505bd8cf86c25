"""Device choice and seeding: CUDA (AMP, channels_last) when present, else CPU."""

from __future__ import annotations

import random

import numpy as np
import torch

from kdbench.hardware import cpu_name


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_name(device: torch.device) -> str:
    """Human-readable name of a device (GPU name or CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()
