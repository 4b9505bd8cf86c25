"""Power of the paired t-test on log error ratios: the minimum detectable change and the seeds a change needs.

Exact, not the normal approximation: under a true mean log ratio `delta`, the paired t statistic over n pairs
with standard deviation `sd` follows a noncentral t with n - 1 degrees of freedom and noncentrality
delta / sd * sqrt(n) (`scipy.stats.nct`); the two-sided test at ALPHA rejects when |t| exceeds the central t
quantile, so power = P(T > c) + P(T < -c). statsmodels' TTestPower computes the same (tests check it).
A change of c (0.05 = 5%) is the log ratio log(1 + c), so an improvement and a worsening of the same size on
the log scale need the same pairs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sst

ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 10_000  # beyond this the answer is "more than 10,000", not a number


def power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at `alpha` over n pairs when the mean log ratio is `delta`."""
    if n < 2 or not (sd > 0) or not math.isfinite(sd):
        return math.nan
    df = n - 1
    crit = sst.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) / sd * math.sqrt(n)
    upper, lower = float(sst.nct.sf(crit, df, nc)), float(sst.nct.cdf(-crit, df, nc))
    # scipy's far tail of the noncentral t can come back NaN where it is below 1e-15: it adds nothing.
    return upper + (0.0 if math.isnan(lower) else lower)


def min_detectable_delta(sd: float, n: int, target: float = POWER, alpha: float = ALPHA) -> float:
    """The mean log ratio the test detects with probability `target` over n pairs at this SD (NaN if n < 2)."""
    if n < 2 or not (sd > 0) or not math.isfinite(sd):
        return math.nan
    hi = sd
    while power(hi, sd, n, alpha) < target:  # power rises with |delta| towards 1
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha) - target, 0.0, hi, xtol=1e-12, rtol=1e-12))


def min_detectable_change(sd: float, n: int, target: float = POWER, alpha: float = ALPHA) -> float:
    """min_detectable_delta as a percent change of the error: 100 * (exp(delta) - 1)."""
    return 100 * math.expm1(min_detectable_delta(sd, n, target, alpha))


def pairs_needed(change: float, sd: float, target: float = POWER, alpha: float = ALPHA,
                 start: int = 2) -> int | None:
    """The fewest pairs (>= start) whose power for a change of `change` (0.05 = 5%) reaches `target`; None beyond
    MAX_SEEDS times `start`."""
    delta = math.log1p(abs(change))
    if not (sd > 0) or delta == 0:
        return None if delta == 0 else start
    n = max(2, start)
    limit = MAX_SEEDS * max(1, start)
    while n <= limit and power(delta, sd, n, alpha) < target:
        n += 1
    return n if n <= limit else None


def seeds_needed(change: float, sd: float, n_scenes: int, target: float = POWER, alpha: float = ALPHA) -> int | None:
    """Seeds per scene so that n_scenes x seeds pairs reach `target` power for `change` at the per-pair SD."""
    n_scenes = max(1, n_scenes)
    seeds = max(1, math.ceil(2 / n_scenes))  # a paired test needs 2 pairs
    while seeds <= MAX_SEEDS:
        if power(math.log1p(abs(change)), sd, seeds * n_scenes, alpha) >= target:
            return seeds
        seeds += 1
    return None


POWER_COLUMNS = ["group", "arch", "teacher_arch", "method", "label", "metric", "n_pairs", "n_scenes", "sd_pair",
                 "mdc_pct", "sd_scene", "mdc_scene_pct"]


def power_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per row and metric of a pairs frame (one log ratio per matched pair, column `log_ratio`, with `scene`):
    the per-pair SD and the minimum detectable change at 80% power over these pairs (test on these scenes),
    and the SD of the per-scene mean log ratios with the change a test over scenes detects."""
    rows = []
    key = [c for c in POWER_COLUMNS[:6]]
    for k, part in pairs.groupby(key, sort=False, dropna=False):
        d = part["log_ratio"].to_numpy(float)
        per_scene = part.groupby("scene", sort=False)["log_ratio"].mean().to_numpy(float)
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
        sd_s = float(np.std(per_scene, ddof=1)) if len(per_scene) > 1 else math.nan
        rows.append({**dict(zip(key, k)), "n_pairs": len(d), "n_scenes": len(per_scene), "sd_pair": sd,
                     "mdc_pct": min_detectable_change(sd, len(d)), "sd_scene": sd_s,
                     "mdc_scene_pct": min_detectable_change(sd_s, len(per_scene))})
    return pd.DataFrame(rows, columns=POWER_COLUMNS)


SEEDS_COLUMNS = ["group", "arch", "teacher_arch", "label", "metric", "n_scenes", "sd_pair", "change_pct",
                 "seeds_needed", "pairs_needed", "seeds_now", "power_now"]


def seeds_table(pairs: pd.DataFrame, change: float) -> pd.DataFrame:
    """Per row and metric: the seeds per scene (at the scenes present) a change of `change` (0.05 = 5%) needs
    for 80% power at the observed per-pair SD, and the power the pairs present have for it."""
    rows = []
    for k, part in pairs.groupby(["group", "arch", "teacher_arch", "label", "metric"], sort=False, dropna=False):
        d = part["log_ratio"].to_numpy(float)
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
        n_scenes = part["scene"].nunique()
        seeds = seeds_needed(change, sd, n_scenes) if sd > 0 else None
        rows.append({**dict(zip(["group", "arch", "teacher_arch", "label", "metric"], k)), "n_scenes": n_scenes,
                     "sd_pair": sd, "change_pct": 100 * change, "seeds_needed": seeds,
                     "pairs_needed": None if seeds is None else seeds * n_scenes,
                     "seeds_now": round(len(d) / max(1, n_scenes), 2),
                     "power_now": power(math.log1p(change), sd, len(d))})
    return pd.DataFrame(rows, columns=SEEDS_COLUMNS)
