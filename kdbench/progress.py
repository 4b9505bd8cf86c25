"""Rich progress bars and console output, silenced by --quiet."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)


def make_progress(quiet: bool = False, transfer: bool = False) -> Progress:
    """A Progress for counted work (epochs, jobs, frames) or byte transfers; disabled when quiet."""
    if transfer:
        cols = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn()]
    else:
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    return Progress(*cols, console=console, disable=quiet, transient=False)
