"""How much of a KD row's variance is the teacher's and how much the student's (crossed seed design).

`kdbench run --teacher-seeds N --student-seeds M` trains, per scene, N teachers and M students of every KD
method on each (Bouthillier et al. 2021). Per row, metric and scene the log errors y[t, s] (teacher seed t,
student seed s) follow the two-way random-effects model without replication
y = mu + a_t + b_s + e_ts, a ~ N(0, var_teacher), b ~ N(0, var_student), e ~ N(0, var_residual).
The ANOVA (method-of-moments) estimates are var_teacher = (MS_T - MS_E) / M, var_student = (MS_S - MS_E) / N,
var_residual = MS_E, negative estimates set to 0; sums of squares and degrees of freedom are pooled over scenes
(each scene keeps its own mean, so scale differences between scenes do not count as variance). Logs make the
shares scale-free. The student's share is var_student + var_residual: everything that changes with the student
seed once the teacher is fixed (its data order and initialisation, and their interaction with the teacher).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdbench.reports.bootstrap import METRIC_COLUMNS

VARIANCE_COLUMNS = ["group", "arch", "teacher_arch", "method", "label", "metric", "n_teachers", "n_students",
                    "n_scenes", "var_teacher", "var_student", "var_residual", "teacher_pct", "student_pct", "note"]


def two_way(y: np.ndarray) -> tuple[float, float, float, int, int, int]:
    """(SS_teacher, SS_student, SS_residual, df_T, df_S, df_E) of one complete teacher x student matrix."""
    n, m = y.shape
    grand = y.mean()
    ss_t = m * float(((y.mean(axis=1) - grand) ** 2).sum())
    ss_s = n * float(((y.mean(axis=0) - grand) ** 2).sum())
    ss_e = float(((y - grand) ** 2).sum()) - ss_t - ss_s
    return ss_t, ss_s, max(ss_e, 0.0), n - 1, m - 1, (n - 1) * (m - 1)


def decompose(matrices: list[np.ndarray]) -> dict[str, float]:
    """Pooled variance components of complete teacher x student matrices of log errors (one per scene)."""
    ss = np.zeros(3)
    dfs = np.zeros(3)
    for y in matrices:
        *s, a, b, c = two_way(y)
        ss += s
        dfs += (a, b, c)
    if dfs[0] == 0 or dfs[1] == 0 or dfs[2] == 0:
        return {"var_teacher": math.nan, "var_student": math.nan, "var_residual": math.nan}
    ms_t, ms_s, ms_e = ss / dfs
    # Matrices may differ in shape between scenes; the divisors are the (mean) replicates per level.
    reps_t = np.mean([y.shape[1] for y in matrices])
    reps_s = np.mean([y.shape[0] for y in matrices])
    return {"var_teacher": max(0.0, (ms_t - ms_e) / reps_t), "var_student": max(0.0, (ms_s - ms_e) / reps_s),
            "var_residual": float(ms_e)}


def variance_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per KD row and metric of the shown student jobs (columns scene, seed, teacher_seed, label, medians): the
    teacher's and the student's share of the variance of the log error; `note` says why there is none."""
    rows = []
    kd = jobs[(jobs["role"] == "student") & (jobs["method"] != "baseline")]
    key = ["group", "arch", "teacher_arch", "method", "label"]
    for k, part in kd.groupby(key, sort=False, dropna=False):
        n_t = int(part["teacher_seed"].nunique())
        n_s = int(part["seed"].nunique())
        per_student = int(part.groupby(["scene", "seed"])["teacher_seed"].nunique().max())
        for metric, col in METRIC_COLUMNS.items():
            mats = []
            for _, scene in part.groupby("scene", sort=False):
                wide = scene.pivot_table(index="teacher_seed", columns="seed", values=col, aggfunc="last")
                wide = wide.dropna(axis=0, how="any")
                if wide.shape[0] >= 2 and wide.shape[1] >= 2:
                    mats.append(np.log(wide.to_numpy(float)))
            row = {**dict(zip(key, k)), "metric": metric, "n_teachers": n_t, "n_students": n_s,
                   "n_scenes": len(mats), "var_teacher": math.nan, "var_student": math.nan,
                   "var_residual": math.nan, "teacher_pct": math.nan, "student_pct": math.nan, "note": ""}
            if per_student < 2:  # plain --seeds: teacher seed = student seed, the two are confounded
                row["note"] = ("one teacher seed per student seed: the teacher's share cannot be told apart from "
                               "the student's (run --teacher-seeds N --student-seeds M, N and M 2 or more)")
            elif not mats:
                row["note"] = "no scene with 2+ teachers x 2+ student seeds all finished"
            else:
                row.update(decompose(mats))
                total = row["var_teacher"] + row["var_student"] + row["var_residual"]
                if total > 0:
                    row["teacher_pct"] = 100 * row["var_teacher"] / total
                    row["student_pct"] = 100 * (row["var_student"] + row["var_residual"]) / total
                else:
                    row["note"] = "no variance at all"
            rows.append(row)
    return pd.DataFrame(rows, columns=VARIANCE_COLUMNS)
