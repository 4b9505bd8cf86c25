"""Time the synthetic renderer: a full scene (6 x 100 frames) per scene and size, wall and CPU seconds.

Usage: python benchmarks/bench_synth.py [--frames 100] [--sizes 160x120,64x48] [--repeats 3]
CPU time (this process) stays meaningful when other jobs share the machine; wall time is what a user waits.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from kdbench.scenes.synth import render_scene


def bench(name: str, size: tuple[int, int], frames: int, repeats: int) -> tuple[float, float]:
    """Best wall and CPU seconds over `repeats` renders of one scene."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root:
            w0, c0 = time.perf_counter(), time.process_time()
            render_scene(name, root, frames_per_seq=frames, size=size, quiet=True)
            best_wall = min(best_wall, time.perf_counter() - w0)
            best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def main() -> None:
    """Print one line per scene and size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per sequence (6 sequences)")
    parser.add_argument("--sizes", default="160x120,64x48")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    render_scene("SynthRoom", tempfile.mkdtemp(), frames_per_seq=2, size=(32, 24), quiet=True)  # warm-up
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.split("x"))
        for name in ("SynthRoom", "SynthStreet"):
            wall, cpu = bench(name, size, args.frames, args.repeats)
            n = 6 * args.frames
            print(f"{name:12s} {text:>8s} {n} frames: wall {wall:6.2f} s ({n / wall:6.0f} frames/s), "
                  f"cpu {cpu:6.2f} s")


if __name__ == "__main__":
    main()
