"""Sweep throughput: one `kdbench run` of 1 teacher + 8 students, jobs one at a time against several at once.

    python benchmarks/bench_sweep.py                          # GPU: --jobs-per-gpu 1 vs 4
    python benchmarks/bench_sweep.py --device cpu --jobs 1,2 --threads 2   # CPU: 1 two-thread job vs 2 x 1 thread

Each setting runs the same plan from an empty runs folder (a synthetic scene rendered once). Total images/s =
training images the run processed (epochs x steps x batch over every job) / the run's wall time, everything
included (process start, data upload, teacher before students, evaluation). On CPU, N jobs at once share the
`--threads` budget (each job gets threads / N), so the comparison is "one job with every thread" against
"N single-thread jobs".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from kdbench.runners.benchmark import run_benchmark
from kdbench.scenes.synth import render_scene

METHODS = "baseline,vanilla,similarity,hint,sckd,at,pkt,rkd"  # 8 students; 7 of them share the teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    ap.add_argument("--device", default="cuda" if gpu else "cpu")
    ap.add_argument("--jobs", default="1,4" if gpu else "1,2", help="jobs-per-gpu settings to compare")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the driver (CPU budget)")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--epochs", type=int, default=3 if gpu else 1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--load", type=int, default=256 if gpu else 64)
    ap.add_argument("--crop", type=int, default=224 if gpu else 56)
    ap.add_argument("--frames", type=int, default=80 if gpu else 16, help="frames per synthetic sequence")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        render_scene("SynthRoom", root, quiet=True, frames_per_seq=args.frames, size=(args.load * 4 // 3, args.load))
        for n in (int(s) for s in args.jobs.split(",")):
            t0 = time.perf_counter()
            res = run_benchmark(methods=args.methods, scenes="SynthRoom", seeds=1, data_root=root, quiet=True,
                                runs_dir=Path(tmp) / f"runs-{n}", epochs=args.epochs, batch_size=args.batch,
                                load_size=args.load, crop_size=args.crop, precision=args.precision,
                                jobs_per_gpu=n, device=args.device)
            wall = time.perf_counter() - t0
            if res.failed:
                raise SystemExit(f"jobs failed: {res.failed}")
            n_train = 4 * args.frames  # SynthRoom: 4 of its 6 sequences are training sequences
            steps = n_train // args.batch if n_train >= args.batch else 1
            images = len(res.jobs) * args.epochs * steps * min(args.batch, n_train)
            rate = images / wall
            base = base or rate
            rows.append([n, len(res.jobs), f"{wall:.1f}", f"{rate:.0f}", f"{rate / base:.2f}"])
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads in all"
    print(f"{args.methods} + teacher on SynthRoom, {args.epochs} epochs, batch {args.batch}, crop {args.crop}; {where}")
    print(tabulate(rows, headers=["jobs at once (per GPU)", "jobs", "wall s", "images/s", "vs first"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
