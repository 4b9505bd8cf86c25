"""Wall time of `kdbench tune` with no arguments, its validation-error curve, and what a real tune costs.

    python benchmarks/bench_tune.py                 # the default tune: baseline and sckd, 4 trials, SynthRoom
    python benchmarks/bench_tune.py --trials 2      # shorter
    python benchmarks/bench_tune.py --keep runs-tune   # keep the runs folder, draw the search's plots in it

Runs the default tune (quick preset, one synthetic scene rendered at its default size) in an empty runs
folder, prints every trial (values, validation error, best so far per row) and the measured training rates
(seconds per epoch of the teacher and of a student, from the store's train_seconds), and from those rates an
estimate, labelled so, of larger tunes: trials x rows x scenes x seeds student jobs x epochs, plus one teacher
per scene and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from kdbench.config import get_preset
from kdbench.reports.store import ResultsStore
from kdbench.reports.tuning import load_trials
from kdbench.runners.tune import DEFAULTS, tune


def _rates(runs: Path) -> tuple[float, float]:
    """Measured seconds per epoch of the teacher and of the students (mean over the tune's jobs)."""
    with ResultsStore(runs, create=False) as store:
        jobs = store.jobs("done")
    per = {"teacher": [], "student": []}
    for job in jobs:
        if job["train_seconds"]:
            per[job["kind"]].append(job["train_seconds"] / json.loads(job["config"])["epochs"])
    return tuple(sum(v) / len(v) if v else float("nan") for v in (per["teacher"], per["student"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=DEFAULTS["trials"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the 2-core laptop)")
    ap.add_argument("--keep", type=Path, default=None, metavar="RUNS_DIR",
                    help="tune in this (empty) folder and keep it; `kdbench report --plots RUNS_DIR/plots` then "
                         "draws the curve, importances and sensitivity (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        runs, data = (args.keep, args.keep / "data") if args.keep else (Path(tmp) / "runs", Path(tmp) / "data")
        if args.keep and args.keep.exists() and any(args.keep.iterdir()):
            ap.error(f"--keep {args.keep}: the folder is not empty; name a new one (the benchmark times a fresh tune)")
        t0 = time.perf_counter()
        res = tune(trials=args.trials, runs_dir=runs, data_root=data, quiet=True)  # what `kdbench tune` does
        wall = time.perf_counter() - t0
        trials = load_trials(runs)
        t_epoch, s_epoch = _rates(runs)
    shown = trials[["row", "trial", "state", "value", "best_so_far"] + [c for c in trials if c.startswith("param_")]]
    print(f"kdbench tune (no arguments: {DEFAULTS['methods']}, {args.trials} trials each, {DEFAULTS['scenes']}, "
          f"quick preset), {args.threads} threads, load average {load:.1f} at the start")
    print(tabulate(shown.rename(columns=lambda c: c.removeprefix("param_")), headers="keys", tablefmt="github",
                   showindex=False, floatfmt=".4g"))
    print(f"\nwall time {wall:.0f} s for {res.ran} trials (teacher {t_epoch:.2f} s/epoch, student "
          f"{s_epoch:.2f} s/epoch, measured)")
    p = get_preset("quick")
    table = []
    for rows, trials_n, scenes, seeds in ((2, args.trials, 1, 1), (5, 20, 2, 1), (5, 20, 2, 3)):
        students = rows * trials_n * scenes * seeds
        seconds = students * p.student_epochs * s_epoch + scenes * seeds * p.teacher_epochs * t_epoch
        table.append([rows, trials_n, scenes, seeds, students, f"{seconds / 60:.0f} min (estimated)"])
    print("\nEstimated cost of a tune at the quick preset on this machine (student jobs x epochs x measured "
          "s/epoch, plus one teacher per scene and seed):")
    print(tabulate(table, headers=["rows", "trials", "scenes", "seeds", "student jobs", "time"], tablefmt="github"))


if __name__ == "__main__":
    main()
