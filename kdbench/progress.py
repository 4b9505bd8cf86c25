"""Progress and console output, silenced by --quiet.

On a terminal: rich bars laid out to fit the console (80 columns included: the description column gives
way, never the counts or times). Elsewhere (a file, CI): plain log lines, one per job start and finish and
a rate-limited one per epoch, each with the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column
from rich.text import Text

console = Console(stderr=True)

BAR_WIDTH = 10
FIXED_WIDTH = 44  # bar, count, elapsed, time left and the gaps between columns
INFO_WIDTH = 14  # "loss 0.001234" shown only where the console has room for it
LOG_EVERY_S = 60.0  # at most one epoch line per job this often when not on a terminal


def _hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _CountColumn(ProgressColumn):
    """`17/30`, or the task's `count` field (e.g. `3/20 jobs`, `testing`); never truncated."""

    def render(self, task: Task) -> Text:
        text = task.fields.get("count")
        if text is None:
            total = "?" if task.total is None else f"{int(task.total)}"
            text = f"{int(task.completed)}/{total}"
        return Text(text, style="progress.download", no_wrap=True)


class _LeftColumn(TimeRemainingColumn):
    """Time left: the task's own `eta` field where the caller estimates it, else rich's estimate."""

    def render(self, task: Task) -> Text:
        if "eta" in task.fields:
            return Text(task.fields["eta"], style="progress.remaining", no_wrap=True)
        return super().render(task)


def make_progress(quiet: bool = False, transfer: bool = False, console: Console | None = None) -> Progress:
    """A Progress for counted work (epochs, jobs, frames) or byte transfers; disabled when quiet."""
    con = console or globals()["console"]
    width = con.width
    if transfer:
        desc = max(12, width - 52)
        cols = [TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                     max_width=desc)),
                BarColumn(bar_width=BAR_WIDTH), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        return Progress(*cols, console=con, disable=quiet, transient=False)
    info = width >= 110
    desc = max(12, min(60, width - FIXED_WIDTH - (INFO_WIDTH + 1 if info else 0)))
    cols: list[ProgressColumn] = [
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=desc)),
        BarColumn(bar_width=BAR_WIDTH),
        _CountColumn(table_column=Column(no_wrap=True, min_width=10)),
        TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=8)),
        _LeftColumn(table_column=Column(no_wrap=True, min_width=8)),
    ]
    if info:
        cols.append(TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, max_width=INFO_WIDTH)))
    return Progress(*cols, console=con, disable=quiet, transient=False)


@contextmanager
def step(message: str, quiet: bool = False, console: Console | None = None) -> Iterator[None]:
    """A visible step without a count (e.g. evaluation): a spinner on a terminal, log lines elsewhere."""
    con = console or globals()["console"]
    if quiet:
        yield
        return
    t0 = time.perf_counter()
    if con.is_terminal:
        with con.status(message):
            yield
    else:
        con.print(f"kdbench: {message} ...", markup=False, highlight=False, soft_wrap=True)
        yield
    con.print(f"kdbench: {message}: done in {_hms(time.perf_counter() - t0)}", markup=False, highlight=False,
              soft_wrap=True)


class JobProgress:
    """Progress of a sequence of training jobs, for `kdbench run` and `kdbench train`.

    `total_work` is in images to process (train frames x epochs, summed over the jobs to run); the time
    left is the elapsed time per image so far times the images left.
    """

    def __init__(self, n_jobs: int, total_work: float, quiet: bool = False, console: Console | None = None,
                 log_every: float = LOG_EVERY_S):
        self.console = console or globals()["console"]
        self.quiet, self.n_jobs, self.total_work = quiet, n_jobs, max(float(total_work), 1.0)
        self.log_every = log_every
        self.live = self.console.is_terminal and not quiet
        self.t0 = time.perf_counter()
        self.timed = 0.0  # images processed by this process (the rate of the time-left estimate)
        self.skipped = 0.0  # images that will not be processed here (resumed epochs, failed jobs)
        self.finished = 0
        self._label, self._index, self._per_epoch, self._job_work, self._job_counted = "", 0, 0.0, 0.0, 0.0
        self._last_epoch, self._first_epoch, self._job_t0, self._last_log = 0, 1, 0.0, 0.0
        self.progress = make_progress(not self.live, console=self.console)
        self._jobs_task = self._epoch_task = None

    def __enter__(self) -> JobProgress:
        self.progress.__enter__()
        if self.live:
            self._jobs_task = self.progress.add_task("jobs", total=self.total_work, count=self._count(),
                                                     eta=_hms(None), info="")
            self._epoch_task = self.progress.add_task("", total=1, visible=False, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _count(self) -> str:
        return f"{self.finished}/{self.n_jobs} jobs"

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        """Seconds left for the whole run, from the time per image so far (None before the first epoch)."""
        if self.timed <= 0:
            return None
        return self._elapsed() / self.timed * max(self.total_work - self.timed - self.skipped, 0.0)

    def _log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"kdbench [{_hms(self._elapsed())}] {message}", markup=False, highlight=False,
                               soft_wrap=True)

    def start(self, label: str, epochs: int, work: float, short: str | None = None) -> None:
        """A job starts: `work` images to process in `epochs` epochs."""
        self._index += 1
        self._label, self._job_work, self._job_counted = label, float(work), 0.0
        self._per_epoch, self._last_epoch = work / max(epochs, 1), 0
        self._job_t0 = self._last_log = time.perf_counter()
        if self.live:
            self.progress.update(self._epoch_task, description=short or label, completed=0, total=epochs,
                                 visible=True, count=f"0/{epochs}", eta=_hms(None), info="")
        else:
            self._log(f"job {self._index}/{self.n_jobs} started: {label}, {epochs} epochs; "
                      f"run time left {_hms(self.eta())}")

    def epoch(self, epoch: int, epochs: int, loss: float) -> None:
        """One epoch of the current job finished (epochs before the first reported one were resumed)."""
        if self._last_epoch == 0 and epoch > 1:  # resumed: those epochs cost nothing now
            self.skipped += self._per_epoch * (epoch - 1)
            self._job_counted += self._per_epoch * (epoch - 1)
            self._first_epoch = epoch
        elif self._last_epoch == 0:
            self._first_epoch = 1
        self._last_epoch = epoch
        self.timed += self._per_epoch
        self._job_counted += self._per_epoch
        run = epoch - self._first_epoch + 1
        job_left = (time.perf_counter() - self._job_t0) / run * (epochs - epoch)
        if self.live:
            self.progress.update(self._epoch_task, completed=epoch, total=epochs, count=f"{epoch}/{epochs}",
                                 eta=_hms(job_left), info=f"loss {loss:.4g}")
            self.progress.update(self._jobs_task, completed=self.timed + self.skipped, eta=_hms(self.eta()))
            if epoch == epochs:
                self.progress.update(self._epoch_task, count="testing", eta="")
        else:
            now = time.perf_counter()
            if now - self._last_log >= self.log_every or epoch == epochs:
                self._last_log = now
                self._log(f"job {self._index}/{self.n_jobs} epoch {epoch}/{epochs}, loss {loss:.4g}; "
                          f"job time left {_hms(job_left)}, run time left {_hms(self.eta())}")
            if epoch == epochs:
                self._log(f"job {self._index}/{self.n_jobs} evaluating on the test split")

    def finish(self, label: str, ok: bool, detail: str = "", work: float = 0.0) -> None:
        """A job finished (`ok`) or failed; `detail` is its result or error; `work` its images."""
        self.finished += 1
        if label == self._label:  # what it did not report epoch by epoch (a failure part-way) is off the plan
            self.skipped += max(self._job_work - self._job_counted, 0.0)
        elif ok:  # a job that reported no epochs (Ray): its work was done elsewhere, in parallel
            self.timed += work
        else:
            self.skipped += work
        self._label = ""
        if self.live:
            self.progress.update(self._jobs_task, completed=self.timed + self.skipped, count=self._count(),
                                 eta=_hms(self.eta()))
            self.progress.update(self._epoch_task, visible=False)
            mark = "[green]done[/]" if ok else "[red]FAILED[/]"
            self.progress.console.print(f"{mark} {escape(label)}" + (f": {escape(detail)}" if detail else ""),
                                        highlight=False, soft_wrap=True)
        else:
            self._log(f"job {self.finished}/{self.n_jobs} {'done' if ok else 'FAILED'}: {label}"
                      + (f": {detail}" if detail else "") + f"; run time left {_hms(self.eta())}")
