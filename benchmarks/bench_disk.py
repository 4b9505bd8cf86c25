"""Bytes a small `kdbench run` writes: a checkpoint every epoch against checkpoints by time (the default).

    python benchmarks/bench_disk.py                           # 1 teacher + 2 students, 1 step per epoch
    python benchmarks/bench_disk.py --before-src /path/to/old/checkout   # also the code before time-based saves

Each setting runs `kdbench run` in a child process from an empty runs folder; the child reports its own
/proc/self/io at exit: wchar (bytes passed to write(), files and pipes alike) and write_bytes (bytes sent to
the block layer; 0 where the folder is on tmpfs). The run folder's final size is printed too. With one step
per epoch (the scene's training split fits in one batch), `--checkpoint-every 0` saves exactly once per
epoch: the former policy. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

CHILD = """
import sys, torch
torch.set_num_threads(1)
from kdbench.cli import main
rc = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print("IO", io["wchar"], io["write_bytes"])
sys.exit(rc)
"""


def run(src: Path, args: list[str]) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("IO ")]
    if out.returncode or not line:
        raise SystemExit(f"kdbench run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    wchar, write_bytes = line[-1].split()[1:]
    return int(wchar), int(write_bytes)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="baseline,sckd")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--before-src", default=None, help="a checkout of kdbench before time-based checkpoints")
    args = ap.parse_args()
    src = Path(__file__).resolve().parents[1]
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "kdbench.cli", "scenes", "synth", "SynthRoom", "--data-root",
                        str(data), "--frames", "4", "--quiet"], env={**os.environ, "PYTHONPATH": str(src)},
                       check=True)
        common = ["run", "--methods", args.methods, "--scenes", "SynthRoom", "--data-root", str(data),
                  "--epochs", str(args.epochs), "--quiet"]
        settings = [("every epoch (--checkpoint-every 0)", src, ["--checkpoint-every", "0"]),
                    ("by time (default, 60 s)", src, [])]
        if args.before_src:
            settings.insert(0, ("before (every epoch, " + args.before_src + ")", Path(args.before_src), []))
        for label, code, extra in settings:
            runs = Path(tmp) / f"runs-{len(rows)}"
            wchar, write_bytes = run(code, common + ["--runs-dir", str(runs)] + extra)
            rows.append([label, wchar, write_bytes, folder_bytes(runs)])
    ref = rows[-2][1]
    table = [[r[0], f"{r[1] / 1e6:.1f}", f"{r[2] / 1e6:.1f}", f"{r[3] / 1e6:.1f}", f"{ref / r[1]:.1f}x"]
             for r in rows]
    print(f"kdbench run --methods {args.methods} --scenes SynthRoom --epochs {args.epochs} (quick preset, "
          "1 step per epoch)")
    print(tabulate(table, headers=["checkpoints", "written MB (wchar)", "block-layer MB", "run folder MB",
                                   "every-epoch / this"], tablefmt="github"))


if __name__ == "__main__":
    main()
