"""Reports: the results store, leaderboards and plots. Reports read the store only."""

from kdbench.reports.store import ResultsStore

__all__ = ["ResultsStore"]
