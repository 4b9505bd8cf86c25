"""Rows of the results frame that reports count: which jobs are results, which of them failed, their labels.

Shared by the statistics (`stats.py`) and the renderers (`leaderboard.py`, `html.py`, `plots.py`), so that the
statistics never import a renderer. A row is (group, scene, role, arch, teacher_arch, method); its result on one
seed is the latest finished or failed job of that row and seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

AVERAGE = "average"
GROUP_TITLES = {"cambridge": "Cambridge Landmarks", "7scenes": "7-Scenes", "synthetic": "Synthetic scenes",
                "other": "Other scenes"}
ROW_KEY = ["group", "scene", "role", "arch", "teacher_arch", "method"]
RESULT_STATUSES = ("done", "failed")


def result_jobs(df: pd.DataFrame) -> pd.DataFrame:
    """The latest finished or failed job per (row, seed) of the chosen preset, with a column `failed`.

    A run is a result whether it worked or not: `failed` is True for a failed job and for a finished one whose
    median errors are missing or not finite (a diverged run), so that no comparison silently drops it.
    """
    in_preset = df["in_preset"] if "in_preset" in df else True
    jobs = df[df["status"].isin(RESULT_STATUSES) & in_preset].copy()
    # Teachers and the no-KD student learn without a teacher: their teacher_arch must not split rows.
    no_teacher = (jobs["role"] == "teacher") | (jobs["method"] == "baseline")
    jobs["teacher_arch"] = jobs["teacher_arch"].where(~no_teacher, "").fillna("")
    jobs = jobs.sort_values("updated", kind="stable") if "updated" in jobs else jobs
    # A crossed design (kdbench run --teacher-seeds) has one result per (student seed, teacher seed).
    jobs = jobs.drop_duplicates(ROW_KEY + ["seed"] + (["teacher_seed"] if "teacher_seed" in jobs else []),
                                keep="last")
    medians = jobs[["median_t", "median_r"]].to_numpy(dtype=float)
    jobs["failed"] = (jobs["status"] != "done") | ~np.isfinite(medians).all(axis=1)
    return jobs


def shown_jobs(df: pd.DataFrame) -> pd.DataFrame:
    """The results that worked (finite medians); failures are counted by `result_jobs`, not shown as errors."""
    jobs = result_jobs(df)
    return jobs[~jobs["failed"]].drop(columns="failed")


def row_labels(acc: pd.DataFrame) -> list[str]:
    """'teacher resnet34', 'resnet18 baseline (no KD)', 'resnet18 sckd' ('← resnet50' if teachers vary)."""
    kd = acc[(acc["role"] == "student") & (acc["method"] != "baseline")]
    several = kd[kd["teacher_arch"].fillna("") != ""].groupby("group")["teacher_arch"].nunique()
    labels = []
    for r in acc.itertuples():
        if r.role == "teacher":
            labels.append(f"teacher {r.arch}")
        elif r.method == "baseline":
            labels.append(f"{r.arch} baseline (no KD)")
        else:
            suffix = f" ← {r.teacher_arch}" if several.get(r.group, 0) > 1 and r.teacher_arch else ""
            labels.append(f"{r.arch} {r.method}{suffix}")
    return labels
