"""Wall time of light `kdbench` commands (a fresh interpreter each time) and whether they import torch.

    python benchmarks/bench_startup.py [--repeat 7] [--source DIR]

`--source` times another checkout of kdbench (e.g. an older commit, for a before/after comparison).

Each command runs `--repeat` times as `python -m kdbench.cli ...`; the table shows the median and the
fastest run. A store with one job is made in a temporary folder for `runs` and `report`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from kdbench.reports.store import ResultsStore

COMMANDS = [
    ("--help", ["--help"]),
    ("runs (store with a job)", ["runs", "--runs-dir", "{full}"]),
    ("runs (no store: error)", ["runs", "--runs-dir", "{empty}"]),
    ("report", ["report", "--runs-dir", "{full}"]),
    ("scenes list", ["scenes", "list"]),
    ("run --bogus (argument error)", ["run", "--bogus"]),
    ("evaluate missing.pt (error)", ["evaluate", "{empty}/missing.pt", "--scene", "SynthRoom"]),
]

PROBE = "import sys, runpy; sys.argv = ['kdbench'] + sys.argv[1:]\n" \
        "try:\n    runpy.run_module('kdbench.cli', run_name='__main__')\n" \
        "except SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules, file=sys.stderr)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--source", default=str(Path(__file__).resolve().parents[1]),
                    help="kdbench checkout to time (default: this one)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(args.source).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        full, empty = Path(tmp) / "full", Path(tmp) / "empty"
        empty.mkdir()
        with ResultsStore(full) as store:
            store.upsert_job({"id": "abc", "kind": "student", "scene": "SynthRoom", "method": "baseline",
                              "arch": "resnet18", "seed": 0, "config": {}, "status": "done"})
        rows = []
        for name, argv in COMMANDS:
            argv = [a.format(full=full, empty=empty) for a in argv]
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "kdbench.cli", *argv], env=env, capture_output=True, cwd=tmp)
                times.append(time.perf_counter() - t0)
            probe = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True,
                                   cwd=tmp)
            torch = "yes" if "TORCH True" in probe.stderr else "no"
            rows.append([name, f"{statistics.median(times):.2f}", f"{min(times):.2f}", torch])
    print(tabulate(rows, headers=["command", "median (s)", "fastest (s)", "imports torch"], tablefmt="github"))


if __name__ == "__main__":
    main()
