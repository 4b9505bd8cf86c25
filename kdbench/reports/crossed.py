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
