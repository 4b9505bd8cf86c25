"""Pairs in a crossed design: one pair per (scene, student seed), whatever the number of teachers.

`kdbench run --teacher-seeds N --student-seeds M` gives a KD row N runs per (scene, student seed), one per
teacher, and the baseline one. Matching each of them with the one baseline run would count that baseline run N
times and treat N correlated runs as independent pairs. So the N runs are reduced first to their geometric mean
error (the mean of the log errors the tests use); the pair fails when any of them failed (a failure is never
averaged away). A row with one run per student seed passes unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def per_student_seed(kd: pd.DataFrame, col: str, key: list[str]) -> pd.DataFrame:
    """KD runs (one row per job, `failed` column) reduced to one per (key, scene, seed); `n_teachers` counted."""
    by = key + ["scene", "seed"]
    sizes = kd.groupby(by, sort=False, dropna=False)[col].transform("size")
    single = kd[sizes == 1].assign(n_teachers=1)
    several = kd[sizes > 1]
    if several.empty:
        return single
    with np.errstate(divide="ignore"):
        logs = several.assign(_log=np.log(several[col].to_numpy(dtype=float)))
    agg = logs.groupby(by, sort=False, dropna=False).agg(_log=("_log", "mean"), failed=("failed", "any"),
                                                         n_teachers=("seed", "size"))
    first = several.drop_duplicates(by).set_index(by)
    first = first.drop(columns=["failed"]).join(agg).reset_index()
    first[col] = np.exp(first.pop("_log"))
    return pd.concat([single, first[single.columns]], ignore_index=True)


def cells_per_student_seed(results: pd.DataFrame, metrics: list[str], key: list[str]) -> pd.DataFrame:
    """Result runs (one row per job, `failed` column) as one row per (key, student seed) for leaderboard cells.

    The median errors of a student seed's runs with its several teachers are collapsed to their geometric mean,
    the other metrics to their mean, so that a cell's n and interval count student seeds, as the pairs do; the
    seed failed when any of its runs did. `_runs` / `_failed_runs` keep the counts of runs behind each row.
    """
    by = key + ["seed"]
    frame = results[by + metrics + ["failed"]].copy()
    medians = [c for c in ("median_t", "median_r") if c in metrics]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = frame.assign(**{c: np.log(frame[c].to_numpy(dtype=float)) for c in medians})
    groups = frame.groupby(by, sort=False, dropna=False)
    out = groups[metrics].mean()
    for c in medians:
        out[c] = np.exp(logs.groupby(by, sort=False, dropna=False)[c].mean())
    out["failed"] = groups["failed"].any()
    out["_runs"] = groups.size()
    out["_failed_runs"] = groups["failed"].sum().astype(int)
    out.loc[out["failed"], metrics] = float("nan")
    return out.reset_index()


def teachers_per_student_seed(results: pd.DataFrame, key: list[str]) -> int:
    """The most runs any (key, student seed) has: above 1 only in a crossed design."""
    if results.empty:
        return 0
    return int(results.groupby(key + ["seed"], sort=False, dropna=False).size().max())
