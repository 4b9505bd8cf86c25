"""Names of the hardware a result was measured on, read without torch (edge devices may lack it)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path


def jetson_model() -> str | None:
    """The board name from /proc/device-tree/model (Jetson and other ARM boards), else None."""
    path = Path("/proc/device-tree/model")
    try:
        return path.read_bytes().rstrip(b"\x00\n").decode(errors="replace").strip() or None
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ('model name'), else platform.processor(), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name_without_torch() -> str:
    """The first GPU's name from nvidia-smi, the board name on a Jetson, else 'CUDA GPU'."""
    board = jetson_model()
    if board:
        return board
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            if out.strip():
                return out.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "CUDA GPU"


def device_label(name: str, kind: str) -> str:
    """How a device appears in the store: 'AMD EPYC (cpu)'; a Jetson board name is kept in front."""
    board = jetson_model()
    if kind == "cpu" and board and board not in name:
        name = f"{board}, {name}"  # an ARM core name alone does not say which board it is
    return f"{name} ({kind})"
