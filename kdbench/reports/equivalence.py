"""Equivalence: is a change better, practically equivalent, worse than the student alone, or undecided?

A non-significant test is not evidence of no effect. With a region of practical equivalence (ROPE, default
±2%: a change of the error smaller than that does not matter), one-sided paired t-tests on the log error
ratios at the ROPE bounds decide (TOST, Schuirmann 1987, with its two mirror tests); see `verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sst

from kdbench.errors import KdbenchError

ALPHA = 0.05
DEFAULT_ROPE = 0.02
VERDICTS = ("better", "practically equivalent", "worse", "undecided")


def parse_rope(text: str | float, flag: str = "--rope") -> float:
    """'2%' or '0.02' -> 0.02; a clear error naming `flag` otherwise (above 0 and below 100%)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise KdbenchError(f"{flag} {text!r}: give a percentage such as 2% (or a fraction such as 0.02)") from None
    if not (0 < value < 1):
        raise KdbenchError(f"{flag} {text!r}: give a percentage above 0% and below 100%")
    return value


def verdict(log_ratios: Sequence[float], rope: float = DEFAULT_ROPE, alpha: float = ALPHA) -> dict[str, float | str]:
    """TOST verdict of paired log ratios log(e_method / e_baseline) against ±b, b = log(1 + rope).

    Rule (each test one-sided, paired t on the log ratios, n - 1 degrees of freedom, at `alpha`):
    - better: H0 "mean >= -b" is rejected (the change is below the ROPE: more than `rope` better);
    - worse: H0 "mean <= +b" is rejected (above the ROPE);
    - practically equivalent: both H0 "mean <= -b" and H0 "mean >= +b" are rejected (TOST: inside the ROPE);
    - undecided: none of these (too few or too noisy pairs; fewer than 2 pairs is always undecided).
    Equivalently the one-sided (1 - alpha) bounds, i.e. the 90% interval at alpha 0.05: entirely below -b,
    entirely above +b, entirely inside (-b, b); the three cannot hold at once. With no spread at all (every pair
    the same log ratio) the interval is that value and the rule applies to it.
    """
    d = np.asarray(log_ratios, dtype=float)
    d = d[np.isfinite(d)]
    b = math.log1p(rope)
    out: dict[str, float | str] = {"n": len(d), "rope_pct": 100 * rope, "p_better": math.nan, "p_worse": math.nan,
                                   "p_equivalent": math.nan, "verdict": "undecided"}
    if len(d) < 2:
        return out
    mean, sem = float(d.mean()), float(sst.sem(d))
    if sem == 0:  # no spread: the 90% interval is the point itself
        p_lo_eq, p_hi_eq = float(mean <= -b), float(mean >= b)
        p_better, p_worse = float(mean >= -b), float(mean <= b)
    else:
        df = len(d) - 1
        p_better = float(sst.t.cdf((mean + b) / sem, df))  # H0 mean >= -b
        p_worse = float(sst.t.sf((mean - b) / sem, df))  # H0 mean <= +b
        p_lo_eq = float(sst.t.sf((mean + b) / sem, df))  # H0 mean <= -b
        p_hi_eq = float(sst.t.cdf((mean - b) / sem, df))  # H0 mean >= +b
    p_eq = max(p_lo_eq, p_hi_eq)
    out.update(p_better=p_better, p_worse=p_worse, p_equivalent=p_eq)
    if p_better < alpha:
        out["verdict"] = "better"
    elif p_worse < alpha:
        out["verdict"] = "worse"
    elif p_eq < alpha:
        out["verdict"] = "practically equivalent"
    return out


EQUIVALENCE_COLUMNS = ["group", "arch", "teacher_arch", "method", "label", "metric", "n_pairs", "rope_pct",
                       "p_better", "p_worse", "p_equivalent", "verdict"]


def equivalence_table(pairs: pd.DataFrame, rope: float = DEFAULT_ROPE) -> pd.DataFrame:
    """Per row and metric of a pairs frame (column `log_ratio`): the TOST verdict over its matched pairs."""
    key = EQUIVALENCE_COLUMNS[:6]
    rows = []
    for k, part in pairs.groupby(key, sort=False, dropna=False):
        v = verdict(part["log_ratio"].to_numpy(float), rope)
        rows.append({**dict(zip(key, k)), "n_pairs": v.pop("n"), **v})
    return pd.DataFrame(rows, columns=EQUIVALENCE_COLUMNS)
