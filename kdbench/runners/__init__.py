"""Runners: training loop, evaluation, the job plan and its executors."""

from kdbench.runners.benchmark import BenchmarkResult, run_benchmark
from kdbench.runners.evaluate import evaluate
from kdbench.runners.train import TrainResult, load_model, train

__all__ = ["BenchmarkResult", "TrainResult", "evaluate", "load_model", "run_benchmark", "train"]
