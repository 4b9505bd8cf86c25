"""Runners: training loop, evaluation, the job plan and its executors.

The names below are imported on first use (PEP 562): `kdbench runs` and argument errors load this package
without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BenchmarkResult": "kdbench.runners.benchmark", "run_benchmark": "kdbench.runners.benchmark",
    "evaluate": "kdbench.runners.evaluate",
    "TrainResult": "kdbench.runners.train", "load_model": "kdbench.runners.train", "train": "kdbench.runners.train",
}

__all__ = ["BenchmarkResult", "TrainResult", "evaluate", "load_model", "run_benchmark", "train"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'kdbench.runners' has no attribute {name!r}")
