"""The GPU benchmarks also run on CPU at tiny sizes (their figures are measured elsewhere; nothing is timed here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--batch", "4", "--load", "32", "--crop", "28", "--frames", "4", "--precision", "fp32"]


def _bench(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _ratios(text: str) -> list[float]:
    rows = [line.split("|") for line in text.splitlines() if line.startswith("|") and "---" not in line][1:]
    return [float(r[-2]) for r in rows]


@pytest.mark.slow
def test_bench_gpu_runs_on_cpu():
    out = _bench("bench_gpu.py", "--device", "cpu", "--threads", "1", "--epochs", "2", *TINY)
    ratios = _ratios(out)
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert "student step" in out and "sckd step (teacher resnet34)" in out


@pytest.mark.slow
def test_bench_sweep_runs_on_cpu():
    out = _bench("bench_sweep.py", "--device", "cpu", "--threads", "2", "--jobs", "1,2", "--epochs", "1",
                 "--methods", "baseline,vanilla", *TINY)
    lines = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].strip() for line in lines] == ["1", "2"]
    assert all(line.split("|")[2].strip() == "3" for line in lines)  # teacher + 2 students each time
