"""Is a latency measurement disturbed by other work on the machine? (torch-free: the --onnx path uses it.)

A latency measured while other programs compete for the CPUs is not the model's latency: on a busy machine
ResNet18 measured median 195.8 ms / p90 939.9 ms against 25.4 / 17.0 ms quiet, and once stored such a row
feeds every later leaderboard and plot. So every measurement is watched, and `kdbench profile` refuses to
record (store or --out JSON) a disturbed one unless --force is given; a forced row says so in its note,
which the efficiency tables show.

Two signs, either one is enough (the thresholds are named constants below):
- MAX_SPREAD: p90 / median above 1.5. On a quiet machine successive runs of the same input take nearly the
  same time (p90 / median 1.01-1.05 in the README's table); time slices lost to other programs show up as a
  long tail. It catches interference on any device and OS, and needs nothing but the timings.
- MAX_OTHERS: other processes used more than a quarter of the machine's CPU time during the timed runs
  (Linux: busy ticks of /proc/stat, steal included, minus this process's own CPU time from getrusage).
  A steady competing load can slow every run alike and leave the spread small; this sees it directly,
  without the minute-long lag of the load average. Where /proc/stat is absent this sign is skipped.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

MAX_SPREAD = 1.5  # p90 / median of the timed runs
MAX_OTHERS = 0.25  # share of all CPUs' time used by other processes while timing
MIN_WINDOW_S = 0.25  # shorter timing windows: /proc/stat's 10 ms ticks are too coarse to tell a share
MARK = "⚠ disturbed"  # how a forced row's note starts; reports look for it


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (torch, onnxruntime pools)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Verdict:
    """What the watcher saw: spread of the timings, other processes' CPU share, and why it is disturbed."""

    spread: float
    others: float | None
    reasons: tuple[str, ...]

    @property
    def disturbed(self) -> bool:
        return bool(self.reasons)

    def text(self) -> str:
        """'p90 4.8x the median (limit 1.5x); other processes used 62% of the CPUs (limit 25%)'."""
        return "; ".join(self.reasons)


def judge(median_ms: float, p90_ms: float, others: float | None) -> Verdict:
    """The verdict for a measurement's median and p90 and the other processes' CPU share (None: unknown)."""
    spread = p90_ms / median_ms if median_ms > 0 else float("inf")
    reasons = []
    if not spread <= MAX_SPREAD:
        reasons.append(f"p90 {p90_ms:.1f} ms is {spread:.1f}x the median {median_ms:.1f} ms "
                       f"(limit {MAX_SPREAD}x)")
    if others is not None and others > MAX_OTHERS:
        reasons.append(f"other processes used {others:.0%} of the CPUs while timing (limit {MAX_OTHERS:.0%})")
    return Verdict(spread, others, tuple(reasons))


class Watch:
    """Context manager around the timed runs: `with Watch() as w: ...; verdict = w.verdict(median, p90)`."""

    def __enter__(self) -> Watch:
        self._start = (time.monotonic(), _busy_cpu_seconds(), _own_cpu_seconds())
        self._end = self._start
        return self

    def __exit__(self, *exc) -> None:
        self._end = (time.monotonic(), _busy_cpu_seconds(), _own_cpu_seconds())

    def others_share(self) -> float | None:
        """Share of the machine's CPU time that other processes used between enter and exit."""
        (t0, busy0, own0), (t1, busy1, own1) = self._start, self._end
        capacity = (t1 - t0) * (os.cpu_count() or 1)
        if busy0 is None or busy1 is None or t1 - t0 < MIN_WINDOW_S:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity

    def verdict(self, median_ms: float, p90_ms: float) -> Verdict:
        """Judge the measurement taken inside the `with` block."""
        return judge(median_ms, p90_ms, self.others_share())
