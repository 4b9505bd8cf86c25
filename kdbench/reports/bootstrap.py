"""Stratified bootstrap intervals (Agarwal et al. 2021): IQM of errors and of the change, P(improvement), profiles.

Seeds are resampled with replacement within each scene (the strata), never across scenes, so every resample
keeps the design's scenes; a scene is not a seed. Intervals are percentile intervals over BOOTSTRAP_SAMPLES
resamples drawn from `numpy.random.default_rng(seed)`: the same seed gives the same intervals (the seed is
recorded in every frame, column `bootstrap_seed`). rliable implements the same and is not a dependency.

- IQM: the interquartile mean (`scipy.stats.trim_mean(x, 0.25)`), robust to one diverged run, less noisy than
  the median. Of errors: per row, scene and metric, over the runs (`n_runs`; in a crossed design over student
  seeds, each the geometric mean over its teachers: kdbench.reports.claims). Of the change: per row and metric, over the
  matched pairs' log ratios, reported as 100 * (exp(IQM) - 1) percent.
- P(improvement): per scene, the probability that a run of the method has a lower error than a run of the
  baseline (Mann-Whitney: ties count a half), averaged over scenes (rliable's probability of improvement).
- Performance profile: the share of runs whose error, divided by the geometric mean of the baseline's errors
  on that scene (scale-free), is at most tau; bands from the same stratified resampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sst

from kdbench.mathutil import geomean
from kdbench.reports.stats import METRICS

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's trim_mean at 0.25)."""
    x = np.asarray(x, dtype=float)
    return float(sst.trim_mean(x, 0.25)) if len(x) else math.nan


def resample(strata: list[np.ndarray], rng: np.random.Generator, samples: int) -> np.ndarray:
    """`samples` stratified resamples as rows of a matrix: each stratum drawn with replacement from itself, at
    its own size, the strata side by side (so every row keeps the design's scenes)."""
    return np.concatenate([s[rng.integers(0, len(s), (samples, len(s)))] for s in strata], axis=1)


def _iqm_rows(m: np.ndarray) -> np.ndarray:
    return sst.trim_mean(m, 0.25, axis=1)


def stratified_interval(strata: list[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray] = _iqm_rows,
                        samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                        confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(statistic, lower, upper): the percentile interval over stratified resamples of a row-wise `statistic`
    (a function of a resamples x values matrix; default the IQM)."""
    strata = [np.asarray(s, float) for s in strata if len(s)]
    if not strata:
        return math.nan, math.nan, math.nan
    point = float(statistic(np.concatenate(strata)[None, :])[0])
    values = statistic(resample(strata, np.random.default_rng(seed), samples))
    a = (1 - confidence) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return point, float(lo), float(hi)


def _prob_rows(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:
    """Per resample row: mean over scenes of P(x < y) between runs, ties a half (xs, ys: per scene matrices)."""
    ps = [(x[:, :, None] < y[:, None, :]).mean(axis=(1, 2)) + (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2)) / 2
          for x, y in zip(xs, ys)]
    return np.mean(ps, axis=0)


def prob_improvement(method: list[np.ndarray], base: list[np.ndarray]) -> float:
    """Mean over scenes of P(method error < baseline error) between runs (ties count 1/2)."""
    keep = [(np.asarray(x, float)[None, :], np.asarray(y, float)[None, :]) for x, y in zip(method, base)
            if len(x) and len(y)]
    return float(_prob_rows([k[0] for k in keep], [k[1] for k in keep])[0]) if keep else math.nan


def prob_improvement_interval(method: list[np.ndarray], base: list[np.ndarray], samples: int = BOOTSTRAP_SAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """P(improvement) with its interval; method and baseline runs resampled independently within scenes."""
    keep = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(method, base) if len(x) and len(y)]
    if not keep:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    xs = [resample([x], rng, samples) for x, _ in keep]
    ys = [resample([y], rng, samples) for _, y in keep]
    values = _prob_rows(xs, ys)
    lo, hi = np.quantile(values, [(1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2])
    return prob_improvement([k[0] for k in keep], [k[1] for k in keep]), float(lo), float(hi)


CHANGE_COLUMNS = ["group", "arch", "teacher_arch", "method", "label", "metric", "n_pairs", "iqm_change_pct",
                  "iqm_change_lo_pct", "iqm_change_hi_pct", "p_improvement", "p_improvement_lo",
                  "p_improvement_hi", "bootstrap_samples", "bootstrap_seed"]
ERROR_COLUMNS = ["group", "scene", "role", "arch", "teacher_arch", "method", "label", "metric", "n_runs", "iqm",
                 "iqm_lo", "iqm_hi", "bootstrap_samples", "bootstrap_seed"]
METRIC_COLUMNS = {m: col for m, (col, _) in METRICS.items()}  # "t" -> "median_t", "r" -> "median_r"


def change_table(pairs: pd.DataFrame, jobs: pd.DataFrame, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Per KD row and metric: the IQM of the pairs' log ratios as a % change, and P(improvement) over runs,
    each with its stratified bootstrap interval (pairs frame: `log_ratio` per matched pair with `scene`)."""
    key = CHANGE_COLUMNS[:6]
    students = jobs[jobs["role"] == "student"]
    rows = []
    for k, part in pairs.groupby(key, sort=False, dropna=False):
        row = dict(zip(key, k))
        strata = [g["log_ratio"].to_numpy(float) for _, g in part.groupby("scene", sort=False)]
        c, lo, hi = stratified_interval(strata, _iqm_rows, samples, seed)
        col = METRIC_COLUMNS[row["metric"]]
        mine = students[(students["label"] == row["label"]) & (students["group"] == row["group"])
                        & (students["arch"] == row["arch"])]
        base = students[(students["method"] == "baseline") & (students["group"] == row["group"])
                        & (students["arch"] == row["arch"])]
        scenes = list(dict.fromkeys(part["scene"]))
        p, plo, phi = prob_improvement_interval([mine.loc[mine["scene"] == s, col].to_numpy(float) for s in scenes],
                                                [base.loc[base["scene"] == s, col].to_numpy(float) for s in scenes],
                                                samples, seed)
        rows.append({**row, "n_pairs": len(part), "iqm_change_pct": 100 * math.expm1(c),
                     "iqm_change_lo_pct": 100 * math.expm1(lo), "iqm_change_hi_pct": 100 * math.expm1(hi),
                     "p_improvement": p, "p_improvement_lo": plo, "p_improvement_hi": phi,
                     "bootstrap_samples": samples, "bootstrap_seed": seed})
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def error_table(jobs: pd.DataFrame, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Per row, scene and metric: the IQM of the runs' median errors with its bootstrap interval (one stratum)."""
    key = ["group", "scene", "role", "arch", "teacher_arch", "method", "label"]
    rows = []
    for k, part in jobs.groupby(key, sort=False, dropna=False):
        for metric, col in METRIC_COLUMNS.items():
            x = part[col].to_numpy(float)
            v, lo, hi = stratified_interval([x], _iqm_rows, samples, seed)
            rows.append({**dict(zip(key, k)), "metric": metric, "n_runs": len(x), "iqm": v, "iqm_lo": lo,
                         "iqm_hi": hi, "bootstrap_samples": samples, "bootstrap_seed": seed})
    return pd.DataFrame(rows, columns=ERROR_COLUMNS)


def performance_profile(strata: list[np.ndarray], taus: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(share, lower, upper) at each tau: share of runs with a value <= tau, with stratified bootstrap bands."""
    strata = [np.asarray(s, float) for s in strata if len(s)]
    if not strata:
        nan = np.full(len(taus), np.nan)
        return nan, nan, nan

    x = np.concatenate(strata)
    boot = resample(strata, np.random.default_rng(seed), samples)
    shares = (boot[:, :, None] <= taus[None, None, :]).mean(axis=1)
    lo, hi = np.quantile(shares, [(1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2], axis=0)
    return (x[:, None] <= taus[None, :]).mean(axis=0), lo, hi


def normalised_errors(jobs: pd.DataFrame, group: str, arch: str, col: str) -> dict[str, dict[str, np.ndarray]]:
    """label -> scene -> run errors of one group's students divided by the baseline's geometric mean there."""
    part = jobs[(jobs["group"] == group) & (jobs["arch"] == arch) & (jobs["role"] == "student")]
    base = part[part["method"] == "baseline"]
    out: dict[str, dict[str, np.ndarray]] = {}
    # A baseline error of 0 gives a reference of 0 and ratios of inf (or nan for 0 / 0): meant, not warned about.
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = base.groupby("scene")[col].agg(geomean)
        for label, rows in part.groupby("label", sort=False):
            out[label] = {s: g[col].to_numpy(float) / ref[s] for s, g in rows.groupby("scene", sort=False)
                          if s in ref.index}
    return out
