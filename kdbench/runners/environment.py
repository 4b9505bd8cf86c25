"""The environment a result was produced in: versions, git commit, device, host."""

from __future__ import annotations

import platform
import socket
import subprocess
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """The commit of the kdbench source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and hardware of this process, as recorded with every result."""
    import torch
    import torchvision

    from kdbench import __version__
    from kdbench.runners.device import device_name, pick_device

    return {
        "kdbench_version": __version__, "git_commit": git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "device": device_name(pick_device(device)), "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
