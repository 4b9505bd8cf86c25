"""Every family's smallest members against resnet18: params, GFLOPs, onnxruntime CPU latency at 224 px; and a
small synthetic run of 3 student families x 3 methods whose accuracy-latency front the README shows.

Usage:
  python benchmarks/bench_families.py [--archs a,b,...] [--runs 50] [--threads 2]      # the table
  python benchmarks/bench_families.py --front RUNS_DIR [--epochs N]                    # the synthetic front

Latency: PoseNet with random weights (BatchNorm calibrated, kdbench.profile.tame_random_weights), exported with
the TorchScript ONNX exporter, one onnxruntime CPUExecutionProvider session, batch 1, median of `--runs` timed
runs after warm-up, with `--threads` intra-op threads. On a shared machine the numbers carry the interference
kdbench.interference reports; ratios to resnet18, measured in the same minute, are steadier than milliseconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DEFAULT = ("resnet18,resnext50_32x4d,wide_resnet50_2,regnet_x_400mf,regnet_y_400mf,mobilenet_v2,mobilenet_v3_small,"
           "mobilenet_v3_large,efficientnet_b0,efficientnet_v2_s,mnasnet0_5,mnasnet1_0,shufflenet_v2_x0_5,"
           "shufflenet_v2_x1_0,convnext_tiny")


def measure(arch: str, runs: int, threads: int) -> dict:
    """Params (M), GFLOPs and onnxruntime CPU latency (median, p90 ms) of a PoseNet at 224 px, batch 1."""
    import onnxruntime as ort
    import torch

    from kdbench.models import PoseNet
    from kdbench.profile import count_gflops, count_params, export_onnx, tame_random_weights
    from kdbench.profile_onnx import input_shape, ort_latency

    torch.manual_seed(0)
    model = tame_random_weights(PoseNet(arch), 224)
    row = {"arch": arch, "family": model.family.name, "params_m": count_params(model) / 1e6,
           "gflops": count_gflops(model, 224)}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / f"{arch}.onnx", 1, 224, exporter="torchscript")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name, shape = input_shape(session, 1, 224)
        row["ms"], row["p90"] = ort_latency(session, name, shape, runs)
    return row


def table(archs: list[str], runs: int, threads: int) -> None:
    """Print the family table with ratios against resnet18."""
    from tabulate import tabulate

    rows = [measure(a, runs, threads) for a in archs]
    ref = next(r for r in rows if r["arch"] == "resnet18")
    out = [{"family": r["family"], "arch": r["arch"], "params (M)": f"{r['params_m']:.2f}",
            "GFLOPs": f"{r['gflops']:.2f}", "ort CPU ms (median)": f"{r['ms']:.2f}", "p90": f"{r['p90']:.2f}",
            "params / r18": f"{r['params_m'] / ref['params_m']:.2f}",
            "GFLOPs / r18": f"{r['gflops'] / ref['gflops']:.2f}",
            "latency / r18": f"{r['ms'] / ref['ms']:.2f}"} for r in rows]
    print(tabulate(out, headers="keys", tablefmt="github"))
    print(f"\n224 px, batch 1, onnxruntime CPUExecutionProvider, {threads} threads, {runs} timed runs; "
          f"GFLOPs: torch FlopCounterMode (a multiply-add = 2 FLOPs)")


def front(runs_dir: str, epochs: int, threads: int) -> None:
    """3 student families x 3 methods on SynthRoom (1 seed), profiled on onnxruntime, then the report's front."""
    from kdbench.cli import main

    t0 = time.perf_counter()
    rc = main(["run", "--student-arch", "mobilenet_v3_small,efficientnet_b0,resnet18", "--methods",
               "baseline,vanilla,sckd", "--scenes", "SynthRoom", "--seeds", "1", "--runs-dir", runs_dir, "--quiet",
               *(["--epochs", str(epochs)] if epochs else [])])
    print(f"run: exit {rc}, {time.perf_counter() - t0:.0f} s")
    main(["profile", "--archs", "results", "--backends", "onnxruntime", "--runs-dir", runs_dir, "--force"])
    main(["report", "--runs-dir", runs_dir, "--plots", str(Path(runs_dir) / "plots")])


def cli() -> None:
    """Parse the options and run the table or the front."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--front", default=None, metavar="RUNS_DIR")
    parser.add_argument("--epochs", type=int, default=None, help="teachers and students (default: the preset's)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.front:
        front(args.front, args.epochs, args.threads)
    else:
        table([a.strip() for a in args.archs.split(",")], args.runs, args.threads)


if __name__ == "__main__":
    cli()
